"""``python -m fastmlp.bench``: fastmlp's kernels and training step beside NumPy, PyTorch and JAX,
measured side by side in one process, with the machine's own limits.

Every benchmark runs each competitor in turn (interleaved) after a warm-up and reports medians of
repeated runs. Each row shows fastmlp's median, the competitors' medians, the ratio against the
best competitor, the achieved rate (GFLOP/s or GB/s) and the % of this machine's limit:

- the FMA probe (independent vector FMAs on all kernel threads) and the best GEMM rate any library
  reaches in this run, whichever is larger, for compute-bound rows;
- the STREAM triad (``a = b + s·c``, 12 bytes per float32 element, multi-threaded, 128 MB+
  arrays) for memory-bound rows (bytes read plus bytes written, DESIGN.md). The triad runs
  interleaved with every memory-bound row, as one more competitor, and the row's % is against
  that triad: on a shared machine the bandwidth drifts by a third within a run.

NumPy gets its best kernel: the runner clears ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` for
its own process (re-executing itself before NumPy loads) and prints the OpenBLAS core in use.
Competitors that are not installed are skipped with a note. ``--json PATH`` writes the results.
``--device cuda`` runs the GPU rows instead: GEMM (every transpose pair, each side timed inside a
captured graph) against cuBLAS through torch, elementwise kernels and fused Adam against torch and
the device's own copy and triad bandwidth, and the 784-512-512-10 and 784-2048-2048-10 training
steps against torch (eager and CUDA graph) and ``jax.jit``; timed with CUDA events when torch is
there. Without a usable GPU it prints why and exits.
"""

from __future__ import annotations

import os
import sys

_CLEARED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _reexec_without_openblas_overrides() -> None:
    # The package (imported before this module runs) already loaded NumPy: re-execute.
    if any(os.environ.get(k) for k in _CLEARED) and not os.environ.get("FASTMLP_BENCH_REEXEC"):
        env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
        env["FASTMLP_BENCH_REEXEC"] = "1"
        os.execve(sys.executable, [sys.executable, "-m", "fastmlp.bench"] + sys.argv[1:], env)


if __name__ == "__main__":
    _reexec_without_openblas_overrides()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from typing import Callable, Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp import _core  # noqa: E402
from fastmlp import kernels as K  # noqa: E402

# -- competitors ----------------------------------------------------------------------------------


def _try_torch():
    try:
        import torch

        return torch
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def _try_jax():
    try:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax

        return jax
    except Exception:  # noqa: BLE001
        return None


def _openblas_core() -> str:
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info.get("internal_api") == "openblas":
                return f"{info.get('architecture')} ({info.get('num_threads')} threads, {info.get('version')})"
        return "no OpenBLAS found by threadpoolctl"
    except ImportError:
        return "unknown (pip install threadpoolctl)"


# -- timing ----------------------------------------------------------------------------------------


#: Idle time before each competitor's block, so that the previous library's spinning worker
#: threads (OpenBLAS spins for ~0.1 s after a call) have gone to sleep and do not steal cores.
GAP_S = 0.3
WARM_S = 0.06


def interleaved(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 2,
                min_time: float = 0.0, rounds: int = 5) -> Dict[str, float]:
    """Median seconds per call of each function. The competitors take turns: ``rounds`` times,
    each runs a block of calls (after an idle gap and ``warmup`` untimed calls), every call timed.
    The order of turns rotates from round to round, so that a slow spell of a shared machine (they
    last seconds) does not fall on one competitor's turns more than on another's.
    ``repeats`` is the number of timed calls per competitor over all rounds; with ``min_time``
    each timed sample repeats the call until it has taken that long."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        t = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t, 1e-7)
        inner[name] = max(1, int(min_time / one)) if min_time else 1
    per_round = max(1, -(-repeats // rounds))
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            if len(fns) > 1:
                # Let the previous library's threads go idle, then warm this one up again for
                # WARM_S: after an idle spell a VM's second vCPU takes tens of ms to come back.
                time.sleep(GAP_S)
                warm_until = time.perf_counter() + WARM_S
                fn()
                while time.perf_counter() < warm_until:
                    fn()
            k = inner[name]
            for _ in range(per_round):
                t = time.perf_counter()
                for _ in range(k):
                    fn()
                samples[name].append((time.perf_counter() - t) / k)
    return {name: float(np.median(v)) for name, v in samples.items()}


class Table:
    def __init__(self):
        self.rows: List[dict] = []

    def add(self, group: str, op: str, shape: str, times: Dict[str, float], *, flops: float = 0.0,
            nbytes: float = 0.0, limit: float = 0.0, unit: str = "", target: Optional[str] = None,
            note: str = "") -> dict:
        ours = times.get("fastmlp")
        others = {k: v for k, v in times.items() if k != "fastmlp" and v is not None}
        best_name = min(others, key=others.get) if others else None
        row = {"group": group, "op": op, "shape": shape, "times_s": times,
               "ratio_vs_best": (others[best_name] / ours) if best_name and ours else None,
               "best_competitor": best_name, "note": note, "target": target}
        if flops and ours:
            row["gflops"] = flops / ours / 1e9
            row["pct_of_limit"] = 100.0 * row["gflops"] / limit if limit else None
        elif nbytes and ours:
            row["gbps"] = nbytes / ours / 1e9
            row["pct_of_limit"] = 100.0 * row["gbps"] / limit if limit else None
        self.rows.append(row)
        self._print(row)
        return row

    @staticmethod
    def _fmt_time(t: Optional[float]) -> str:
        if t is None:
            return "—"
        if t >= 1.0:
            return f"{t:.2f} s"
        if t >= 1e-3:
            return f"{t * 1e3:.2f} ms"
        return f"{t * 1e6:.1f} µs"

    def _print(self, row: dict) -> None:
        t = row["times_s"]
        rate = f"{row['gflops']:.1f} GFLOP/s" if "gflops" in row else (f"{row['gbps']:.1f} GB/s" if "gbps" in row else "")
        pct = f"{row['pct_of_limit']:.0f}%" if row.get("pct_of_limit") is not None else ""
        ratio = f"{row['ratio_vs_best']:.2f}x {row['best_competitor']}" if row["ratio_vs_best"] else ""
        comps = " ".join(f"{k}={self._fmt_time(v)}" for k, v in t.items() if k != "fastmlp")
        print(f"{row['op']:<28} {row['shape']:<22} {self._fmt_time(t.get('fastmlp')):>10}  {comps:<48} "
              f"{ratio:<18} {rate:>16} {pct:>5} {row['note']}", flush=True)


# -- benchmarks ----------------------------------------------------------------------------------


class Triad:
    """The STREAM triad over >= 128 MB (12 bytes per float32 element moved, multi-threaded)."""

    def __init__(self, quick: bool):
        n = (32 if quick else 64) * 1024 * 1024 // 4  # float32 elements per array
        self.n = max(n, 128 * 1024 * 1024 // 12)
        self.a = np.empty(self.n, np.float32)
        self.b = np.ones(self.n, np.float32)
        self.c = np.ones(self.n, np.float32)

    def __call__(self) -> None:
        _core.triad(self.a, self.b, self.c, 2.0)

    def gbps(self, seconds: float) -> float:
        return 12.0 * self.n / seconds / 1e9


TRIAD = "triad"  # the name of the triad among a memory-bound row's interleaved functions


def memory_row(table: "Table", group: str, op: str, shape: str, fns: Dict[str, Callable[[], None]], triad: Triad,
               nbytes: float, repeats: int, target: Optional[str] = None, note: str = "") -> dict:
    """A memory-bound row: fns and the triad interleaved; the % is against this row's triad. One
    sample per turn: a VM's memory bandwidth swings over seconds (the triad 25-54 GB/s within one
    run on Zen 4), so the medians need as many separate turns as they have samples."""
    times = interleaved({**fns, TRIAD: triad}, repeats=repeats, rounds=repeats)
    bw = triad.gbps(times.pop(TRIAD))
    note = f"{note}; " if note else ""
    row = table.add(group, op, shape, times, nbytes=nbytes, limit=bw, target=target,
                    note=f"{note}triad beside it {bw:.1f} GB/s")
    row["triad_gbps"] = bw
    return row


def fma_probe_best(iters: int, threads: int, one_thread: float, budget_s: float) -> float:
    """The best of at least three FMA probes on ``threads`` threads; more, for up to ``budget_s``,
    while the best stays below 95% of ``threads`` times the one-thread rate. A shared VM's vCPUs
    are not always all running: a probe that lands in such a spell understates the machine's limit
    and would inflate every row's % of it (seen: 121 GFLOP/s on two threads, 190-199 in the runs
    before and after)."""
    best = max(_core.fma_probe(iters, threads) for _ in range(3))
    deadline = time.perf_counter() + budget_s
    while threads > 1 and best < 0.95 * threads * one_thread and time.perf_counter() < deadline:
        time.sleep(0.05)
        best = max(best, _core.fma_probe(iters, threads))
    return best


def probe_limits(threads: int, quick: bool, triad: Triad) -> dict:
    iters = 5_000_000 if quick else 20_000_000
    one = max(_core.fma_probe(iters, 1) for _ in range(3))
    fma = {1: one}
    if threads > 1:
        fma[threads] = fma_probe_best(iters, threads, one, budget_s=0.5 if quick else 3.0)
    secs = interleaved({"fastmlp": triad}, repeats=5 if quick else 9)["fastmlp"]
    return {"fma_gflops": fma, "stream_gbps": triad.gbps(secs)}


def bench_gemm(table: Table, torch, limits: dict, quick: bool) -> float:
    rng = np.random.default_rng(0)
    shapes = [(256, 512, 784), (256, 512, 512), (256, 784, 512), (512, 784, 256), (1024, 1024, 1024), (32, 64, 64)]
    if quick:
        shapes = [(256, 512, 784), (1024, 1024, 1024), (32, 64, 64)]
    best_rate = 0.0
    results = []
    for (M, N, Kd) in shapes:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((Kd, M) if ta else (M, Kd)).astype(np.float32)
                b = rng.standard_normal((N, Kd) if tb else (Kd, N)).astype(np.float32)
                out = np.empty((M, N), np.float32)
                av, bv = (a.T if ta else a), (b.T if tb else b)
                fns = {"fastmlp": lambda: K.gemm(a, b, trans_a=ta, trans_b=tb, out=out),
                       "numpy": lambda: np.matmul(av, bv, out=out)}
                if torch is not None:
                    ta_, tb_ = torch.from_numpy(a), torch.from_numpy(b)
                    tav, tbv = (ta_.T if ta else ta_), (tb_.T if tb else tb_)
                    tout = torch.from_numpy(out)
                    fns["torch"] = lambda: torch.matmul(tav, tbv, out=tout)
                flops = 2.0 * M * N * Kd
                # Eleven rounds of two samples: the median then stands even when up to five of a
                # competitor's rounds land in one of a shared VM's slow spells (a vCPU away for
                # seconds; seven rounds of three let a spell over four rounds decide a row).
                times = interleaved(fns, repeats=7 if quick else 22, min_time=0.002, rounds=5 if quick else 11)
                best_rate = max(best_rate, max(flops / t / 1e9 for t in times.values()))
                results.append(((M, N, Kd), ta, tb, times, flops))
    limit = max(max(limits["fma_gflops"].values()), best_rate)
    limits["gemm_best_gflops"] = best_rate
    limits["compute_limit_gflops"] = limit
    for (M, N, Kd), ta, tb, times, flops in results:
        pair = ("T" if ta else "N") + ("T" if tb else "N")
        target = ">= 1.0x numpy" + ("; >= 75% of limit" if (M, N, Kd) == (1024, 1024, 1024) else "")
        table.add("gemm", f"gemm {pair} f32", f"{M}x{N}x{Kd}", times, flops=flops, limit=limit, target=target)
    return limit


def bench_gemm_epilogue(table: Table, torch, limit: float, quick: bool) -> None:
    rng = np.random.default_rng(1)
    M, N, Kd = 256, 512, 784
    x = rng.standard_normal((M, Kd)).astype(np.float32)
    w = rng.standard_normal((N, Kd)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    out = np.empty((M, N), np.float32)
    fns = {"fastmlp": lambda: K.gemm(x, w, trans_b=True, bias=bias, activation="relu", out=out),
           "numpy": lambda: np.maximum(x @ w.T + bias, 0)}
    if torch is not None:
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias)
        fns["torch"] = lambda: torch.relu(torch.addmm(tb, tx, tw.T))
    times = interleaved(fns, repeats=7 if quick else 22, min_time=0.002, rounds=5 if quick else 11)  # as bench_gemm
    table.add("gemm", "gemm+bias+relu (layer)", f"{M}x{N}x{Kd}", times, flops=2.0 * M * N * Kd, limit=limit,
              target=">= 1.2x numpy")


def bench_optimizers(table: Table, torch, triad: Triad, quick: bool) -> None:
    n = (4 if quick else 16) * 1024 * 1024
    rng = np.random.default_rng(2)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32) * 1e-3
    m1, m2, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    step = [0]

    def ours_adam():
        step[0] += 1
        K.adam_step(p, g, m1, m2, step=step[0], lr=1e-6)

    fns = {"fastmlp": ours_adam}
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
        tp.grad = torch.from_numpy(g.copy())
        try:
            opt = torch.optim.Adam([tp], lr=1e-6, fused=True)
        except (RuntimeError, TypeError):
            opt = torch.optim.Adam([tp], lr=1e-6, foreach=True)
        fns["torch"] = opt.step
    memory_row(table, "optimizer", "adam_step", f"{n // (1024 * 1024)}M params", fns, triad, 28.0 * n,
               repeats=5 if quick else 11, target=">= 1.0x torch fused; >= 85% of stream", note="28 B/param")
    for name, fn, nbytes in (
            ("sgd_step momentum", lambda: K.sgd_step(p, g, buf, step=2, lr=1e-6, momentum=0.9), 16.0),
            ("rmsprop_step", lambda: K.rmsprop_step(p, g, m2, lr=1e-6), 16.0),
            ("adagrad_step", lambda: K.adagrad_step(p, g, m2, step=2, lr=1e-6), 16.0)):
        memory_row(table, "optimizer", name, f"{n // (1024 * 1024)}M params", {"fastmlp": fn}, triad, nbytes * n,
                   repeats=5 if quick else 9, note=f"{nbytes:.0f} B/param")
    # Global-norm clipping where the norm is under the bound (the common step): one read pass.
    # torch's clip_grad_norm_ multiplies by the clamped factor (1) anyway; NumPy's expression is
    # the float64 norm.
    bound = 1e9
    fns = {"fastmlp": lambda: K.clip_grad_norm(g, bound),
           "numpy": lambda: np.sqrt(np.sum(np.square(g, dtype=np.float64)))}
    if torch is not None:
        tg = torch.nn.Parameter(torch.zeros(n))
        tg.grad = torch.from_numpy(g.copy())
        fns["torch"] = lambda: torch.nn.utils.clip_grad_norm_([tg], bound)
    memory_row(table, "optimizer", "clip_grad_norm", f"{n // (1024 * 1024)}M params", fns, triad, 4.0 * n,
               repeats=5 if quick else 9, note="4 B/param, norm under the bound")


def bench_memory_bound(table: Table, torch, triad: Triad, quick: bool) -> None:
    rows, cols = (4096, 2048) if quick else (8192, 4096)  # 128 MB of float32 at full size
    n = rows * cols
    rng = np.random.default_rng(3)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    y = np.empty_like(x)
    g = rng.standard_normal((rows, cols)).astype(np.float32)
    shape = f"{rows}x{cols}"
    rep = 5 if quick else 9

    def row(op, fns, nbytes, target=">= 70% of stream"):
        memory_row(table, "memory", op, shape, fns, triad, nbytes, repeats=rep, target=target)

    row("dropout p=0.2", {"fastmlp": lambda: K.dropout(x, 0.2, seed=1, offset=0, out=y),
                          "numpy": lambda: np.multiply(x, (np.random.random(x.shape) >= 0.2) * 1.25, out=y)}, 8.0 * n)
    for kind, npfn in (("relu", lambda: np.maximum(x, 0, out=y)),
                       ("sigmoid", lambda: np.divide(1.0, 1.0 + np.exp(-x), out=y)),
                       ("tanh", lambda: np.tanh(x, out=y))):
        row(f"activation {kind}", {"fastmlp": lambda kind=kind: K.activation(x, kind, out=y), "numpy": npfn}, 8.0 * n)
    K.activation(x, "relu", out=y)
    row("activation_backward relu", {"fastmlp": lambda: K.activation_backward(g, y, "relu", out=x),
                                     "numpy": lambda: np.multiply(g, y > 0, out=x)}, 12.0 * n)
    x[...] = rng.standard_normal((rows, cols)).astype(np.float32)
    bg = np.empty(cols, np.float32)
    row("bias_grad", {"fastmlp": lambda: K.bias_grad(x, out=bg), "numpy": lambda: np.sum(x, axis=0, out=bg)}, 4.0 * n)
    # Losses on (rows', classes) logits.
    classes = 1024
    r2 = n // classes
    logits = x.reshape(r2, classes)
    labels = rng.integers(0, classes, r2).astype(np.int64)
    grad = np.empty_like(logits)

    def np_softmax_ce():
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) - z[np.arange(r2), labels]))
        p = e / s
        p[np.arange(r2), labels] -= 1
        p /= r2
        return loss, p

    row("softmax_cross_entropy", {"fastmlp": lambda: K.softmax_cross_entropy(logits, labels, out=grad),
                                  "numpy": np_softmax_ce}, 8.0 * n, target=">= 3x numpy; >= 70% of stream")
    targets = (rng.random((r2, classes)) < 0.5).astype(np.float32)

    def np_sigmoid_ce():
        loss = float(np.mean(np.sum(np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits))),
                                    axis=1)))
        return loss, (1.0 / (1.0 + np.exp(-logits)) - targets) / r2

    row("sigmoid_cross_entropy", {"fastmlp": lambda: K.sigmoid_cross_entropy(logits, targets, out=grad),
                                  "numpy": np_sigmoid_ce}, 12.0 * n, target=">= 3x numpy; >= 70% of stream")
    pred = logits

    def np_squared():
        d = pred - targets
        return 0.5 * float(np.mean(np.sum(d * d, axis=1))), d / r2

    row("squared_error", {"fastmlp": lambda: K.squared_error(pred, targets, out=grad), "numpy": np_squared}, 12.0 * n,
        target=">= 3x numpy; >= 70% of stream")


# -- training steps -----------------------------------------------------------------------------------


def _mlp_flops(sizes, batch) -> float:
    """forward + dW + dX (no dX for the first layer)."""
    total = 0.0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += 2.0 * batch * a * b * (2 if i == 0 else 3)
    return total


def _torch_mlp(torch, sizes, dropout):
    """The benchmark's MLP in torch: Linear, then ReLU and Dropout between layers."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
            if dropout:
                layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers)


def _torch_step(torch, sizes, dropout, batch, lr, x, y):
    net = _torch_mlp(torch, sizes, dropout)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    lossf = torch.nn.CrossEntropyLoss() if sizes[-1] > 1 else torch.nn.MSELoss()
    tx = torch.from_numpy(x)
    ty = torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = lossf(net(tx), ty)
        loss.backward()
        opt.step()

    return step


def _jax_step(jax, sizes, dropout, batch, lr, x, y):
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (a, b), jnp.float32) * math.sqrt(2.0 / a), jnp.zeros(b, jnp.float32)))
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    classification = sizes[-1] > 1

    def loss_fn(params, xb, yb, key):
        h = xb
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
                if dropout:
                    key, sub = jax.random.split(key)
                    keep = jax.random.bernoulli(sub, 1.0 - dropout, h.shape)
                    h = jnp.where(keep, h / (1.0 - dropout), 0.0)
        if classification:
            logp = jax.nn.log_softmax(h)
            return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))
        return 0.5 * jnp.mean(jnp.sum((h - yb) ** 2, axis=1))

    @jax.jit
    def step(params, m, v, t, xb, yb, key):
        grads = jax.grad(loss_fn)(params, xb, yb, key)
        b1, b2, eps = 0.9, 0.999, 1e-8
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        mh = jax.tree_util.tree_map(lambda m: m / (1 - b1 ** t), m)
        vh = jax.tree_util.tree_map(lambda v: v / (1 - b2 ** t), v)
        params = jax.tree_util.tree_map(lambda p, a, b: p - lr * a / (jnp.sqrt(b) + eps), params, mh, vh)
        return params, m, v

    state = {"params": params, "m": m, "v": v, "t": 1.0}
    jx, jy = jnp.asarray(x), jnp.asarray(y if classification else y)
    key = jax.random.PRNGKey(1)

    def run():
        state["params"], state["m"], state["v"] = step(state["params"], state["m"], state["v"], state["t"], jx, jy,
                                                      key)
        state["t"] += 1.0
        jax.block_until_ready(state["params"])

    return run


def bench_train_step(table: Table, torch, jax, limit: float, quick: bool) -> None:
    rng = np.random.default_rng(4)
    for sizes, batch, dropout, label in (([784, 512, 512, 10], 256, 0.2, "train step 784-512-512-10"),
                                         ([64, 64, 64, 1], 32, 0.0, "train step 64-64-64-1")):
        classification = sizes[-1] > 1
        x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch).astype(np.int64) if classification else \
            rng.standard_normal((batch, 1)).astype(np.float32)
        model = fastmlp.MLP(sizes, output="softmax" if classification else "identity", dropout=dropout)
        trainer = fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(1e-4), batch_size=batch, progress=False)
        fns = {"fastmlp": lambda: trainer.train_step(x, y)}
        if torch is not None:
            fns["torch"] = _torch_step(torch, sizes, dropout, batch, 1e-4, x, y if classification else y)
        if jax is not None:
            fns["jax.jit"] = _jax_step(jax, sizes, dropout, batch, 1e-4, x, y)
        # Two samples a round over fourteen rounds: a slow spell of a 2-vCPU VM lasts seconds and
        # slows every competitor's two threads alike while it lasts (one thread much less), so the
        # median needs many separate turns more than many samples per turn. With seven turns of
        # four, the same step's median ranged 5.2-7.0 ms from run to run on a Zen 4 VM.
        times = interleaved(fns, repeats=9 if quick else 28, warmup=5, min_time=0.02, rounds=5 if quick else 14)
        flops = _mlp_flops(sizes, batch)
        target = (">= 1.0x jax.jit; >= 2.0x torch; >= 60% of limit" if sizes[0] == 784 else "<= 0.3x torch time")
        row = table.add("training", label, f"batch {batch}", times, flops=flops, limit=limit, target=target,
                        note=f"{batch / times['fastmlp']:,.0f} samples/s")
        if "torch" in times:
            row["torch_time_ratio"] = times["fastmlp"] / times["torch"]


def bench_fit(table: Table, torch, quick: bool) -> dict:
    rows = 10_000 if quick else 50_000
    rng = np.random.default_rng(5)
    X = rng.standard_normal((rows, 784)).astype(np.float32)
    y = rng.integers(0, 10, rows).astype(np.int64)
    epochs, batch = 3, 256
    overhead: List[float] = []

    def ours():
        model = fastmlp.MLP([784, 512, 512, 10], output="softmax", dropout=0.2)
        tr = fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(1e-4), batch_size=batch, epochs=epochs,
                             progress=False)
        t = time.perf_counter()
        h = tr.fit(X, y)
        total = time.perf_counter() - t
        steps = sum(h.time_s)  # the epochs' own time: their steps
        overhead.append(total / steps - 1.0)

    fns = {"fastmlp": ours}
    if torch is not None:
        def theirs():
            step_layers = [torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                           torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(512, 10)]
            net = torch.nn.Sequential(*step_layers)
            opt = torch.optim.Adam(net.parameters(), lr=1e-4)
            lossf = torch.nn.CrossEntropyLoss()
            tx, ty = torch.from_numpy(X), torch.from_numpy(y)
            for _ in range(epochs):
                perm = torch.randperm(rows)
                for i in range(0, rows, batch):
                    idx = perm[i:i + batch]
                    opt.zero_grad(set_to_none=True)
                    lossf(net(tx[idx]), ty[idx]).backward()
                    opt.step()

        fns["torch"] = theirs
    times = interleaved(fns, repeats=3, warmup=1)
    table.add("training", f"Trainer.fit {epochs} epochs", f"{rows}x784", times,
              target=">= 2x plain torch loop; an epoch within 10% of its steps",
              note=f"fit time beyond its epochs' steps: {100 * float(np.median(overhead)):.1f}%")
    return {"overhead": overhead}


def bench_threads(table: Table, limits: dict, quick: bool) -> None:
    n = 1024
    rng = np.random.default_rng(6)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    threads = fastmlp.get_num_threads()
    if threads < 2:
        return
    # The two thread counts take turns, round by round (order alternating), like the competitors in
    # interleaved(): measured one after the other, a slow spell of the VM that hit only the second
    # block read as poor scaling (74% once, while the same run's other GEMM rows were fast).
    # The FMA probe runs in the same rounds, right after each block of GEMMs on as many threads: a
    # shared VM's second vCPU comes and goes (one run's two-thread GEMMs took the one-thread time,
    # 46% against the probe's scaling at the start of the run), so the scaling the row is judged
    # against is the machine's in the same moments. The start-of-run probe is printed beside it.
    samples: Dict[int, List[float]] = {1: [], threads: []}
    probes: Dict[int, List[float]] = {1: [], threads: []}
    rounds, per_round = (3, 2) if quick else (6, 2)
    try:
        for r in range(rounds):
            for k in ((1, threads) if r % 2 == 0 else (threads, 1)):
                fastmlp.set_num_threads(k)
                time.sleep(GAP_S)
                # Warm-up for WARM_S, as interleaved() does: after the idle gap the second vCPU takes
                # tens of ms to come back, which a single 7-9 ms warm-up call may leave to the
                # two-thread samples (the row read 84% in one run whose 1024^3 GEMM rows took
                # 7.2-8.1 ms on two threads, against 9.0 ms here).
                warm_until = time.perf_counter() + WARM_S
                K.gemm(a, b, out=out)
                while time.perf_counter() < warm_until:
                    K.gemm(a, b, out=out)
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    K.gemm(a, b, out=out)
                    samples[k].append(time.perf_counter() - t0)
                for _ in range(per_round):
                    probes[k].append(_core.fma_probe(1_000_000 if quick else 3_000_000, k))
    finally:
        fastmlp.set_num_threads(threads)
    t = {k: float(np.median(v)) for k, v in samples.items()}
    fma = limits["fma_gflops"]
    gemm_scaling = t[1] / t[threads]
    fma_scaling = float(np.median(probes[threads]) / np.median(probes[1]))
    start_scaling = fma[threads] / fma[1]
    row = table.add("threads", f"gemm 1 vs {threads} threads", "1024^3", {"fastmlp": t[threads]},
                    flops=2.0 * n ** 3, limit=limits["compute_limit_gflops"],
                    target=">= 90% of the FMA probe's scaling",
                    note=f"scaling {gemm_scaling:.2f}x vs FMA probe {fma_scaling:.2f}x beside it = "
                         f"{100 * gemm_scaling / fma_scaling:.0f}% (probe at the start {start_scaling:.2f}x)")
    row["scaling"] = gemm_scaling
    row["fma_scaling"] = fma_scaling
    row["fma_scaling_at_start"] = start_scaling


_RSS_SCRIPT = """
import sys, numpy as np, fastmlp, tracemalloc, gc


def peak_rss_kib():  # VmHWM: this process image's peak (ru_maxrss would include the parent's, kept over exec)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


rows = int(sys.argv[1])
X = np.random.default_rng(7).standard_normal((rows, 784), dtype=np.float32)
y = np.random.default_rng(8).integers(0, 10, rows).astype(np.int64)
model = fastmlp.MLP([784, 512, 512, 10], output="softmax", dropout=0.2)
tr = fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(1e-4), batch_size=256, epochs=1, progress=False)
before = peak_rss_kib()
tr.fit(X, y)
peak = peak_rss_kib()
xb, yb = X[:256], y[:256]
for _ in range(3):
    tr.train_step(xb, yb)
gc.collect()
tracemalloc.start()
s0 = tracemalloc.take_snapshot()
for _ in range(5):
    tr.train_step(xb, yb)
s1 = tracemalloc.take_snapshot()
tracemalloc.stop()
grown = sum(d.size_diff for d in s1.compare_to(s0, "filename") if d.size_diff > 0)
print(grown, before, peak)
"""


def bench_memory(table: Table, quick: bool) -> None:
    """Peak RSS of fit in a fresh process that holds only NumPy and fastmlp."""
    import subprocess

    rows = 10_000 if quick else 50_000
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(rows)], capture_output=True, text=True, check=True)
    grown, before_kib, peak_kib = (int(v) for v in out.stdout.split()[-3:])
    data_mb = rows * 784 * 4 / 2**20
    model_mb = (784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10) * 4 * 4 / 2**20  # params, grads, 2 Adam moments
    # Workspace bound: activations, dropout outputs and input gradients of a batch, the packed GEMM
    # panels, the validation-free fit's scaled copy of X (standardize=False: none) and a batch gather.
    workspace_mb = (256 * (512 * 6 + 10 * 2 + 784) * 4 + (784 + 512) * (512 + 16 + 256) * 4 * 2) / 2**20
    print(f"memory: steady-state step retains {grown / 1024:.1f} KiB of new Python/NumPy allocations (no arrays); "
          f"fit peak RSS {peak_kib / 1024:.0f} MiB in a fresh process (before fit {before_kib / 1024:.0f} MiB: "
          f"interpreter, NumPy, fastmlp and the data; data {data_mb:.0f} MiB, model+grads+Adam {model_mb:.1f} MiB, "
          f"workspace bound {workspace_mb:.1f} MiB)")
    table.rows.append({"group": "memory", "op": "fit peak RSS", "shape": f"{rows}x784", "peak_rss_mib": peak_kib / 1024,
                       "rss_before_fit_mib": before_kib / 1024, "data_mib": data_mb, "model_state_mib": model_mb,
                       "workspace_bound_mib": workspace_mb, "step_retained_bytes": grown})


def machine_info() -> dict:
    info = {"cpu": _core.cpu_model_name(), "isa": fastmlp.get_isa(), "available_isas": fastmlp.available_isas(),
            "logical_cpus": os.cpu_count(), "fastmlp_threads": fastmlp.get_num_threads(),
            "stream_min_bytes": _core._get_stream_min_bytes(),
            "python": platform.python_version(), "numpy": np.__version__, "openblas": _openblas_core(),
            "env": {k: os.environ.get(k) for k in ("FASTMLP_NUM_THREADS", "FASTMLP_ISA", "FASTMLP_STREAM_MIN_BYTES",
                                                   "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") + _CLEARED},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return info


# -- GPU rows -------------------------------------------------------------------------------------


def _gpu_timer(torch):
    """time(fn, repeats) -> median seconds per call: CUDA events on the current device when torch
    has CUDA (recorded on its stream, which the per-thread stream fastmlp uses synchronises with),
    else a synchronised wall clock over a batch of calls."""
    from fastmlp import cuda

    def with_events(fn, repeats):
        samples = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return float(np.median(samples))

    def with_clock(fn, repeats):
        samples = []
        for _ in range(repeats):
            cuda.synchronize()
            t = time.perf_counter()
            fn()
            cuda.synchronize()
            samples.append(time.perf_counter() - t)
        return float(np.median(samples))

    return with_events if torch is not None and torch.cuda.is_available() else with_clock


def _gpu_times(fns: Dict[str, Callable[[], None]], timer, repeats: int) -> Dict[str, float]:
    for fn in fns.values():  # warm-up: kernels load, scratch and segment tables are allocated
        for _ in range(3):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(3):  # interleave the competitors
        for name, fn in fns.items():
            times[name].append(timer(fn, repeats))
    return {name: min(v) for name, v in times.items()}


def _torch_cuda_step(torch, sizes, dropout, lr, x, y, graph: bool):
    """The same MLP step in PyTorch on the GPU: eager, or captured once as a CUDA graph and
    replayed (capturable fused Adam, static input buffers)."""
    net = _torch_mlp(torch, sizes, dropout).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True, capturable=graph)
    lossf = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def step():
        opt.zero_grad(set_to_none=not graph)
        lossf(net(tx), ty).backward()
        opt.step()

    if not graph:
        return step
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    # A cudaFree on this thread during torch's capture (a fastmlp buffer the collector frees) would
    # void it: collect first. Thread-local mode keeps other threads' frees out of it.
    gc.collect()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, capture_error_mode="thread_local"):
        step()
    return g.replay


def _fastmlp_graph(fn, reps: int):
    """``reps`` calls of ``fn`` captured once into a fastmlp CUDA graph; returns its replay. Small
    kernels are timed this way (per call: replay time / reps), so that the Python launch overhead
    of either library stays out of a GPU kernel's time."""
    from fastmlp import cuda

    fn()
    s = cuda.current_stream()
    with cuda.graph_capture(s) as g:
        for _ in range(reps):
            fn()
    return lambda: g.replay(s)


def _torch_graph(torch, fn, reps: int):
    """``reps`` calls of ``fn`` captured into a torch CUDA graph (thread-local capture mode)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    gc.collect()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, capture_error_mode="thread_local"):
        for _ in range(reps):
            fn()
    return g.replay


def _fastmlp_cuda_step(sizes, dropout, lr, x, y, graph: bool):
    """fastmlp's device step. Eager: ``Trainer.train_step`` on device arrays (a launch per kernel
    from Python, a fresh device loss scalar per call). Graph: the step ``Trainer.fit`` replays
    (forward, loss into a fixed slot, backward, Adam with the device-side step counter) captured
    once and replayed."""
    from fastmlp import cuda

    model = fastmlp.MLP(sizes, output="softmax", dropout=dropout, device="cuda")
    trainer = fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(lr), batch_size=x.shape[0], progress=False)
    dx, dy = cuda.asarray(x), cuda.asarray(y)
    s = cuda.current_stream()
    for _ in range(2):  # workspaces, optimizer state and the device step counter exist before capture
        trainer.train_step(dx, dy)
    if not graph:
        return lambda: trainer.train_step(dx, dy)
    opt = trainer.optimizer
    grad, loss = cuda.empty((x.shape[0], sizes[-1])), cuda.empty(())

    def body():  # as _device_train.DeviceLoop._body, minus the on-device batch gather
        opt.step_count += 1
        logits = model._forward(dx, True, trainer.seed, device_step=opt.device_step)
        K.softmax_cross_entropy(logits, dy, out=grad, loss_out=loss, stream=s)
        model._backward(grad)
        opt._update(model.parameters(), model.gradients(), None)

    with cuda.stream(s):  # as the Trainer's steps: the model may fork a second stream from s
        body()
    with cuda.graph_capture(s) as g:
        body()
    g.keepalive.extend(model._workspace_arrays())
    g.keepalive.extend([dx, dy, grad, loss, trainer])
    return lambda: g.replay(s)


def _fastmlp_cuda_fit_step(sizes, dropout, lr, x, y, steps: int) -> float:
    """Seconds per step of ``Trainer.fit`` (one epoch of ``steps`` batches) on device-resident
    data: batch gather, one eager step and a capture, then graph replays, loss slots and a host
    check every 50 steps; the best of three fresh fits after a warm-up fit."""
    from fastmlp import cuda

    X = cuda.asarray(np.tile(x, (steps, 1)))
    Y = cuda.asarray(np.tile(y, steps))
    best = float("inf")
    for i in range(4):
        model = fastmlp.MLP(sizes, output="softmax", dropout=dropout, device="cuda")
        trainer = fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(lr), batch_size=x.shape[0], epochs=1,
                                  progress=False)
        cuda.synchronize()
        t = time.perf_counter()
        trainer.fit(X, Y)
        cuda.synchronize()
        if i:
            best = min(best, (time.perf_counter() - t) / steps)
        assert trainer.step == steps, (trainer.step, steps)
    return best


def bench_cuda_training(table: Table, torch, jax, timer, repeats: int, quick: bool) -> None:
    rng = np.random.default_rng(6)
    configs = [([784, 512, 512, 10], 256)] + ([] if quick else [([784, 2048, 2048, 10], 4096)])
    for sizes, batch in configs:
        x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch).astype(np.int64)
        fns = {}
        for name, make in (("fastmlp", lambda: _fastmlp_cuda_step(sizes, 0.2, 1e-4, x, y, True)),
                           ("fastmlp eager", lambda: _fastmlp_cuda_step(sizes, 0.2, 1e-4, x, y, False))):
            try:
                fns[name] = make()
            except Exception as e:  # noqa: BLE001 - report and go on with the other rows
                print(f"{name} step {sizes}: {type(e).__name__}: {e}")
        if torch is not None:
            for name, graph in (("torch graph", True), ("torch eager", False)):
                try:
                    fns[name] = _torch_cuda_step(torch, sizes, 0.2, 1e-4, x, y, graph)
                except Exception as e:  # noqa: BLE001
                    print(f"{name} step {sizes}: {type(e).__name__}: {e}")
        if jax is not None:
            try:
                fns["jax.jit"] = _jax_step(jax, sizes, 0.2, batch, 1e-4, x, y)
            except Exception as e:  # noqa: BLE001
                print(f"jax.jit step {sizes}: {type(e).__name__}: {e}")
        if "fastmlp" not in fns:
            continue
        times = _gpu_times(fns, timer, repeats)
        name = '-'.join(map(str, sizes))
        flops = _mlp_flops(sizes, batch)
        target = ">= 2x torch graph, >= 3x jax.jit" if batch == 256 else ">= 0.9x jax.jit"
        main = {k: v for k, v in times.items() if k != "fastmlp eager"}
        table.add("training", f"train step {name}", f"batch {batch}", main, flops=flops, target=target,
                  note=f"graph replay, {batch / times['fastmlp']:,.0f} samples/s")
        if "fastmlp eager" in times:
            eager = {"fastmlp": times["fastmlp eager"], **{k: v for k, v in times.items() if "eager" in k and
                                                           k != "fastmlp eager"}}
            table.add("training", f"train_step eager {name}", f"batch {batch}", eager, flops=flops,
                      note="Trainer.train_step from Python")
        try:
            per_step = _fastmlp_cuda_fit_step(sizes, 0.2, 1e-4, x, y, 100 if quick or batch > 256 else 400)
            table.add("training", f"fit per step {name}", f"batch {batch}",
                      {"fastmlp": per_step, **{k: v for k, v in main.items() if k != "fastmlp"}}, flops=flops,
                      note=f"Trainer.fit on device data, {batch / per_step:,.0f} samples/s")
        except Exception as e:  # noqa: BLE001
            print(f"fit {sizes}: {type(e).__name__}: {e}")


def bench_cuda(args) -> int:
    """GPU rows: GEMM (every transpose pair) against cuBLAS through torch, the training
    step against PyTorch (eager and CUDA graph) and JAX, fused Adam and elementwise kernels against
    the device's own copy and triad bandwidth."""
    from fastmlp import cuda

    if not cuda.is_available():
        print(f"--device cuda: skipped, {cuda.unavailable_reason()}")
        return 0
    torch = _try_torch()
    if torch is not None and not torch.cuda.is_available():
        torch = None
    groups = set(args.only.split(",")) if args.only else {"gemm", "optimizer", "memory", "training"}
    jax = None
    if "training" in groups:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch
        os.environ["JAX_PLATFORMS"] = "cuda"
        jax = _try_jax()
        if jax is not None:
            try:
                jax.config.update("jax_default_matmul_precision", "highest")  # float32, not TF32
                jax.devices("gpu")
            except Exception as e:  # noqa: BLE001
                print(f"jax: no GPU backend ({type(e).__name__}: {e}); skipped")
                jax = None
    native = cuda._native()
    timer, repeats = _gpu_timer(torch), 5 if args.quick else 20
    props = cuda.get_device_properties()
    print(f"device: {props['name']}; fastmlp {fastmlp.__version__}; torch: "
          f"{torch.__version__ if torch is not None else 'no CUDA torch (skipped)'}; jax: "
          f"{jax.__version__ if jax is not None else 'no GPU jax (skipped)'}; timing: "
          f"{'CUDA events' if torch is not None else 'synchronised wall clock'}")
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
        torch.backends.cudnn.allow_tf32 = False
    table = Table()
    rng = np.random.default_rng(0)
    s = cuda.PER_THREAD_DEFAULT_STREAM
    # Bandwidth: device copy and STREAM triad over >= 256 MB (bytes read + written).
    n = (64 if args.quick else 256) * 1024 * 1024 // 4
    a, b, c = (cuda.asarray(rng.standard_normal(n, dtype=np.float32)) for _ in range(3))
    triad = _gpu_times({"fastmlp": lambda: native.triad(a.ptr, b.ptr, c.ptr, 2.0, n, s)}, timer, repeats)["fastmlp"]
    bw = 12 * n / triad / 1e9
    print(f"limits: triad {bw:.0f} GB/s on {3 * 4 * n / 2**20:.0f} MiB")
    if "memory" in groups:
        copies = {"fastmlp": lambda: native.copy(a.ptr, b.ptr, n, s)}
        if torch is not None:
            ta, tb = torch.from_dlpack(a), torch.from_dlpack(b)
            copies["torch"] = lambda: ta.copy_(tb)
        table.add("memory", "device copy", f"{n * 4 >> 20} MiB", _gpu_times(copies, timer, repeats), nbytes=8 * n,
                  limit=bw, unit="GB/s")
        table.add("memory", "triad a=b+s*c", f"{n * 4 >> 20} MiB", {"fastmlp": triad}, nbytes=12 * n, limit=bw)
        rows, cols = n // 1024, 1024
        x2, g2 = a.reshape(rows, cols), c.reshape(rows, cols)
        colsum = cuda.empty((cols,))
        labels = cuda.asarray(rng.integers(0, cols, rows).astype(np.int64))
        loss = cuda.empty(())
        elementwise = [
            ("relu", 8 * n, lambda: K.activation(a, "relu", out=b), lambda: torch.clamp_min(ta, 0.0, out=tb)),
            ("relu backward", 12 * n, lambda: K.activation_backward(c, a, "relu", out=b),
             lambda: torch.ops.aten.threshold_backward(tc, ta, 0.0)),
            ("dropout p=0.2", 8 * n, lambda: K.dropout(a, 0.2, seed=1, offset=0, out=b),
             lambda: torch.nn.functional.dropout(ta, 0.2)),
            ("bias_grad", 4 * n, lambda: K.bias_grad(g2, out=colsum), lambda: tg2.sum(0)),
            # torch: the loss and its gradient (autograd), as the fused kernel gives both
            ("softmax cross-entropy", 8 * n, lambda: K.softmax_cross_entropy(x2, labels, out=g2, loss_out=loss),
             lambda: torch.autograd.grad(torch.nn.functional.cross_entropy(tleaf, tlabels), tleaf)),
        ]
        if torch is not None:
            tc = torch.from_dlpack(c)
            tx2, tg2, tlabels = ta.view(rows, cols), tc.view(rows, cols), torch.from_dlpack(labels)
            tleaf = tx2.detach().requires_grad_(True)
        for op, nbytes, ours, theirs in elementwise:
            fns = {"fastmlp": ours}
            if torch is not None:
                fns["torch"] = theirs
            try:
                table.add("memory", op, f"{n * 4 >> 20} MiB", _gpu_times(fns, timer, repeats), nbytes=nbytes,
                          limit=bw, target=">= 90% of triad")
            except Exception as e:  # noqa: BLE001
                print(f"{op}: {type(e).__name__}: {e}")
    del a, b, c
    if "gemm" in groups:
        # Each call is timed inside a captured graph of `reps` calls (replay time / reps) on both
        # sides, so that Python's launch overhead stays out of the small shapes' kernel times.
        shapes = [(4096, 4096, 4096), (8192, 1024, 1024), (256, 512, 784), (256, 512, 512)]
        for M, N, inner in shapes[1:] if args.quick else shapes:
            big = M * N * inner >= 8192 * 1024 * 1024
            reps = 2 if big else 20
            for ta_, tb_ in ((False, True), (False, False), (True, False), (True, True)):
                A = rng.standard_normal((inner, M) if ta_ else (M, inner), dtype=np.float32)
                B = rng.standard_normal((N, inner) if tb_ else (inner, N), dtype=np.float32)
                dA, dB, out = cuda.asarray(A), cuda.asarray(B), cuda.empty((M, N))
                fns = {"fastmlp": _fastmlp_graph(
                    lambda: K.gemm(dA, dB, trans_a=ta_, trans_b=tb_, out=out), reps)}
                if torch is not None:
                    tA, tB = torch.from_dlpack(dA), torch.from_dlpack(dB)
                    tout = torch.empty(M, N, device="cuda")
                    opA, opB = (tA.t() if ta_ else tA), (tB.t() if tb_ else tB)
                    fns["torch"] = _torch_graph(torch, lambda: torch.mm(opA, opB, out=tout), reps)
                times = {k: v / reps for k, v in _gpu_times(fns, timer, repeats).items()}
                pair = ("Aᵀ" if ta_ else "A") + "·" + ("Bᵀ" if tb_ else "B")
                table.add("gemm", f"gemm {pair} (float32)", f"{M}x{N}x{inner}", times,
                          flops=2.0 * M * N * inner, target=">= 0.9x cuBLAS" if big else ">= 2x cuBLAS",
                          note=f"vs cuBLAS (torch), TF32 off, graph of {reps}")
    if "optimizer" in groups:
        n = (4 if args.quick else 16) * 1024 * 1024
        p, g, m, v = cuda.asarray(rng.standard_normal(n, dtype=np.float32)), cuda.zeros(n), cuda.zeros(n), cuda.zeros(n)
        step = cuda.asarray(np.zeros(1, np.int64))
        fns = {"fastmlp": lambda: K.adam_step(p, g, m, v, step=step, lr=1e-3)}
        if torch is not None:
            tp = torch.nn.Parameter(torch.from_dlpack(p.copy()))
            tp.grad = torch.zeros_like(tp)
            opt = torch.optim.Adam([tp], lr=1e-3, fused=True)
            fns["torch"] = opt.step
        table.add("optimizer", "adam_step (fused)", f"{n >> 20}M params", _gpu_times(fns, timer, repeats),
                  nbytes=28.0 * n, limit=bw, target=">= 90% of triad", note="28 B/param")
        # Global-norm clipping with the norm under the bound (one read pass; torch multiplies anyway).
        norm = cuda.empty((), np.float32)
        fns = {"fastmlp": lambda: K.clip_grad_norm(p, 1e30, norm_out=norm)}
        if torch is not None:
            tc = torch.nn.Parameter(torch.zeros(n, device="cuda"))
            tc.grad = torch.from_dlpack(p.copy())
            fns["torch"] = lambda: torch.nn.utils.clip_grad_norm_([tc], 1e30)
        table.add("optimizer", "clip_grad_norm", f"{n >> 20}M params", _gpu_times(fns, timer, repeats),
                  nbytes=4.0 * n, limit=bw, note="4 B/param, norm under the bound")
    if "training" in groups:
        bench_cuda_training(table, torch, jax, timer, repeats, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": props, "triad_gbps": bw, "rows": table.rows}, f, indent=1, default=str)
        print(f"results written to {args.json}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmlp.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run)")
    parser.add_argument("--only", default=None,
                        help="comma-separated groups: gemm,optimizer,memory,training,fit,threads,rss")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cpu (default) or cuda: the GPU rows (gemm, optimizer, memory, training)")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        return bench_cuda(args)
    groups = set(args.only.split(",")) if args.only else {"gemm", "optimizer", "memory", "training", "fit",
                                                          "threads", "rss"}
    torch, jax = _try_torch(), _try_jax()
    info = machine_info()
    threads = fastmlp.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
        info["torch"] = torch.__version__
    if jax is not None:
        info["jax"] = jax.__version__
    print(f"machine: {info['cpu']}; {info['logical_cpus']} logical CPUs; fastmlp {fastmlp.__version__} "
          f"ISA path {info['isa']} (available: {', '.join(info['available_isas'])}), {threads} threads; "
          f"streaming stores for outputs >= {info['stream_min_bytes'] / 2**20:g} MiB")
    print(f"numpy {np.__version__} with OpenBLAS core {info['openblas']}; torch: "
          f"{info.get('torch', 'not installed (skipped)')}; jax: {info.get('jax', 'not installed (skipped)')}")
    triad = Triad(args.quick)
    limits = probe_limits(threads, args.quick, triad)
    print(f"limits: FMA probe {', '.join(f'{t} thr {g:.0f} GFLOP/s' for t, g in limits['fma_gflops'].items())}; "
          f"STREAM triad {limits['stream_gbps']:.1f} GB/s")
    table = Table()
    limit = max(limits["fma_gflops"].values())
    limits["compute_limit_gflops"] = limit
    if "gemm" in groups:
        limit = bench_gemm(table, torch, limits, args.quick)
        bench_gemm_epilogue(table, torch, limit, args.quick)
    if "optimizer" in groups:
        bench_optimizers(table, torch, triad, args.quick)
    if "memory" in groups:
        bench_memory_bound(table, torch, triad, args.quick)
    del triad
    if "training" in groups:
        bench_train_step(table, torch, jax, limit, args.quick)
    if "fit" in groups:
        bench_fit(table, torch, args.quick)
    if "threads" in groups:
        bench_threads(table, limits, args.quick)
    if "rss" in groups:
        bench_memory(table, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "limits": {k: v for k, v in limits.items()}, "rows": table.rows}, f, indent=1,
                      default=str)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
