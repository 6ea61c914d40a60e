"""The configuration's shape: a typed schema for Hydra, value checks, and cfg -> core arguments.

This is the one place that knows the config's layout. Hydra's ConfigStore holds the schema, so a
wrong *type* (``trainer.epochs=abc``) is refused while composing; :func:`validate` refuses
impossible *values* (``model.depth=-1``, ``optimizer.lr=0``) with one line naming the key, before
``nnlab.run`` creates any MLflow run. The ``to_*`` helpers turn a validated config into the keyword
arguments of ``nnlab.core`` / ``nnlab.data``, so the entry point never spells out keys itself.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

GROUPS = ("init", "activation", "optimizer", "dataset")


# --- schema: the top-level config -------------------------------------------------------------
@dataclass
class ModelConfig:
    depth: int = 2  # hidden layers (0 = softmax regression)
    width: Any = 128  # units per hidden layer, or a list of `depth` widths


@dataclass
class TrainerConfig:
    epochs: int = 30
    batch_size: int = 32
    weight_decay: float = 0.01
    schedule: str = "constant"  # constant | step | cosine
    schedule_params: Dict[str, float] = field(default_factory=dict)
    patience: Optional[int] = None  # early stopping on val_acc; null = never
    probe_size: int = 512  # training samples used for the activation statistics
    train_eval_size: Optional[int] = 5000  # epoch 0's train_loss/train_acc and gradient: first this-many samples; null = all


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # null -> $MLFLOW_TRACKING_URI -> sqlite:///mlflow.db in the cwd
    experiment: str = "nnlab"
    flush_seconds: float = 1.0  # buffered metrics reach MLflow at least this often (live UI)
    log_weights: bool = True  # trained weights as a weights.npz artifact
    offline: bool = False  # record runs in the local spool only; replay them with `python -m nnlab.sync`
    spool_dir: Optional[str] = None  # null -> ./nnlab-spool in the directory the command runs from
    connect_timeout: float = 5.0  # seconds one request to a tracking server may take
    retries: int = 2  # retries of one request (with backoff) before the store counts as failing
    retry_seconds: float = 30.0  # a closing run retries a failing store this long, then goes to the spool
    sweep_report: bool = True  # a sweep's report (nnlab.report) attached to its parent run


@dataclass
class DiagnosticsConfig:
    """Extra measurements: the theory, the Jacobian probe and the per-epoch instruments
    (nnlab.core.instruments). One that is off is absent from the record."""

    theory: bool = True  # mean-field predictions (nnlab.theory) and measured preact_std, at epoch 0
    jacobian: bool = True  # singular values of the hidden stack's Jacobian d a^L / d x, every epoch
    jacobian_inputs: int = 4  # probe inputs (the first rows of the probe batch) the Jacobian is taken at
    update_ratio: bool = True  # update_ratio/layer_{i}: the epoch's last step, relative to the weights
    dist_init: bool = True  # dist_init/layer_{i}: distance from the initial weights, relative
    grad_noise_scale: bool = True  # grad_noise_scale: B_simple on the probe batch (trainer.probe_size samples)
    sharpness_every: int = 0  # sharpness + sharpness_x_lr every this many epochs; 0 = off
    sharpness_size: int = 1000  # training samples the Hessian is taken on
    sharpness_iters: int = 20  # power iterations per measurement


@dataclass
class Config:
    init: Any = MISSING
    activation: Any = MISSING
    optimizer: Any = MISSING
    dataset: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    seed: int = 0
    blas_threads: Optional[int] = 1  # BLAS threads while training; None = the library's default
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resume: bool = False  # a sweep: skip every job whose config already has a FINISHED run


# --- schema: one per kind of group option (conf/<group>/<option>.yaml names its schema) ----------
@dataclass
class NamedConfig:
    name: str = MISSING


@dataclass
class ScaledInitConfig(NamedConfig):  # he, xavier, lecun
    distribution: str = "normal"  # normal | uniform


@dataclass
class RandomInitConfig(NamedConfig):  # N(0, std^2)
    std: float = 0.01


@dataclass
class OrthogonalInitConfig(NamedConfig):
    gain: float = 1.0


@dataclass
class VarianceScalingInitConfig(NamedConfig):  # W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2)
    sigma_w: float = 1.0
    sigma_b: float = 0.0


@dataclass
class AlphaActivationConfig(NamedConfig):  # leaky_relu, elu
    alpha: float = MISSING


@dataclass
class SGDConfig(NamedConfig):
    lr: float = MISSING


@dataclass
class MomentumConfig(SGDConfig):
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class AdamConfig(SGDConfig):
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class DigitsConfig(NamedConfig):
    split_seed: int = 0
    val_size: float = 0.1
    test_size: float = 0.2


@dataclass
class MnistConfig(NamedConfig):
    path: str = "data/mnist"
    split_seed: int = 0
    val_size: float = 0.1


SCHEMAS: dict[str, dict[str, type]] = {
    "init": {"scaled": ScaledInitConfig, "random": RandomInitConfig, "orthogonal": OrthogonalInitConfig,
             "variance_scaling": VarianceScalingInitConfig},
    "activation": {"plain": NamedConfig, "alpha": AlphaActivationConfig},
    "optimizer": {"sgd": SGDConfig, "momentum": MomentumConfig, "adam": AdamConfig},
    "dataset": {"digits": DigitsConfig, "mnist": MnistConfig},
}


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore: ``nnlab_schema`` and ``schema/<group>/<kind>``."""
    cs = ConfigStore.instance()
    cs.store(name="nnlab_schema", node=Config)
    for group, kinds in SCHEMAS.items():
        for kind, node in kinds.items():
            cs.store(group=f"schema/{group}", name=kind, node=node)


register_configs()
# `${nnlab.unique:}` in hydra.sweep.dir: two sweeps started in the same second get their own folder.
# Cached like Hydra's `now`: Hydra copies the launching process's resolver cache into every job's config.
if not OmegaConf.has_resolver("nnlab.unique"):
    OmegaConf.register_new_resolver("nnlab.unique", lambda: uuid.uuid4().hex[:4], use_cache=True)


# --- value checks -----------------------------------------------------------------------------
class ConfigError(ValueError):
    """An impossible config value; the message is one line naming the key and the value."""

    def __init__(self, key: str, value: Any, requirement: str):
        self.key, self.value = key, value
        super().__init__(f"invalid config: {key}={_show(value)} ({requirement})")


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return "null" if value is None else str(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"must be an integer >= {low}"


_POSITIVE = (lambda v: _is_number(v) and v > 0), "must be a finite number > 0"
_NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0), "must be a finite number >= 0"
_FRACTION_OPEN = (lambda v: _is_number(v) and 0 < v < 1), "must be a fraction in (0, 1)"
_FRACTION_HALF_OPEN = (lambda v: _is_number(v) and 0 <= v < 1), "must be in [0, 1)"
_OPTIONAL_POSITIVE_INT = (lambda v: v is None or (_is_int(v) and v >= 1)), "must be null or an integer >= 1"
_NON_EMPTY = (lambda v: isinstance(v, str) and v.strip() != ""), "must be a non-empty string"

# key -> (predicate, requirement); keys absent from the chosen group options are skipped
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.depth": _int_at_least(0),
    "trainer.epochs": _int_at_least(0),
    "trainer.batch_size": _int_at_least(1),
    "trainer.probe_size": _int_at_least(1),
    "trainer.weight_decay": _NON_NEGATIVE,
    "trainer.patience": _OPTIONAL_POSITIVE_INT,
    "trainer.train_eval_size": _OPTIONAL_POSITIVE_INT,
    "diagnostics.sharpness_every": _int_at_least(0),
    "diagnostics.sharpness_size": _int_at_least(1),
    "diagnostics.sharpness_iters": _int_at_least(1),
    "seed": _int_at_least(0),
    "blas_threads": _OPTIONAL_POSITIVE_INT,
    "tracking.experiment": _NON_EMPTY,
    "tracking.flush_seconds": _NON_NEGATIVE,
    "tracking.connect_timeout": _POSITIVE,
    "tracking.retries": ((lambda v: _is_int(v) and 0 <= v <= 10), "must be an integer in 0..10 (MLflow's limit)"),
    "tracking.retry_seconds": _NON_NEGATIVE,
    "init.std": _POSITIVE,
    "init.gain": _POSITIVE,
    "init.sigma_w": _POSITIVE,
    "init.sigma_b": _NON_NEGATIVE,
    "diagnostics.jacobian_inputs": _int_at_least(1),
    "activation.alpha": _POSITIVE,
    "optimizer.lr": _POSITIVE,
    "optimizer.momentum": _FRACTION_HALF_OPEN,
    "optimizer.beta1": _FRACTION_HALF_OPEN,
    "optimizer.beta2": _FRACTION_HALF_OPEN,
    "optimizer.eps": _POSITIVE,
    "dataset.split_seed": _int_at_least(0),
    "dataset.val_size": _FRACTION_OPEN,
    "dataset.test_size": _FRACTION_OPEN,
}


def _registries() -> dict[str, tuple[str, Any]]:
    """key -> valid names, taken from the core's own registries (never a copy of them)."""
    from nnlab.core import ACTIVATIONS, INITIALIZERS, OPTIMIZERS, SCHEDULES
    from nnlab.data import DATASETS

    return {"init.name": INITIALIZERS, "activation.name": ACTIVATIONS, "optimizer.name": OPTIMIZERS,
            "dataset.name": DATASETS, "trainer.schedule": SCHEDULES,
            "init.distribution": ("normal", "uniform")}


def _lookup(tree: dict, key: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_width(depth: Any, width: Any) -> None:
    if isinstance(width, list):
        if len(width) != depth or not all(_is_int(w) and w >= 1 for w in width):
            raise ConfigError("model.width", width, f"a list must hold model.depth={depth} integers >= 1")
    elif not (_is_int(width) and width >= 1):
        raise ConfigError("model.width", width, "must be an integer >= 1 or a list of model.depth integers")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line: key, value, what is allowed) on the first bad value."""
    tree = OmegaConf.to_container(cfg, resolve=True)  # plain dicts: checking is then a few microseconds
    for group in GROUPS:
        if not isinstance(tree.get(group), dict):
            raise ConfigError(group, tree.get(group), f"choose a {group} option (conf/{group}/)")
    for key, (ok, requirement) in _RULES.items():
        present, value = _lookup(tree, key)
        if present and not ok(value):
            raise ConfigError(key, value, requirement)
    for key, valid in _registries().items():
        present, value = _lookup(tree, key)
        if present and value not in valid:
            raise ConfigError(key, value, f"valid choices: {', '.join(sorted(valid))}")
    _check_width(tree["model"]["depth"], tree["model"]["width"])
    data = tree["dataset"]
    if "test_size" in data and data["val_size"] + data["test_size"] >= 1:
        raise ConfigError("dataset.val_size", data["val_size"],
                          f"val_size + test_size must be < 1, test_size={data['test_size']}")


# --- cfg -> arguments of nnlab.core / nnlab.data -------------------------------------------------
def _options(node: DictConfig) -> dict[str, Any]:
    """A group option's parameters: everything but its name."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "name"}


def dataset_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``load_dataset(**dataset_kwargs(cfg))``."""
    return {"name": cfg.dataset.name, **_options(cfg.dataset)}


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``MLP.from_shape(n_in, n_out, **model_kwargs(cfg))``."""
    width = cfg.model.width
    return {"depth": cfg.model.depth, "width": list(width) if isinstance(width, ListConfig) else width,
            "activation": cfg.activation.name, "activation_params": _options(cfg.activation),
            "init": cfg.init.name, "init_params": _options(cfg.init), "seed": cfg.seed}


def optimizer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``make_optimizer(**optimizer_kwargs(cfg))``."""
    return {"name": cfg.optimizer.name, **_options(cfg.optimizer)}


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``TrainConfig(**trainer_kwargs(cfg), instruments=InstrumentConfig(**instrument_kwargs(cfg)))``."""
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def instrument_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``InstrumentConfig(**instrument_kwargs(cfg))``: the ``diagnostics`` keys the instruments read."""
    from dataclasses import fields

    from nnlab.core import InstrumentConfig

    tree = OmegaConf.to_container(cfg.diagnostics, resolve=True) if "diagnostics" in cfg else {}
    return {f.name: tree[f.name] for f in fields(InstrumentConfig) if f.name in tree}


# --- cfg -> the record --------------------------------------------------------------------------
_NOT_PARAMS = ("tracking.uri", "resume")  # the URI may carry credentials (http://user:token@host)


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """Every resolved leaf under its dotted path (``model.depth``, ``optimizer.lr``, ...), as strings."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    return {key: _show(value) for key, value in _leaves(tree, "") if key not in _NOT_PARAMS}


# how a run is done or recorded, not what is trained: two runs differing only here are the same run
_NOT_IN_FINGERPRINT = ("tracking", "resume", "blas_threads")


def fingerprint(cfg: DictConfig) -> str:
    """A stable hash of the resolved config without ``tracking``, ``resume`` and ``blas_threads``:
    the ``nnlab.fingerprint`` tag, by which a resumed sweep knows a job is done and the analysis
    knows two runs are one configuration run twice (not two seeds)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree = {k: v for k, v in tree.items() if k not in _NOT_IN_FINGERPRINT and k != "hydra"}
    text = json.dumps(tree, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# `+key=value` adds a key nnlab's schema does not have: nnlab would never read it, so it is refused,
# except where a free-form dict is meant to grow and where Hydra's own config is concerned
_ADDABLE = ("hydra.", "trainer.schedule_params.")


def check_added_keys(overrides: Iterable[str]) -> None:
    """Raise :class:`ConfigError` for a ``+key=value`` / ``++key=value`` on a key nnlab does not use
    (``+typo=5``); group additions (``+experiment=NAME``) are Hydra's and pass."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not (override.is_add() or override.is_force_add()) or not _is_leaf_override(override):
            continue
        key = override.key_or_group
        if key.startswith(_ADDABLE) or key in _SCHEMA_LEAVES():
            continue
        from nnlab.hints import suggestion

        raise ConfigError(override.input_line.split("=", 1)[0], override.value(),
                          f"nnlab does not use this key{suggestion(key, _SCHEMA_LEAVES())} "
                          "(`python -m nnlab.run --help` lists the keys it reads)")


@functools.cache
def _SCHEMA_LEAVES() -> frozenset[str]:
    """Every dotted key of the top-level schema and of every group option's schema."""
    keys = {k for k, _ in _leaves(OmegaConf.to_container(OmegaConf.structured(Config)), "")}
    for group, kinds in SCHEMAS.items():
        for node in kinds.values():
            keys.update(f"{group}.{k}" for k in OmegaConf.to_container(OmegaConf.structured(node)))
    return frozenset(keys)


def group_choices(cfg: DictConfig, hydra_choices: dict[str, Any] | None = None) -> dict[str, str]:
    """Each group's chosen option (Hydra's choice when known, else the option's ``name``)."""
    hydra_choices = hydra_choices or {}
    return {g: str(hydra_choices.get(g) or cfg[g].name) for g in GROUPS}


_NAMED_IN_RUN_NAME = {"activation", "init", "model.depth", "seed"}
_NEVER_IN_RUN_NAME = ("tracking.", "hydra.")


def run_name(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = (), varying: Iterable[str] = ()) -> str:
    """A name readable at a glance: ``relu-he-d4-s0``, plus the values of the other keys a sweep
    varies (``varying``), so that no two jobs of a sweep share a name: ``relu-he-d4-s0-sgd-lr0.1``."""
    parts = [str(cfg.activation.name), str(cfg.init.name), f"d{cfg.model.depth}", f"s{cfg.seed}"]
    varying = set(varying)
    for override in overrides:
        key, _, value = override.lstrip("~+").partition("=")
        if key not in varying or key in _NAMED_IN_RUN_NAME or key.startswith(_NEVER_IN_RUN_NAME) or not value:
            continue
        is_group = key in GROUPS or "/" in key  # a choice reads as itself: `sgd`, `classic`
        parts.append(value if is_group else f"{key.rsplit('.', 1)[-1]}{value}")
    return "-".join(parts)


# --- a sweep, checked whole before its parent run exists -----------------------------------------
_GRID_SWEEPERS = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                  "hydra_plugins.nnlab_sweeper.sweeper.NnlabSweeper")
_PER_SWEEP = ("tracking.uri", "tracking.experiment")  # one parent run, one store, one experiment


def _is_leaf_override(override: Any) -> bool:
    """``key=value`` / ``+key=value`` on a config value (not a group choice, not a deletion)."""
    key = override.key_or_group
    return (not override.is_delete() and override.package is None and "/" not in key
            and ("." in key or key not in (*GROUPS, "experiment")))


def _apply_leaf(cfg: DictConfig, override: Any) -> None:
    key, value = override.key_or_group, override.value()
    try:
        OmegaConf.update(cfg, key, value, merge=True, force_add=override.is_add() or override.is_force_add())
    except Exception as err:  # omegaconf's ValidationError / ConfigKeyError: a wrong type or an unknown key
        from nnlab.hints import omegaconf_requirement

        raise ConfigError(key, value, omegaconf_requirement(err)) from None


def varying_keys(jobs: list[list[str]]) -> list[str]:
    """The override keys whose value differs between the jobs of a sweep (its axes)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.lstrip("~+").partition("=")
            values.setdefault(key, set()).add(value)
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def sweep_jobs(config: DictConfig) -> tuple[list[list[str]], list[DictConfig]] | None:
    """Every job of a multirun (basic sweeper): its overrides and its validated config; ``None``
    for other sweepers.

    Group choices are composed once per distinct combination (Hydra composition costs ~50 ms),
    value overrides are applied on a copy, so checking a 100-job grid costs well under a second.
    """
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_") not in _GRID_SWEEPERS:
        return None
    params_node = OmegaConf.select(config, "hydra.sweeper.params")
    params = OmegaConf.to_container(params_node, resolve=False) if params_node is not None else {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parser = OverridesParser.create()
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]
    composed: dict[tuple[str, ...], DictConfig] = {}
    configs = []
    for job in jobs:
        overrides = parser.parse_overrides(job)
        structural = tuple(o.input_line for o in overrides if not _is_leaf_override(o))
        if structural not in composed:
            composed[structural] = compose(config.hydra.job.config_name, overrides=list(structural))
        cfg = copy.deepcopy(composed[structural])
        for override in overrides:
            if _is_leaf_override(override):
                _apply_leaf(cfg, override)
        validate(cfg)
        configs.append(cfg)
    for key in _PER_SWEEP:
        values = {OmegaConf.select(c, key) for c in configs}
        if len(values) > 1:
            raise ConfigError(key, ",".join(map(_show, values)), "cannot vary within one sweep")
    return jobs, configs
