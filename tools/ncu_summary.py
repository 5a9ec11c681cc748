"""Summarises `ncu --csv --metrics gpu__time_duration.sum` output of bench/cuda_step_profile.py:
the second half of the kernels (the second of two identical steps), each kernel's time, and the sum."""
import csv
import re
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
header, data = rows[0], rows[1:]
name_i, metric_i, value_i = header.index("Kernel Name"), header.index("Metric Name"), header.index("Metric Value")
times = [(r[name_i], float(r[value_i].replace(",", ""))) for r in data if r[metric_i] == "gpu__time_duration.sum"]
unit = [r[header.index("Metric Unit")] for r in data][0] if data else "?"
second = times[len(times) // 2:]
total = 0.0
for name, t in second:
    short = re.sub(r"\(.*", "", name)
    short = re.sub(r"fastmlp::cuda::(\(anonymous namespace\)::)?", "", short)
    print(f"{t:10.2f} {unit}  {short[:110]}")
    total += t
print(f"{total:10.2f} {unit}  total of {len(second)} kernels (the step's graph replay adds the launch gaps)")
