"""MNIST-scale speed: the matmul floor, a bare NumPy loop, PyTorch CPU (if importable), nnlab's
``train_epoch`` and nnlab's ``fit`` with its default per-epoch record, side by side in one process.

Job: 784-512-256-10 ReLU MLP, He init, Adam lr 1e-3, batch 128, float32, no weight decay, on synthetic
MNIST-shaped data (60,000 training + 10,000 validation samples of 784 values in [0, 1], 10 classes, drawn
here: nothing is downloaded). BLAS is limited to one thread for every contender (and torch to one
thread). Rounds are interleaved and the median is reported, because the machine is shared and noisy.

- matmul floor: only the six matrix products of each step (forward, dW and dX), on preallocated arrays;
- bare NumPy loop: the same network and Adam written as one flat loop, no statistics;
- PyTorch CPU: nn.Sequential + torch.optim.Adam, the same batches;
- nnlab train_epoch: nnlab's training step alone (its gradient-norm meter included);
- nnlab fit: ``fit`` with the default record (every default instrument on), epochs 0..E.

Each contender runs once for the long run's epochs; its clocks at the end of the short run's last epoch give
the short run (the same work). Wall and process CPU seconds are both reported: on a loaded machine CPU
seconds are the steadier comparison. A second table times each part of the per-epoch record on its own (CPU
seconds of one call at the 3-epoch model) relative to one epoch of ``train_epoch``.

    python benchmarks/bench_mnist.py [--rounds 3] [--short 3] [--long 10]
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

from nnlab.core import MLP, GradNormMeter, TrainConfig, fit, make_optimizer, train_epoch  # noqa: E402
from nnlab.core import instruments as I  # noqa: E402

SIZES = (784, 512, 256, 10)
LR, BATCH = 1e-3, 128
N_TRAIN, N_VAL = 60_000, 10_000


def synthetic_mnist(seed: int = 0) -> tuple[np.ndarray, ...]:
    """MNIST-shaped, learnable data: class prototypes in [0, 1]^784 plus noise, clipped; float32."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 1, (10, 784)).astype(np.float32) * (rng.uniform(0, 1, (10, 784)) < 0.2)
    y = rng.integers(0, 10, N_TRAIN + N_VAL)
    x = protos[y] + rng.normal(0, 0.3, (len(y), 784)).astype(np.float32)
    np.clip(x, 0, 1, out=x)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def he_params(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        params += [rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32),
                   np.zeros(fan_out, np.float32)]
    return params


def run_matmul_floor(data, epochs: int, seed: int, on_epoch=lambda e: None) -> None:
    """Only the matrix products one training step needs, on preallocated buffers."""
    x = data[0]
    params = he_params(seed)
    W = params[0::2]
    acts = [np.empty((BATCH, s), np.float32) for s in SIZES]
    grads = [np.empty_like(w) for w in W]
    for _ in range(epochs):
        for s in range(0, N_TRAIN - BATCH + 1, BATCH):
            acts[0] = x[s : s + BATCH]
            for i, w in enumerate(W):
                np.matmul(acts[i], w, out=acts[i + 1])
            for i in reversed(range(len(W))):
                np.matmul(acts[i].T, acts[i + 1], out=grads[i])
                if i > 0:
                    np.matmul(acts[i + 1], W[i].T, out=acts[i])
        on_epoch(_ + 1)


def run_bare_numpy(data, epochs: int, seed: int, on_epoch=lambda e: None) -> None:
    """The same network and Adam as one flat loop, no statistics, no abstractions."""
    x, y = data[0], data[1]
    rng = np.random.default_rng(seed)
    params = he_params(seed)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    t = 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(N_TRAIN)
        for s in range(0, N_TRAIN, BATCH):
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
        on_epoch(epoch)


def run_torch(data, epochs: int, seed: int, on_epoch=lambda e: None) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:])]
    for layer in layers:
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        torch.nn.init.zeros_(layer.bias)
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), BATCH):
            idx = order[s : s + BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        on_epoch(epoch)


def _model(seed: int) -> MLP:
    return MLP(list(SIZES), activation="relu", init="he", seed=seed)


def run_train_epoch(data, epochs: int, seed: int, on_epoch=lambda e: None) -> None:
    model, opt, rng = _model(seed), make_optimizer("adam", lr=LR), np.random.default_rng(seed)
    meter = GradNormMeter(len(model.layers))
    for epoch in range(1, epochs + 1):
        meter.reset()
        train_epoch(model, opt, data[0], data[1], BATCH, rng, meter)
        on_epoch(epoch)


def run_fit(data, epochs: int, seed: int, on_epoch=lambda e: None) -> MLP:
    model = _model(seed)
    fit(model, make_optimizer("adam", lr=LR), *data, TrainConfig(epochs=epochs, batch_size=BATCH, weight_decay=0.0),
        seed=seed, callback=lambda epoch, metrics: on_epoch(epoch))
    return model


def instrument_costs(data, epoch_seconds: float, model: MLP) -> list[tuple[str, float, str]]:
    """(instrument, seconds per measurement / one epoch of train_epoch, default) for each instrument and for
    the other parts of the per-epoch record, measured on ``model`` (median of 3 calls)."""
    from nnlab.core import activation_stats, evaluate

    x, y, x_val, y_val = data
    c, tc = I.InstrumentConfig(), TrainConfig()
    instruments = I.Instruments(c, model)
    instruments.before_last_step(model)
    sub = slice(0, c.sharpness_size)
    probe = x[: tc.probe_size]

    def timed(fn, repeats: int = 3) -> float:
        runs = []
        for _ in range(repeats):
            start = time.process_time()
            fn()
            runs.append(time.process_time() - start)
        return statistics.median(runs)

    rows = [
        ("train_loss/train_acc, epochs >= 1 (running mean over the epoch's batches)", lambda: None, "on"),
        (f"train_loss/train_acc, epoch 0 only ({tc.train_eval_size} training samples)",
         lambda: evaluate(model, x[: tc.train_eval_size], y[: tc.train_eval_size]), "on"),
        (f"val_loss/val_acc on {N_VAL} validation samples", lambda: evaluate(model, x_val, y_val), "on"),
        (f"act_* on {tc.probe_size} probe samples", lambda: activation_stats(model, probe), "on"),
        ("update_ratio/layer_{i}", lambda: I.update_ratios(model, instruments._before), "on"),
        ("dist_init/layer_{i}", lambda: I.dist_from_init(model, instruments.initial), "on"),
        (f"act_* + grad_noise_scale together (one forward, one backward on the {tc.probe_size} probe samples)",
         lambda: (activation_stats(model, probe), I.grad_noise_scale(model, probe, y[:tc.probe_size])), "on"),
        (f"sharpness ({c.sharpness_iters} power iterations on {c.sharpness_size} samples, float64)",
         lambda: I.sharpness(model, x[sub], y[sub], iters=c.sharpness_iters, tol=0.0),
         f"off (every {c.sharpness_every})" if c.sharpness_every else "off"),
    ]
    # sharpness costs several epochs: timed once
    return [(name, timed(fn, 1 if name.startswith("sharpness") else 3) / epoch_seconds, default)
            for name, fn, default in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short", type=int, default=3, help="epochs of the short runs")
    parser.add_argument("--long", type=int, default=10, help="epochs of the long runs")
    args = parser.parse_args()
    data = synthetic_mnist()
    contenders = {"matmul floor": run_matmul_floor, "bare NumPy loop": run_bare_numpy}
    try:
        import torch  # noqa: F401

        contenders["PyTorch CPU, 1 thread"] = run_torch
    except ImportError:
        pass
    contenders |= {"nnlab train_epoch": run_train_epoch, "nnlab fit, default record": run_fit}
    times = {(name, e): [] for name in contenders for e in (args.short, args.long)}
    cpu = {(name, e): [] for name in contenders for e in (args.short, args.long)}
    with threadpool_limits(limits=1):
        blas = ", ".join(f"{i['internal_api']} {i['version']} x{i['num_threads']}" for i in threadpool_info())
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits everyone alike
            for name, fn in contenders.items():
                # one run of `long` epochs; the clocks at the end of epoch `short` give the short run (same work)
                start, start_cpu = time.perf_counter(), time.process_time()

                def stamp(epoch: int) -> None:
                    if epoch in (args.short, args.long):
                        times[name, epoch].append(time.perf_counter() - start)
                        cpu[name, epoch].append(time.process_time() - start_cpu)

                fn(data, args.long, seed=0, on_epoch=stamp)
        model = run_fit(data, args.short, seed=0)
        epoch_seconds = statistics.median(cpu["nnlab train_epoch", args.long]) / args.long
        costs = instrument_costs(data, epoch_seconds, model)
    print(f"synthetic MNIST-shaped data, {N_TRAIN} train + {N_VAL} val samples, 784-512-256-10 ReLU, Adam 1e-3, "
          f"batch {BATCH}, float32; BLAS: {blas}; median of {args.rounds} interleaved rounds\n")
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    header = " | ".join(f"{e} ep: s | x bare | CPU s | x bare (CPU)" for e in (args.short, args.long))
    print(f"| contender | {header} |\n|---|{'---:|' * 8}")
    for name in contenders:
        cells = " | ".join(f"{med[name, e]:.1f} | {med[name, e] / med['bare NumPy loop', e]:.2f} | "
                           f"{mcpu[name, e]:.1f} | {mcpu[name, e] / mcpu['bare NumPy loop', e]:.2f}"
                           for e in (args.short, args.long))
        print(f"| {name} | {cells} |")
    if "PyTorch CPU, 1 thread" in contenders:
        for clock, m in (("wall", med), ("CPU", mcpu)):
            ratio = m["nnlab train_epoch", args.long] / m["PyTorch CPU, 1 thread", args.long]
            print(f"\nnnlab train_epoch / PyTorch CPU over {args.long} epochs = {ratio:.2f} {clock} (target <= 1.00)")
    for clock, m in (("wall", med), ("CPU", mcpu)):
        fit_ratio = m["nnlab fit, default record", args.long] / m["bare NumPy loop", args.long]
        print(f"nnlab fit (default record) / bare loop over {args.long} epochs = {fit_ratio:.2f} {clock} (target <= 1.15)")
    print(f"\none epoch of train_epoch = {epoch_seconds:.2f} s\n\n| part of the per-epoch record | cost per "
          "measurement, x one epoch of training | default |\n|---|---:|---|")
    for name, ratio, default in costs:
        print(f"| {name} | {ratio:.3f} | {default} |")


if __name__ == "__main__":
    main()
