"""The one place that knows the config: its schema, the value rules, and the typed run spec.

The composed config is parsed once, at the door, into a frozen :class:`RunSpec`
(``RunSpec.from_cfg``): one ``OmegaConf.to_container``, every value rule (``_RULES``; a refused value
is one line naming the key, the value and what is valid), and the core's and the record's own
dataclasses built once (``TrainConfig`` with its ``InstrumentConfig``, the store's ``StoreSettings``).
After that nothing reads the ``DictConfig``: the job builds data, model and optimiser from the spec,
the core trains, the record is written from the spec's params, tags and name.

The schema Hydra checks types against (``nnlab_schema`` in the ConfigStore) is derived from those
same dataclasses, so each setting and its default is defined once: ``trainer.*`` are the fields of
``nnlab.core.TrainConfig``, ``diagnostics.*`` those of ``nnlab.core.InstrumentConfig`` plus the
probes', ``tracking.*`` those of ``nnlab.record.store.StoreSettings``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import types
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from nnlab.core import InstrumentConfig, TrainConfig
from nnlab.record.names import FINGERPRINT_TAG, GROUP_PARAMS as GROUPS  # each group's choice is a param of that name
from nnlab.record.store import StoreSettings


# --- schema: derived from the dataclasses that use the values -----------------------------------
def _schema_type(hint: Any) -> Any:
    """The annotation OmegaConf understands for a dataclass field's type (``int | None`` -> Optional[int])."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return Optional[_schema_type(args[0])] if len(args) == 1 else Any
    if hint is dict or typing.get_origin(hint) is dict:
        return Dict[str, Any]
    return hint if hint in (int, float, bool, str) else Any


def _schema_of(source: type, name: str, exclude: tuple[str, ...] = (), extra: tuple = ()) -> type:
    """A Hydra schema dataclass with ``source``'s fields, types and defaults (less ``exclude``), then ``extra``."""
    hints = typing.get_type_hints(source)
    fields = []
    for f in dataclasses.fields(source):
        if f.name in exclude:
            continue
        default = (field(default_factory=f.default_factory) if f.default_factory is not dataclasses.MISSING
                   else field(default=f.default))
        fields.append((f.name, _schema_type(hints[f.name]), default))
    return dataclasses.make_dataclass(name, [*fields, *extra])


@dataclass
class ModelConfig:
    depth: int = 2  # hidden layers (0 = softmax regression)
    width: Any = 128  # units per hidden layer, or a list of `depth` widths
    residual: bool = False  # hidden layers 2..depth: h <- h + alpha * phi(W h + b)
    branch_scale: Optional[float] = None  # alpha; null = 1/sqrt(depth) (residual only)
    branch_gate: bool = False  # alpha a trained scalar per layer, initialised at 0 (SkipInit/ReZero)
    norm: Optional[str] = None  # null | layernorm (in the residual branch, or before each hidden layer)
    parametrization: str = "sp"  # sp | ntk | mup: how each layer's init scale and lr depend on its width
    base_width: Any = None  # the width the base lr and init are meant at (ntk, mup); an int or one per hidden layer
    readout_zero_init: bool = False  # the output layer starts at zero (muP's option)


TrainerConfig = _schema_of(TrainConfig, "TrainerConfig", exclude=("instruments",))
# the Jacobian probe and the theory are chosen here too: they are measurements, like the instruments
DiagnosticsConfig = _schema_of(InstrumentConfig, "DiagnosticsConfig", extra=(
    ("theory", bool, field(default=True)),  # mean-field predictions (nnlab.theory) and measured preact_std, at epoch 0
    ("jacobian", bool, field(default=True)),  # singular values of the hidden stack's Jacobian, every epoch
    ("jacobian_inputs", int, field(default=4)),  # probe inputs the Jacobian is taken at
))
TrackingConfig = _schema_of(StoreSettings, "TrackingConfig")
_PROBE_KEYS = ("theory", "jacobian", "jacobian_inputs")  # diagnostics.* that are not InstrumentConfig's


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
class LsuvInitConfig(OrthogonalInitConfig):  # orthogonal, then rescaled per layer on one training batch
    tol: float = 0.1
    max_passes: int = 10


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
             "variance_scaling": VarianceScalingInitConfig, "lsuv": LsuvInitConfig},
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
    "init.tol": _FRACTION_OPEN,
    "init.max_passes": _int_at_least(1),
    "diagnostics.jacobian_inputs": _int_at_least(1),
    "diagnostics.coord_steps": _int_at_least(0),
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
    from nnlab.core import ACTIVATIONS, INITIALIZERS, MODEL_INITIALIZERS, OPTIMIZERS, SCHEDULES
    from nnlab.data import DATASETS

    from nnlab.core import LOSSES, PARAMETRIZATIONS

    return {"model.parametrization": PARAMETRIZATIONS, "trainer.loss": LOSSES,
            "init.name": {**INITIALIZERS, **MODEL_INITIALIZERS}, "activation.name": ACTIVATIONS, "optimizer.name": OPTIMIZERS,
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


_ARCHITECTURE_KEYS = ("residual", "branch_scale", "branch_gate", "norm")


def _check_architecture(tree: Mapping[str, Any]) -> None:
    """The depth options (``model.residual`` ...) as the core checks them, refused with the key's name."""
    from nnlab.core.network import _architecture, hidden_sizes

    model, init = tree["model"], tree["init"]["name"]
    fixup = init == "fixup"  # Fixup brings its own gate and shift per branch (MLP does the same)
    try:
        _architecture([1, *hidden_sizes(model["depth"], model["width"]), 1], model["residual"], model["branch_scale"],
                      model["branch_gate"] or fixup, fixup, model["norm"], init)
    except ValueError as err:
        first = re.match(r"\w+", str(err)).group(0)
        key = "width" if "hidden widths" in str(err) else {"unknown": "norm", "init": "init.name"}.get(first, first)
        key = key if key.startswith("init") else f"model.{key}"
        value = tree["init"]["name"] if key == "init.name" else model.get(key.split(".", 1)[1])
        raise ConfigError(key, value, str(err)) from None


_PARAMETRIZATION_KEYS = ("parametrization", "base_width", "readout_zero_init")


def _check_parametrization(model: Mapping[str, Any]) -> None:
    """``model.parametrization``, ``model.base_width``, ``model.readout_zero_init`` as the core checks them."""
    from nnlab.core.parametrization import check_parametrization

    try:
        check_parametrization(*(model[k] for k in _PARAMETRIZATION_KEYS))
    except ValueError as err:
        key = next((k for k in _PARAMETRIZATION_KEYS[1:] if k in str(err)), "parametrization")
        raise ConfigError(f"model.{key}", model[key], str(err)) from None


def _tree(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as plain dicts and lists (without Hydra's own node)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        tree = OmegaConf.to_container(cfg, resolve=True)
    else:
        tree = dict(cfg)
    tree.pop("hydra", None)
    return tree


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` (one line: key, value, what is allowed) on the first bad value."""
    _validate_tree(_tree(cfg))


def _validate_tree(tree: Mapping[str, Any]) -> None:
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
    _check_architecture(tree)
    _check_parametrization(tree["model"])
    data = tree["dataset"]
    if "test_size" in data and data["val_size"] + data["test_size"] >= 1:
        raise ConfigError("dataset.val_size", data["val_size"],
                          f"val_size + test_size must be < 1, test_size={data['test_size']}")


# --- the run spec: the config parsed once -------------------------------------------------------
def _options(node: Mapping[str, Any]) -> dict[str, Any]:
    """A group option's parameters: everything but its name."""
    return {k: v for k, v in node.items() if k != "name"}


@dataclass(frozen=True)
class RunSpec:
    """One run, parsed and validated once from the composed config; what every later step reads.

    ``data``, ``model`` and ``optimizer`` are the keyword arguments of ``nnlab.data.load_shared``,
    ``nnlab.core.MLP.from_shape`` (after ``n_in, n_out``) and ``nnlab.core.make_optimizer``;
    ``train`` is the core's own ``TrainConfig`` (instruments included), ``store`` the record's
    ``StoreSettings``; ``params``, ``fingerprint`` and ``name`` are what the record says of the run.
    """

    tree: Mapping[str, Any]  # the resolved config (config.yaml), without Hydra's node
    choices: Mapping[str, str]  # each group's chosen option
    data: Mapping[str, Any]
    model: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    train: TrainConfig
    store: StoreSettings
    theory: bool  # epoch 0: nnlab.theory's predictions beside the measured preact_std
    jacobian_inputs: int | None  # the Jacobian probe's inputs; None: no probe
    seed: int
    blas_threads: int | None
    resume: bool
    params: Mapping[str, str]
    fingerprint: str
    name: str

    @classmethod
    def from_cfg(cls, cfg: DictConfig | Mapping[str, Any], choices: Mapping[str, Any] | None = None,
                 overrides: Iterable[str] = (), varying: Iterable[str] = ()) -> "RunSpec":
        """Parse and check a composed config (raises :class:`ConfigError`, one line, on a bad value).

        ``choices``: Hydra's group choices (``hydra.runtime.choices``); ``overrides`` and ``varying``:
        the job's command-line overrides and the keys its sweep varies (they go into the run's name)."""
        overrides = tuple(overrides)
        check_added_keys(overrides)
        tree = _tree(cfg)
        _validate_tree(tree)
        model, diagnostics = tree["model"], tree["diagnostics"]
        width = model["width"]
        instruments = {k: v for k, v in diagnostics.items() if k not in _PROBE_KEYS}
        try:
            train = TrainConfig(**tree["trainer"], instruments=InstrumentConfig(**instruments))
        except (TypeError, ValueError) as err:  # a rule the core knows and _RULES does not: still one line
            raise ConfigError("trainer", _show(tree["trainer"]), str(err)) from None
        return cls(
            tree=tree,
            choices=group_choices(tree, choices),
            data={"name": tree["dataset"]["name"], **_options(tree["dataset"])},
            model={"depth": model["depth"], "width": list(width) if isinstance(width, list) else width,
                   **{k: model[k] for k in (*_ARCHITECTURE_KEYS, *_PARAMETRIZATION_KEYS)},
                   "activation": tree["activation"]["name"], "activation_params": _options(tree["activation"]),
                   "init": tree["init"]["name"], "init_params": _options(tree["init"]), "seed": tree["seed"]},
            optimizer={"name": tree["optimizer"]["name"], **_options(tree["optimizer"])},
            train=train,
            store=StoreSettings(**tree["tracking"]),
            theory=bool(diagnostics["theory"]),
            jacobian_inputs=diagnostics["jacobian_inputs"] if diagnostics["jacobian"] else None,
            seed=tree["seed"],
            blas_threads=tree["blas_threads"],
            resume=bool(tree.get("resume", False)),
            params={**group_choices(tree, choices), **flat_params(tree)},
            fingerprint=fingerprint(tree),
            name=run_name(tree, overrides, varying),
        )

    def tags(self) -> dict[str, str]:
        """The tags every run of this spec carries (the sweep adds its own)."""
        return {"nnlab.dataset": self.data["name"], FINGERPRINT_TAG: self.fingerprint}


# --- the record's view of a config ---------------------------------------------------------------
_NOT_PARAMS = ("tracking.uri", "resume")  # the URI may carry credentials (http://user:token@host)


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def flat_params(cfg: DictConfig | Mapping[str, Any]) -> dict[str, str]:
    """Every resolved leaf under its dotted path (``model.depth``, ``optimizer.lr``, ...), as strings."""
    return {key: _show(value) for key, value in _leaves(_tree(cfg), "") if key not in _NOT_PARAMS}


# how a run is done or recorded, not what is trained: two runs differing only here are the same run
_NOT_IN_FINGERPRINT = ("tracking", "resume", "blas_threads")


def fingerprint(cfg: DictConfig | Mapping[str, Any]) -> str:
    """A stable hash of the resolved config without ``tracking``, ``resume`` and ``blas_threads``:
    the ``nnlab.fingerprint`` tag, by which a resumed sweep knows a job is done and the analysis
    knows two runs are one configuration run twice (not two seeds)."""
    tree = {k: v for k, v in _tree(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    text = json.dumps(tree, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# `+key=value` adds a key nnlab's schema does not have: nnlab would never read it, so it is refused,
# except where a free-form dict is meant to grow and where Hydra's own config is concerned
_ADDABLE = ("hydra.", "trainer.schedule_params.")


def check_added_keys(overrides: Iterable[str]) -> None:
    """Raise :class:`ConfigError` for a ``+key=value`` / ``++key=value`` on a key nnlab does not use
    (``+typo=5``); group additions (``+experiment=NAME``) are Hydra's and pass."""
    overrides = list(overrides)
    if not any(o.lstrip().startswith("+") for o in overrides):
        return  # nothing added: skip the parser (it costs ~50 ms to build)
    for override in _parser().parse_overrides(overrides):
        if not (override.is_add() or override.is_force_add()) or not _is_leaf_override(override):
            continue
        key = override.key_or_group
        if key.startswith(_ADDABLE) or key in _SCHEMA_LEAVES():
            continue
        raise ConfigError(override.input_line.split("=", 1)[0], override.value(),
                          f"nnlab does not use this key{suggestion(key, _SCHEMA_LEAVES())} "
                          "(`python -m nnlab.run --help` lists the keys it reads)")


@functools.cache
def _parser():
    """Hydra's override parser (built once: building it costs ~50 ms)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


@functools.cache
def _SCHEMA_LEAVES() -> frozenset[str]:
    """Every dotted key of the top-level schema and of every group option's schema."""
    keys = {k for k, _ in _leaves(OmegaConf.to_container(OmegaConf.structured(Config)), "")}
    for group, kinds in SCHEMAS.items():
        for node in kinds.values():
            keys.update(f"{group}.{k}" for k in OmegaConf.to_container(OmegaConf.structured(node)))
    return frozenset(keys)


def group_choices(cfg: DictConfig | Mapping[str, Any], hydra_choices: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Each group's chosen option (Hydra's choice when known, else the option's ``name``)."""
    hydra_choices = hydra_choices or {}
    tree = cfg if isinstance(cfg, Mapping) and not isinstance(cfg, DictConfig) else _tree(cfg)
    return {g: str(hydra_choices.get(g) or tree[g]["name"]) for g in GROUPS}


_NAMED_IN_RUN_NAME = {"activation", "init", "model.depth", "seed"}
_NEVER_IN_RUN_NAME = ("tracking.", "hydra.")


def run_name(cfg: DictConfig | Mapping[str, Any], overrides: list[str] | tuple[str, ...] = (),
             varying: Iterable[str] = ()) -> str:
    """A name readable at a glance: ``relu-he-d4-s0``, plus the values of the other keys a sweep
    varies (``varying``), so that no two jobs of a sweep share a name: ``relu-he-d4-s0-sgd-lr0.1``."""
    tree = cfg if isinstance(cfg, Mapping) and not isinstance(cfg, DictConfig) else _tree(cfg)
    parts = [str(tree["activation"]["name"]), str(tree["init"]["name"]), f"d{tree['model']['depth']}",
             f"s{tree['seed']}"]
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
        raise ConfigError(key, value, omegaconf_requirement(err)) from None


def varying_keys(jobs: list[list[str]]) -> list[str]:
    """The override keys whose value differs between the jobs of a sweep (its axes)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.lstrip("~+").partition("=")
            values.setdefault(key, set()).add(value)
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def sweep_jobs(config: DictConfig) -> tuple[list[list[str]], list[RunSpec]] | None:
    """Every job of a multirun (basic sweeper): its overrides and its run spec; ``None`` for other
    sweepers. Raises :class:`ConfigError` on the first refused job.

    Group choices are composed once per distinct combination (Hydra composition costs ~50 ms),
    value overrides are applied on a copy, so checking a 100-job grid costs well under a second.
    """
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if OmegaConf.select(config, "hydra.sweeper._target_") not in _GRID_SWEEPERS:
        return None
    params_node = OmegaConf.select(config, "hydra.sweeper.params")
    params = OmegaConf.to_container(params_node, resolve=False) if params_node is not None else {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parser = _parser()
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]
    composed: dict[tuple[str, ...], DictConfig] = {}
    configs, varying = [], varying_keys(jobs)
    for job in jobs:
        overrides = parser.parse_overrides(job)
        structural = tuple(o.input_line for o in overrides if not _is_leaf_override(o))
        if structural not in composed:
            composed[structural] = compose(config.hydra.job.config_name, overrides=list(structural))
        cfg = copy.deepcopy(composed[structural])
        for override in overrides:
            if _is_leaf_override(override):
                _apply_leaf(cfg, override)
        configs.append(RunSpec.from_cfg(cfg, overrides=job, varying=varying))
    for key in _PER_SWEEP:
        values = {_show(_lookup(c.tree, key)[1]) for c in configs}
        if len(values) > 1:
            raise ConfigError(key, ",".join(sorted(values)), "cannot vary within one sweep")
    return jobs, configs


# --- Hydra's and OmegaConf's refusals, in nnlab's words -------------------------------------------
# One line naming the key, the value, what is expected, and the nearest valid key or option ("did you
# mean ..."). Pure text work on the errors' messages (their wording is Hydra 1.3's and OmegaConf 2.3's;
# a message not recognised here is left as it is); the valid keys are the schema's.
_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'\. To append to your config use \+")
_MISSING_OPTION = re.compile(r"Could not find '([^'/]+(?:/[^'/]+)*)/([^'/]+)'.*?Available options in '([^']+)':\s*(.*)")
_BAD_TYPE = re.compile(r"Error merging override ([^=\s]+)=(\S*).*?Value '([^']*)' of type '(\w+)' "
                       r"could not be converted to (\w+)")
_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` (difflib's ratio >= 0.6), or None."""
    found = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return found[0] if found else None


def suggestion(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean model.depth?"`` or ``""``."""
    found = did_you_mean(word, choices)
    return f"; did you mean {found}?" if found else ""


def schema_keys() -> frozenset[str]:
    """Every dotted key nnlab's config has (the top-level schema and every group option's)."""
    return _SCHEMA_LEAVES()


def unknown_key_line(key: str) -> str:
    """``unknown config key model.dept; did you mean model.depth? (...)``."""
    return (f"unknown config key {key}{suggestion(key, schema_keys())} "
            "(`python -m nnlab.run --help` lists the keys)")


def type_requirement(expected: str, value: str, got: str) -> str:
    """``must be an integer, got 1.5`` from OmegaConf's conversion error's parts (``got``: its type)."""
    return f"must be {_TYPE_WORDS.get(expected, expected.lower())}, got {value or repr(value)}"


def omegaconf_requirement(err: BaseException) -> str:
    """What an OmegaConf ValidationError/ConfigKeyError says is wrong, in a few words."""
    text = " ".join(str(err).split())
    found = re.search(r"Value '([^']*)' of type '(\w+)' could not be converted to (\w+)", text)
    if found:
        return type_requirement(found[3], found[1], found[2])
    key = re.search(r"Key '([^']+)' not in '\w+'.*?full_key: (\S+)", text)
    if key:
        return f"nnlab has no such key{suggestion(key[2], schema_keys())}"
    return re.split(r" full_key: | object_type=| reference_type=", text)[0]


def hydra_refusal(text: str) -> str | None:
    """A Hydra refusal (its message and its cause's, flattened to one line) in nnlab's words, or None.

    * ``Could not override 'model.dept'. To append ... use +model.dept=3`` -> unknown key, did you mean;
    * ``Could not find 'activation/rleu' ... Available options in 'activation': ...`` -> not an
      option, did you mean, the options;
    * ``Error merging override model.depth=1.5 (Value '1.5' of type 'float' could not be converted
      to Integer ...)`` -> the key, the value, the type expected.
    """
    found = _UNKNOWN_KEY.search(text)
    if found:
        return unknown_key_line(found[1])
    found = _MISSING_OPTION.search(text)
    if found:
        group, option, options = found[1], found[2], found[4].split()
        return (f"{group}={option} is not an option{suggestion(option, options)} "
                f"(choices: {', '.join(options)})")
    found = _BAD_TYPE.search(text)
    if found:
        key, value, expected = found[1], found[3], found[5]
        return f"invalid config: {key}={value} ({type_requirement(expected, value, found[4])})"
    return None
