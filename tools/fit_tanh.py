"""Fits the rational tanh of csrc/ops/fastmath.h (tanh_t): tanh(x) ~ x P(s) / Q(s), s = x^2, on
[0, 9], P(0) = Q(0) = 1, minimising the maximum relative error by iteratively reweighted linear
least squares (Loeb's linearisation, then Lawson-style weights). Prints the float32 coefficients
(highest degree first, as Horner evaluates them) and their error in exact arithmetic.

    python tools/fit_tanh.py [deg_P deg_Q]   (default 5 4)
"""
import sys

import numpy as np


def fit(n_p: int, n_q: int, x_max: float = 9.0, iterations: int = 80):
    x = np.unique(np.concatenate([np.linspace(0, 1, 30000) ** 2 * x_max, np.linspace(0, x_max, 30000)]))
    x = x[x > 1e-6]
    s, f = x * x, np.tanh(x) / x
    w = np.ones_like(s)
    for it in range(iterations):
        # P(s) - f Q(s) = 0, linear in p1..p_np, q1..q_nq once P(0) = Q(0) = 1 is moved across.
        a = np.concatenate([np.vander(s, n_p + 1, increasing=True)[:, 1:],
                            -f[:, None] * np.vander(s, n_q + 1, increasing=True)[:, 1:]], axis=1)
        scale, root_w = np.abs(a).max(axis=0), np.sqrt(w)
        sol = np.linalg.lstsq((a / scale) * root_w[:, None], (f - 1.0) * root_w, rcond=None)[0] / scale
        p, q = np.concatenate([[1.0], sol[:n_p]]), np.concatenate([[1.0], sol[n_p:]])
        rel = (np.polyval(p[::-1], s) / np.polyval(q[::-1], s) - f) / f
        # First relative-error weights, then push weight toward the worst points (minimax).
        w = w * (np.abs(rel) / np.abs(rel).max() + 1e-3) if it > 5 else 1.0 / (f * np.polyval(q[::-1], s)) ** 2
    p32, q32 = (c.astype(np.float32) for c in (p, q))
    rel32 = (np.polyval(p32.astype(np.float64)[::-1], s) / np.polyval(q32.astype(np.float64)[::-1], s) - f) / f
    return p32, q32, np.abs(rel).max(), np.abs(rel32).max()


if __name__ == "__main__":
    n_p, n_q = (int(v) for v in sys.argv[1:3]) if len(sys.argv) > 2 else (5, 4)
    p, q, err, err32 = fit(n_p, n_q)
    print(f"max relative error {err:.3g} (float32 coefficients: {err32:.3g})")
    print("P:", ", ".join(float(v).hex() for v in p[::-1]))
    print("Q:", ", ".join(float(v).hex() for v in q[::-1]))
