"""nnlab's core vs scikit-learn's MLPClassifier vs a bare NumPy loop (the floor), one process, one run.

Job: 64-128-64-10 ReLU MLP, He init, Adam lr 1e-3, batch 32, 100 epochs on the digits training
split, float32, no weight decay, no early stopping. nnlab runs with its default per-epoch record on
(train/val loss and accuracy, per-layer gradient norms, activation statistics on a probe batch, and the
default instruments: update ratio, distance from init, gradient noise scale); a second nnlab row adds what
``diagnostics.theory`` and ``diagnostics.jacobian`` (the defaults of ``nnlab.run``) add: the mean-field
predictions and measured pre-activation std at epoch 0, and the singular values of the hidden stack's
Jacobian at 4 probe inputs every epoch.
BLAS is limited to one thread for every contender. Rounds are interleaved and the median is
reported, because this machine is shared and noisy.

    python benchmarks/bench_core.py [--epochs 100] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from nnlab import theory  # noqa: E402
from nnlab.core import MLP, JacobianProbe, TrainConfig, evaluate, fit, make_optimizer, preactivation_std  # noqa: E402
from nnlab.data import load_dataset  # noqa: E402

HIDDEN = (128, 64)
LR, BATCH = 1e-3, 32


def run_nnlab(ds, epochs: int, seed: int) -> float:
    model = MLP([ds.n_features, *HIDDEN, ds.n_classes], activation="relu", init="he", seed=seed)
    fit(model, make_optimizer("adam", lr=LR), ds.x_train, ds.y_train, ds.x_val, ds.y_val,
        TrainConfig(epochs=epochs, batch_size=BATCH, weight_decay=0.0), seed=seed)
    return evaluate(model, ds.x_test, ds.y_test)[1]


def run_nnlab_diagnostics(ds, epochs: int, seed: int) -> float:
    """As run_nnlab, plus the theory at epoch 0 and the Jacobian probe every epoch (nnlab.run's defaults)."""
    model = MLP([ds.n_features, *HIDDEN, ds.n_classes], activation="relu", init="he", seed=seed)
    config = TrainConfig(epochs=epochs, batch_size=BATCH, weight_decay=0.0)
    x_probe = ds.x_train[: config.probe_size]
    prediction = theory.predict_network(model.sizes, "relu", "he", x_probe)
    record = {**preactivation_std(model, x_probe), **theory.record(prediction)}
    history = fit(model, make_optimizer("adam", lr=LR), ds.x_train, ds.y_train, ds.x_val, ds.y_val, config,
                  seed=seed, probes=[JacobianProbe(4)])
    assert record and "jacobian_sv_max" in history.epochs[-1]
    return evaluate(model, ds.x_test, ds.y_test)[1]


def run_sklearn(ds, epochs: int, seed: int) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(HIDDEN, activation="relu", solver="adam", learning_rate_init=LR, batch_size=BATCH,
                        max_iter=epochs, alpha=0.0, tol=0.0, n_iter_no_change=10**9, early_stopping=False,
                        shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(ds.x_train, ds.y_train)
    return clf.score(ds.x_test, ds.y_test)


def run_bare_numpy(ds, epochs: int, seed: int) -> float:
    """The floor: the same network and Adam written as one flat loop, no statistics, no abstractions."""
    rng = np.random.default_rng(seed)
    sizes = [ds.n_features, *HIDDEN, ds.n_classes]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32),
                   np.zeros(fan_out, np.float32)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    x, y, n, t = ds.x_train, ds.y_train, len(ds.y_train), 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, BATCH):
            idx = order[s : s + BATCH]
            xb, yb = x[idx], y[idx]
            h1 = np.maximum(xb @ params[0] + params[1], 0)
            h2 = np.maximum(h1 @ params[2] + params[3], 0)
            logits = h2 @ params[4] + params[5]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), yb] -= 1
            p /= len(idx)
            g5, g4 = p.sum(0), h2.T @ p
            d2 = (p @ params[4].T) * (h2 > 0)
            g3, g2 = d2.sum(0), h1.T @ d2
            d1 = (d2 @ params[2].T) * (h1 > 0)
            g1, g0 = d1.sum(0), xb.T @ d1
            t += 1
            step = LR * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            for pi, gi, mi, vi in zip(params, (g0, g1, g2, g3, g4, g5), m, v):
                mi *= 0.9
                mi += 0.1 * gi
                vi *= 0.999
                vi += 0.001 * gi * gi
                pi -= step * mi / (np.sqrt(vi) + 1e-8)
    h = np.maximum(ds.x_test @ params[0] + params[1], 0)
    h = np.maximum(h @ params[2] + params[3], 0)
    return float(np.mean((h @ params[4] + params[5]).argmax(1) == ds.y_test))


def run_torch(ds, epochs: int, seed: int) -> float:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(a, b) for a, b in zip([ds.n_features, *HIDDEN], [*HIDDEN, ds.n_classes])]
    for layer in layers:
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        torch.nn.init.zeros_(layer.bias)
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), BATCH):
            idx = order[s : s + BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return float((net(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean())


def diagnostics_cost(ds, epochs: int = 20, calls: int = 200) -> str:
    """The theory's and the Jacobian probe's own cost, timed directly (less noisy than a difference)."""
    model = MLP([ds.n_features, *HIDDEN, ds.n_classes], activation="relu", init="he", seed=0)
    x_probe = ds.x_train[:512]
    start = time.perf_counter()
    for _ in range(calls // 10):
        theory.record(theory.predict_network(model.sizes, "relu", "he", x_probe))
        preactivation_std(model, x_probe)
    per_run = (time.perf_counter() - start) / (calls // 10)
    probe = JacobianProbe(4)
    start = time.perf_counter()
    for _ in range(calls):
        probe(model, x_probe)
    per_epoch = (time.perf_counter() - start) / calls
    start = time.perf_counter()
    fit(model, make_optimizer("adam", lr=LR), ds.x_train, ds.y_train, ds.x_val, ds.y_val,
        TrainConfig(epochs=epochs, batch_size=BATCH, weight_decay=0.0), seed=0)
    epoch = (time.perf_counter() - start) / (epochs + 1)
    return (f"theory + measured preact_std: {per_run * 1e3:.2f} ms per run; Jacobian probe (4 inputs): "
            f"{per_epoch * 1e3:.2f} ms per epoch = {per_epoch / epoch:.1%} of an epoch of nnlab's core "
            f"({epoch * 1e3:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ds = load_dataset("digits")
    contenders = {"bare NumPy loop (floor)": run_bare_numpy, "nnlab core (+ per-epoch stats)": run_nnlab,
                  "nnlab core + theory + Jacobian probe": run_nnlab_diagnostics,
                  "scikit-learn MLPClassifier": run_sklearn}
    try:
        import torch  # noqa: F401

        contenders["PyTorch CPU, 1 thread"] = run_torch
    except ImportError:
        pass
    times = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}  # process CPU seconds: less sensitive to other processes' load
    accs = {name: [] for name in contenders}
    with threadpool_limits(limits=1):
        blas = ", ".join(f"{i['internal_api']} {i['version']} x{i['num_threads']}" for i in threadpool_info())
        for r in range(args.rounds):  # interleaved, so drift in machine load hits everyone alike
            for name, fn in contenders.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                accs[name].append(fn(ds, args.epochs, seed=r))
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    floor = statistics.median(times["bare NumPy loop (floor)"])
    floor_cpu = statistics.median(cpu["bare NumPy loop (floor)"])
    print(f"digits train split {len(ds.y_train)} samples, 64-128-64-10 ReLU, Adam 1e-3, batch {BATCH}, "
          f"{args.epochs} epochs, float32; BLAS: {blas}; median of {args.rounds} interleaved rounds\n")
    print("| contender | seconds | x floor | CPU seconds | x floor (CPU) | test acc (mean) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in contenders:
        sec, sec_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"| {name} | {sec:.2f} | {sec / floor:.2f} | {sec_cpu:.2f} | {sec_cpu / floor_cpu:.2f} | "
              f"{np.mean(accs[name]):.4f} |")
    sk = statistics.median(times["scikit-learn MLPClassifier"])
    nn = statistics.median(times["nnlab core (+ per-epoch stats)"])
    nn_cpu = statistics.median(cpu["nnlab core (+ per-epoch stats)"])
    diag = statistics.median(times["nnlab core + theory + Jacobian probe"])
    diag_cpu = statistics.median(cpu["nnlab core + theory + Jacobian probe"])
    with threadpool_limits(limits=1):
        print(diagnostics_cost(ds))
    print(f"\nnnlab / floor = {nn / floor:.2f} wall, {nn_cpu / floor_cpu:.2f} CPU (target <= 1.15); with theory + "
          f"Jacobian probe {diag / floor:.2f} wall, {diag_cpu / floor_cpu:.2f} CPU (target <= 1.15); "
          f"MLPClassifier / nnlab = {sk / nn:.2f} (target >= 1.7)")


if __name__ == "__main__":
    main()
