"""Summarises `ncu --csv --print-units base --metrics gpu__time_duration.sum` output of
bench/cuda_step_profile.py: the last third of the kernels (the last of three steps), each kernel's
time in ns, and the sum. Each row's own unit is converted (base units: ns)."""
import csv
import re
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
header, data = rows[0], rows[1:]
name_i, metric_i, value_i = header.index("Kernel Name"), header.index("Metric Name"), header.index("Metric Value")
unit_i = header.index("Metric Unit")
scale = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6, "s": 1e9, "second": 1e9}
times = [(r[name_i], float(r[value_i].replace(",", "")) * scale.get(r[unit_i], float("nan")))
         for r in data if r[metric_i] == "gpu__time_duration.sum"]
unit = "ns"
second = times[len(times) - len(times) // 3:]
total = 0.0
for name, t in second:
    short = name.replace("(anonymous namespace)::", "").replace("<unnamed>::", "").replace("fastmlp::cuda::", "")
    short = re.sub(r"\(.*\)$", "", short)  # the parameter list
    print(f"{t:10.2f} {unit}  {short[:110]}")
    total += t
print(f"{total:10.2f} {unit}  total of {len(second)} kernels (the step's graph replay adds the launch gaps)")
