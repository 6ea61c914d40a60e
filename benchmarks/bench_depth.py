"""A depth-256 residual step of nnlab's core vs the same network written as a bare NumPy loop (the floor).

Job: 64 inputs, 256 hidden layers of width 64 (ReLU; every layer after the first residual, alpha = 1/sqrt(256)),
10 classes, float32, mini-batch 32, one SGD step (forward, cross-entropy, backward, update). Variants: the
residual net, the residual net with LayerNorm in every branch (h + alpha relu(W LN(h) + b)), and with a trained
gate per branch instead of the fixed alpha. nnlab runs ``loss_and_grads`` + ``SGD.step`` on its flat parameter
vector, i.e. the training loop's step without its per-step gradient-norm meter (a second row adds the meter).
The bare loop starts from the same weights and its first gradient is checked against nnlab's.
BLAS is limited to one thread; rounds are interleaved and the median is reported, because this machine is
shared and noisy.

    python benchmarks/bench_depth.py [--depth 256] [--width 64] [--steps 40] [--rounds 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from nnlab.core import MLP, GradNormMeter, loss_and_grads, make_optimizer  # noqa: E402
from nnlab.core.norm import EPS  # noqa: E402

N_IN, N_OUT, BATCH, LR = 64, 10, 32, 1e-3  # small enough that no variant overflows in the timed steps
VARIANTS = {"residual": {}, "residual + LayerNorm": {"norm": "layernorm"}, "residual + gate": {"branch_gate": True}}


def build(depth: int, width: int, options: dict) -> MLP:
    """The residual net (gates at 0, as SkipInit starts: both contenders still compute every branch)."""
    return MLP.from_shape(N_IN, N_OUT, depth, width, activation="relu", init="he", seed=0, residual=True, **options)


def batches(steps: int):
    rng = np.random.default_rng(1)
    return [(rng.normal(size=(BATCH, N_IN)).astype(np.float32), rng.integers(0, N_OUT, BATCH)) for _ in range(steps)]


def nnlab_runner(model: MLP, meter: GradNormMeter | None = None):
    """The training loop's step on ``model``: returns run(data) -> None."""
    opt = make_optimizer("sgd", lr=LR)
    params, grads = [model.flat_params], [model.flat_grads]

    def run(data) -> bool:
        for x, y in data:
            loss_and_grads(model, x, y)
            if meter is not None:
                meter.update(model)
            opt.step(params, grads)
        return bool(np.isfinite(model.flat_params).all())

    return run


def bare_params(model: MLP) -> dict[str, list[np.ndarray]]:
    """The model's parameters as plain lists of arrays (copies): what a hand-written loop would keep."""
    s = model.state_dict()
    depth = model.depth
    return {"W": [s[f"W{i}"].copy() for i in range(1, depth + 2)],
            "b": [s[f"b{i}"].copy() for i in range(1, depth + 2)],
            "gain": [s[f"ln_gain{i}"].copy() for i in range(2, depth + 1) if f"ln_gain{i}" in s],
            "beta": [s[f"ln_bias{i}"].copy() for i in range(2, depth + 1) if f"ln_bias{i}" in s],
            "gate": [s[f"gate{i}"].copy() for i in range(2, depth + 1) if f"gate{i}" in s]}


def bare_step(p: dict, x: np.ndarray, y: np.ndarray, alpha: float, update: bool = True) -> dict:
    """One SGD step of the residual ReLU net written out: forward, softmax cross-entropy, backward, update.
    LayerNorm and gates are used when ``p`` has them. Returns the gradients (as lists like ``p``)."""
    W, b, gain, beta, gate = p["W"], p["b"], p["gain"], p["beta"], p["gate"]
    ln, gated, depth = bool(gain), bool(gate), len(W) - 1
    z = x @ W[0] + b[0]
    h = np.maximum(z, 0)
    cache = [(x, z, None, None, None, None)]
    for l in range(1, depth):
        if ln:
            xc = h - h.mean(axis=1, keepdims=True)
            rstd = 1 / np.sqrt((xc * xc).mean(axis=1, keepdims=True) + EPS)
            xhat = xc * rstd
            u = xhat * gain[l - 1] + beta[l - 1]
        else:
            xhat = rstd = None
            u = h
        z = u @ W[l] + b[l]
        a = np.maximum(z, 0)
        cache.append((u, z, a, h, xhat, rstd))
        h = h + (gate[l - 1] if gated else alpha) * a
    logits = h @ W[-1] + b[-1]
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    prob[np.arange(len(y)), y] -= 1
    prob /= len(y)
    g = {"W": [None] * (depth + 1), "b": [None] * (depth + 1), "gain": [None] * len(gain),
         "beta": [None] * len(beta), "gate": [None] * len(gate)}
    g["W"][-1], g["b"][-1] = h.T @ prob, prob.sum(axis=0)
    dh = prob @ W[-1].T
    for l in range(depth - 1, 0, -1):
        u, z, a, h_prev, xhat, rstd = cache[l]
        if gated:
            g["gate"][l - 1] = np.array([np.vdot(dh, a)], np.float32)
        dz = (gate[l - 1] if gated else alpha) * dh * (z > 0)
        g["W"][l], g["b"][l] = u.T @ dz, dz.sum(axis=0)
        du = dz @ W[l].T
        if ln:
            g["gain"][l - 1], g["beta"][l - 1] = (du * xhat).sum(axis=0), du.sum(axis=0)
            dxhat = du * gain[l - 1]
            du = rstd * (dxhat - dxhat.mean(axis=1, keepdims=True)
                         - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
        dh = dh + du
    x0, z0 = cache[0][:2]
    dz = dh * (z0 > 0)
    g["W"][0], g["b"][0] = x0.T @ dz, dz.sum(axis=0)
    if update:
        for key in p:
            for param, grad in zip(p[key], g[key]):
                param -= LR * grad
    return g


def bare_runner(p: dict, alpha: float):
    def run(data) -> bool:
        for x, y in data:
            bare_step(p, x, y, alpha)
        return all(np.isfinite(a).all() for arrays in p.values() for a in arrays)

    return run


def check_same_gradient(model: MLP, alpha: float) -> None:
    """The bare loop computes the network nnlab computes: the same first gradient, to float32 rounding."""
    x, y = batches(1)[0]
    p = bare_params(model)
    g = bare_step(p, x, y, alpha, update=False)
    loss_and_grads(model, x, y)
    ours = {k: v for k, v in zip(model.state_dict(), model.grads())}
    pairs = [(ours[f"W{i}"], g["W"][i - 1]) for i in range(1, model.depth + 2)]
    pairs += [(ours[f"gate{i}"], g["gate"][i - 2]) for i in range(2, model.depth + 1) if f"gate{i}" in ours]
    pairs += [(ours[f"ln_gain{i}"], g["gain"][i - 2]) for i in range(2, model.depth + 1) if f"ln_gain{i}" in ours]
    a = np.concatenate([o.ravel() for o, _ in pairs])
    b = np.concatenate([t.ravel() for _, t in pairs])
    err = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert err < 1e-3, f"bare loop and nnlab disagree: relative gradient difference {err:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=256)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    alpha = 1 / np.sqrt(args.depth)
    data = batches(args.steps)
    contenders = {}  # (network, contender) -> setup() -> run(data); only run is timed
    for name, options in VARIANTS.items():
        check_same_gradient(build(args.depth, args.width, options), alpha)
        contenders[(name, "bare NumPy loop")] = lambda o=options: bare_runner(
            bare_params(build(args.depth, args.width, o)), alpha)
        contenders[(name, "nnlab core step")] = lambda o=options: nnlab_runner(build(args.depth, args.width, o))
        contenders[(name, "nnlab core step + grad-norm meter")] = lambda o=options: nnlab_runner(
            build(args.depth, args.width, o), GradNormMeter(args.depth + 1))
    times = {k: [] for k in contenders}
    cpu = {k: [] for k in contenders}
    with threadpool_limits(limits=1):
        blas = ", ".join(f"{i['internal_api']} {i['version']} x{i['num_threads']}" for i in threadpool_info())
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits every contender alike
            for key, setup in contenders.items():
                run = setup()
                run(data[:1])  # warm: nnlab's work arrays are created by the first step
                start, start_cpu = time.perf_counter(), time.process_time()
                finite = run(data)
                times[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
                # inf/NaN arithmetic runs at another speed: a diverged run would time something else
                assert finite, f"{key} diverged: lower LR"
    print(f"depth {args.depth}, width {args.width}, ReLU, residual (alpha = 1/sqrt({args.depth})), {N_IN} inputs, "
          f"{N_OUT} classes, batch {BATCH}, SGD, float32; {args.steps} steps per run after one warm-up step; "
          f"BLAS: {blas}; median of {args.rounds} interleaved rounds\n")
    print("| network | contender | ms per step | x floor | CPU ms per step | x floor (CPU) |")
    print("|---|---|---:|---:|---:|---:|")
    for (net, who), values in times.items():
        floor = statistics.median(times[(net, "bare NumPy loop")])
        floor_cpu = statistics.median(cpu[(net, "bare NumPy loop")])
        sec, sec_cpu = statistics.median(values), statistics.median(cpu[(net, who)])
        print(f"| {net} | {who} | {sec / args.steps * 1e3:.2f} | {sec / floor:.2f} | "
              f"{sec_cpu / args.steps * 1e3:.2f} | {sec_cpu / floor_cpu:.2f} |")


if __name__ == "__main__":
    main()
