"""What a parametrisation's learning-rate multipliers cost per training step, side by side in one run.

A training step is what ``train_epoch`` does per mini-batch: forward, backward and the optimiser's update
of the flat parameter vector. "today" is the optimiser without multipliers (``lr_mult=None``: the code as
it was, and what SP runs, since all-ones multipliers are dropped); "with multipliers" is the same step with
muP's per-element multipliers (base width = hidden width / 4, so none of them is 1 by accident). The
multipliers ride on the multiply by a scalar each optimiser already does (see ``nnlab.core.optim``).

BLAS is limited to one thread and time is the process's CPU time (``time.process_time``): on a machine
shared by other jobs, wall time mostly measures waiting for a core. The variants alternate within each
round, in rotating order; the ratio is the median over rounds of each round's (with multipliers / today),
so what contention remains (caches, memory bandwidth) hits both sides of a ratio alike. An A/A column times
today's step against a second copy of itself: the noise floor of the ratio on this machine. Since forward
and backward are the same code in both variants, the update is also timed alone (``optimizer.step`` on the
flat vector, alternating the same way, on copies of one parameter vector with one fixed gradient, so both
see the same numbers): today's step plus the update's extra time gives a second, less noisy estimate; the
update's A/A (today's update against a second copy of itself) is that column's noise floor.

    python benchmarks/bench_parametrization.py [--steps 40] [--rounds 41]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from nnlab.core import MLP, loss_and_grads, make_optimizer  # noqa: E402

BATCH = 32
SHAPES = ((64, (128, 64), 10), (64, (512, 512), 10))  # bench_core's job, and a wider net
LR = {"sgd": 0.05, "momentum": 0.05, "adam": 1e-3}


def time_steps(model: MLP, optimizer, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    """CPU seconds per training step (forward, backward, update) over ``steps`` steps."""
    params, grads = [model.flat_params], [model.flat_grads]
    start = time.process_time()
    for _ in range(steps):
        loss_and_grads(model, x, y)
        optimizer.step(params, grads)
    return (time.process_time() - start) / steps


def time_updates(params: np.ndarray, grads: np.ndarray, optimizer, steps: int) -> float:
    """CPU seconds per optimiser update alone, on a flat parameter vector and a fixed gradient."""
    start = time.process_time()
    for _ in range(steps):
        optimizer.step([params], [grads])
    return (time.process_time() - start) / steps


def bench(steps: int, rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for n_in, hidden, n_out in SHAPES:
        x = rng.normal(size=(BATCH, n_in)).astype(np.float32)
        y = rng.integers(0, n_out, size=BATCH)
        for name in ("sgd", "momentum", "adam"):
            sizes = [n_in, *hidden, n_out]
            base = [h // 4 for h in hidden]
            plain = MLP(sizes, parametrization="mup", base_width=base, seed=0)
            scaled = MLP(sizes, parametrization="mup", base_width=base, seed=0)
            mult = scaled.lr_multipliers(name)
            assert not np.all(mult == 1)
            twin = MLP(sizes, parametrization="mup", base_width=base, seed=0)
            variants = {"today": (plain, make_optimizer(name, lr=LR[name])),
                        "mult": (scaled, make_optimizer(name, lr=LR[name], lr_mult=mult)),
                        "twin": (twin, make_optimizer(name, lr=LR[name]))}
            for model, opt in variants.values():  # warm up: work arrays, optimiser state, caches
                time_steps(model, opt, x, y, 20)
            times: dict[str, list[float]] = {k: [] for k in variants}
            keys = list(variants)
            for r in range(rounds):
                for key in keys[r % 3:] + keys[: r % 3]:  # rotate the order: no variant always runs first
                    times[key].append(time_steps(*variants[key], x, y, steps))
            # the update alone, both variants on the same data: copies of one parameter vector, one gradient
            loss_and_grads(plain, x, y)
            grad = plain.flat_grads.copy()
            alone = {"today": (plain.flat_params.copy(), make_optimizer(name, lr=LR[name])),
                     "mult": (plain.flat_params.copy(), make_optimizer(name, lr=LR[name], lr_mult=mult)),
                     "twin": (plain.flat_params.copy(), make_optimizer(name, lr=LR[name]))}
            for params, opt in alone.values():
                time_updates(params, grad, opt, 20)
            updates: dict[str, list[float]] = {k: [] for k in alone}
            for r in range(rounds):
                for key in keys[r % 3:] + keys[: r % 3]:
                    updates[key].append(time_updates(*alone[key][:1], grad, alone[key][1], 5 * steps))
            extra = statistics.median([m - t for m, t in zip(updates["mult"], updates["today"])])
            extra_aa = statistics.median([w - t for w, t in zip(updates["twin"], updates["today"])])
            today, mult_t = statistics.median(times["today"]), statistics.median(times["mult"])
            ratios = [m / t for m, t in zip(times["mult"], times["today"])]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            rows.append({"net": "-".join(map(str, sizes)), "params": plain.flat_params.size, "optimizer": name,
                         "today_us": today * 1e6, "mult_us": mult_t * 1e6, "ratio": statistics.median(ratios),
                         "q1": q1, "q3": q3, "update_us": statistics.median(updates["today"]) * 1e6,
                         "update_extra_us": extra * 1e6, "update_aa_us": extra_aa * 1e6,
                         "ratio_from_update": 1 + extra / today,
                         "aa": statistics.median([w / t for w, t in zip(times["twin"], times["today"])])})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| net | parameters | optimizer | today (µs/step) | with multipliers (µs/step) | ratio (IQR) "
             "| A/A ratio | update alone (µs) | update's extra (µs) | update's A/A (µs) | ratio from the update |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['net']} | {r['params']:,} | {r['optimizer']} | {r['today_us']:.1f} | {r['mult_us']:.1f} | "
              f"{r['ratio']:.3f} ({r['q1']:.3f}-{r['q3']:.3f}) | {r['aa']:.3f} | {r['update_us']:.1f} | "
              f"{r['update_extra_us']:+.1f} | {r['update_aa_us']:+.1f} | {r['ratio_from_update']:.3f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per timing (default 40)")
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds; medians are reported (default 41)")
    args = parser.parse_args()
    with threadpool_limits(limits=1, user_api="blas"):
        rows = bench(args.steps, args.rounds)
    print(f"batch {BATCH}, float32, one BLAS thread, CPU time, median of {args.rounds} rounds of {args.steps} steps\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
