"""What MLflow tracking adds to one run: ``train(cfg)`` vs the core alone, in the same process.

    .venv/bin/python benchmarks/bench_tracking.py [--epochs 100] [--repeats 3]
    # the record at depth: a depth-256 residual net, every layer's metrics
    .venv/bin/python benchmarks/bench_tracking.py --epochs 5 --repeats 7 --no-per-call \
        --set model.depth=256 model.width=64 model.residual=true model.norm=layernorm optimizer=sgd optimizer.lr=0.01

Rows (BLAS limited to 1 thread for all, i.e. ``blas_threads=1``, to keep timings steady):
  core alone        data loaded once; MLP.from_shape + fit + evaluate with the default config (epoch 0's
                    theory and the diagnostics probes included: the same computation), no callback
  nnlab.run.train   the same run through the harness: validation, MLflow run, params, every per-epoch
                    metric (buffered, log_batch), final metrics, artifacts (config, weights), FINISHED
  per-call logging  the core with a callback calling MlflowClient.log_metric once per value: what
                    batching saves (run once: it is slow)
The store is a temporary sqlite file created (with its experiment) before timing, as a sweep's
launching process does. Medians over ``--repeats``, interleaved; also the median of each repeat's own
ratio (the two rows of one repeat run back to back, so load that comes and goes hits both alike). Target:
train <= 1.2x the core.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from threadpoolctl import threadpool_limits

from nnlab import spec as C
from nnlab.core import MLP, evaluate, fit, make_optimizer
from nnlab.job import init_diagnostics, load_data, probes
from nnlab.run import CONF_DIR, train


def core_alone(cfg, callback=None) -> tuple[float, float, int]:
    """Seconds, test accuracy and number of metric values for one default run without tracking: the
    same computation as ``train`` (epoch 0's theory, the ``diagnostics`` probes), nothing recorded."""
    spec = C.RunSpec.from_cfg(cfg)
    data = load_data(spec)
    start = time.perf_counter()
    model = MLP.from_shape(data.n_features, data.n_classes, **spec.model)
    extra = init_diagnostics(spec, model, data)
    history = fit(model, make_optimizer(**spec.optimizer), data.x_train, data.y_train, data.x_val,
                  data.y_val, spec.train, seed=spec.seed, callback=callback, probes=probes(spec))
    _, test_acc = evaluate(model, data.x_test, data.y_test)
    return time.perf_counter() - start, test_acc, len(extra) + sum(len(e) for e in history.epochs)


def tracked(cfg) -> tuple[float, float]:
    start = time.perf_counter()
    final = train(cfg)
    return time.perf_counter() - start, final["test_acc"]


def per_call(cfg, uri: str) -> float:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run(client.get_experiment_by_name("bench").experiment_id, run_name="per-call")

    def log_each(epoch: int, metrics: dict) -> None:
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value, step=epoch)

    seconds = core_alone(cfg, callback=log_each)[0]
    client.set_terminated(run.info.run_id)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every row")
    parser.add_argument("--no-per-call", action="store_true", help="skip the (slow) one-call-per-value row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nnlab-bench-") as tmp, threadpool_limits(limits=1, user_api="blas"):
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*args.set, f"trainer.epochs={args.epochs}", f"tracking.uri={uri}",
                                               "tracking.experiment=bench", "blas_threads=1"])
            warm = compose("config", overrides=[*args.set, "trainer.epochs=1", f"tracking.uri={uri}",
                                                "tracking.experiment=bench"])
        train(warm)  # creates the store and the experiment, loads digits, warms imports
        core_alone(cfg)
        core_times, train_times, core_cpu, train_cpu, accs = [], [], [], [], set()
        for _ in range(args.repeats):
            cpu = time.process_time()
            seconds, acc, n_values = core_alone(cfg)
            core_cpu.append(time.process_time() - cpu)
            core_times.append(seconds)
            accs.add(round(acc, 6))
            cpu = time.process_time()
            seconds, acc = tracked(cfg)
            train_cpu.append(time.process_time() - cpu)
            train_times.append(seconds)
            accs.add(round(acc, 6))
        naive = None if args.no_per_call else per_call(cfg, uri)
    core, tracked_s = statistics.median(core_times), statistics.median(train_times)
    ccpu, tcpu = statistics.median(core_cpu), statistics.median(train_cpu)
    setting = " ".join(args.set) or "default config"
    print(f"{setting}, {args.epochs} epochs, digits, {n_values} metric values per run, "
          f"median of {args.repeats}, BLAS 1 thread", file=sys.stderr)
    print("| run | seconds | x core | CPU seconds | x core (CPU) | test acc |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| core alone (no tracking) | {core:.2f} | 1.00 | {ccpu:.2f} | 1.00 | {min(accs):.4f} |")
    print(f"| nnlab.run.train (MLflow, batched) | {tracked_s:.2f} | {tracked_s / core:.2f} | {tcpu:.2f} | "
          f"{tcpu / ccpu:.2f} | {min(accs):.4f} |")
    if naive is not None:
        print(f"| core + log_metric per value | {naive:.2f} | {naive / core:.2f} | | | {min(accs):.4f} |")
    if len(accs) != 1:
        print(f"warning: test accuracies differ between rows: {sorted(accs)}", file=sys.stderr)
    paired = [statistics.median(t / c for t, c in zip(train_times, core_times)),
              statistics.median(t / c for t, c in zip(train_cpu, core_cpu))]
    print(f"\nmedian of the {args.repeats} repeats' own ratios (each repeat runs both rows back to back): "
          f"{paired[0]:.2f}x in wall time, {paired[1]:.2f}x in CPU time")
    print(f"\n{n_values} metric values per run; tracking overhead: {tracked_s / core:.2f}x the core in wall time, "
          f"{tcpu / ccpu:.2f}x in CPU time (target <= 1.2x)"
          + (f"; batching is {naive / tracked_s:.1f}x cheaper than one log_metric call per value" if naive else ""))


if __name__ == "__main__":
    main()
