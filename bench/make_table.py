"""Turn a ``python -m fastmlp.bench --json`` result into the README's markdown table.
Usage: python bench/make_table.py bench/results/<file>.json"""

from __future__ import annotations

import json
import sys


def fmt_time(t):
    from fastmlp.bench import Table

    return Table._fmt_time(t)


def gpu_table(data: dict) -> None:
    """The table of a ``python -m fastmlp.bench --device cuda --json`` result."""
    d = data["device"]
    print(f"Device: {d['name']} ({d['multiprocessors']} SMs, {d['total_memory'] / 2**30:.0f} GiB); limit measured "
          f"in the run: STREAM triad {data['triad_gbps']:.0f} GB/s (bytes read + written). GEMMs are timed inside "
          f"captured graphs on both sides; training steps: fastmlp's graph replay against torch's CUDA-graph "
          f"replay, torch eager and a `jax.jit` step.\n")
    cols = ("torch", "torch graph", "torch eager", "jax.jit")
    print("| op | shape | fastmlp | " + " | ".join(cols) + " | vs best | rate | % of triad | target |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in cols) + " | --- | --- | --- | --- |")
    for r in data["rows"]:
        t = r["times_s"]
        rate = (f"{r['gflops'] / 1e3:.1f} TFLOP/s" if "gflops" in r else
                (f"{r['gbps']:.0f} GB/s" if "gbps" in r else ""))
        pct = f"{r['pct_of_limit']:.0f}%" if r.get("pct_of_limit") is not None and "gbps" in r else ""
        ratio = f"{r['ratio_vs_best']:.2f}× {r['best_competitor']}" if r.get("ratio_vs_best") else ""
        print(f"| {r['op']} | {r['shape']} | {fmt_time(t.get('fastmlp'))} | "
              + " | ".join(fmt_time(t.get(c)) for c in cols)
              + f" | {ratio} | {rate} | {pct} | {r.get('target') or ''} |")


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    if "device" in data:
        gpu_table(data)
        return
    m, lim = data["machine"], data["limits"]
    fma = ", ".join(f"{k} thread(s) {v:.0f}" for k, v in lim["fma_gflops"].items())
    print(f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, ISA path `{m['isa']}`, {m['fastmlp_threads']} "
          f"threads; numpy {m['numpy']} (OpenBLAS {m['openblas']}), torch {m.get('torch', '—')}, "
          f"jax {m.get('jax', '—')}; {m['date']}.")
    print(f"Limits measured in the run: FMA probe {fma} GFLOP/s; best GEMM {lim.get('gemm_best_gflops', 0):.0f} "
          f"GFLOP/s; STREAM triad {lim['stream_gbps']:.1f} GB/s at the start (each memory-bound row's % is "
          f"against the triad run interleaved with it, in its note).\n")
    print("| op | shape | fastmlp | numpy | torch | jax.jit | vs best | rate | % of limit | target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in data["rows"]:
        if "times_s" not in r:
            continue
        t = r["times_s"]
        rate = f"{r['gflops']:.0f} GFLOP/s" if "gflops" in r else (f"{r['gbps']:.1f} GB/s" if "gbps" in r else "")
        pct = f"{r['pct_of_limit']:.0f}%" if r.get("pct_of_limit") is not None else ""
        ratio = f"{r['ratio_vs_best']:.2f}× {r['best_competitor']}" if r.get("ratio_vs_best") else ""
        note = f" ({r['note']})" if r.get("note") else ""
        print(f"| {r['op']} | {r['shape']} | {fmt_time(t.get('fastmlp'))} | {fmt_time(t.get('numpy'))} | "
              f"{fmt_time(t.get('torch'))} | {fmt_time(t.get('jax.jit'))} | {ratio} | {rate} | {pct} | "
              f"{r.get('target') or ''}{note} |")
    for r in data["rows"]:
        if r.get("op") == "fit peak RSS":
            print(f"\nMemory: a steady-state training step retains {r['step_retained_bytes'] / 1024:.1f} KiB of new "
                  f"allocations (no arrays: workspaces are reused). Peak RSS of `Trainer.fit` on {r['shape']} in a "
                  f"fresh process: {r['peak_rss_mib']:.0f} MiB, of which {r.get('rss_before_fit_mib', 0):.0f} MiB "
                  f"before the fit (interpreter, NumPy, fastmlp, the {r['data_mib']:.0f} MiB of data); model, "
                  f"gradients and Adam state {r['model_state_mib']:.1f} MiB; stated workspace bound "
                  f"{r.get('workspace_bound_mib', 0):.1f} MiB.")


if __name__ == "__main__":
    main(sys.argv[1])
