"""The config: every group option composes and validates; impossible values are refused by name."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from nnlab import spec as C
from nnlab.core import ACTIVATIONS, INITIALIZERS, MODEL_INITIALIZERS, OPTIMIZERS
from nnlab.data import DATASETS
from nnlab.run import CONF_DIR


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group, registry", [("init", {**INITIALIZERS, **MODEL_INITIALIZERS}), ("activation", ACTIVATIONS),
                                             ("optimizer", OPTIMIZERS), ("dataset", DATASETS)])
def test_every_core_name_has_exactly_one_conf_option(group, registry):
    assert options(group) == sorted(registry)


@pytest.mark.parametrize("group, option", [(g, o) for g in C.GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(hydra_conf, group, option):
    needs = ("model.residual=true",) if option == "fixup" else ()  # fixup initialises residual branches
    cfg = hydra_conf(f"{group}={option}", *needs)
    spec = C.RunSpec.from_cfg(cfg)
    assert cfg[group].name == option and spec.choices[group] == option
    kwargs = {"init": spec.model["init_params"], "activation": spec.model["activation_params"],
              "optimizer": spec.optimizer, "dataset": spec.data}[group]
    assert "name" not in kwargs or group in ("optimizer", "dataset")


def test_defaults_match_the_contract(hydra_conf):
    cfg = hydra_conf()
    assert OmegaConf.to_container(cfg.model) == {"depth": 2, "width": 128, "residual": False, "branch_scale": None,
                                                 "branch_gate": False, "norm": None, "parametrization": "sp",
                                                 "base_width": None, "readout_zero_init": False}
    assert cfg.trainer.loss == "cross_entropy" and cfg.diagnostics.coord_steps == 0
    assert (cfg.init.name, cfg.activation.name, cfg.optimizer.name, cfg.dataset.name) == ("he", "relu", "adam", "digits")
    assert cfg.trainer.epochs == 30 and cfg.trainer.batch_size == 32 and cfg.trainer.weight_decay == 0.01
    assert cfg.tracking.uri is None and cfg.tracking.experiment == "nnlab" and cfg.seed == 0
    assert cfg.dataset.val_size == 0.1 and cfg.dataset.test_size == 0.2


def test_core_arguments_build_a_model(hydra_conf):
    from nnlab.core import MLP, TrainConfig, make_optimizer

    cfg = hydra_conf("init=orthogonal", "activation=leaky_relu", "optimizer=momentum", "model.width=[8,4]")
    spec = C.RunSpec.from_cfg(cfg)
    model = MLP.from_shape(64, 10, **spec.model)
    assert model.sizes == [64, 8, 4, 10]
    assert make_optimizer(**spec.optimizer).momentum == 0.9
    assert isinstance(spec.train, TrainConfig) and spec.train.weight_decay == 0.01


@pytest.mark.parametrize("override, key", [
    ("model.depth=-1", "model.depth"), ("model.width=0", "model.width"), ("model.width=[4,4,4]", "model.width"),
    ("optimizer.lr=0", "optimizer.lr"), ("optimizer.lr=-1e-3", "optimizer.lr"), ("optimizer.beta1=1.0", "optimizer.beta1"),
    ("trainer.batch_size=0", "trainer.batch_size"), ("trainer.epochs=-2", "trainer.epochs"),
    ("trainer.weight_decay=-0.1", "trainer.weight_decay"), ("trainer.patience=0", "trainer.patience"),
    ("trainer.schedule=linear", "trainer.schedule"), ("seed=-1", "seed"), ("init.distribution=laplace", "init.distribution"),
    ("dataset.test_size=1.5", "dataset.test_size"), ("tracking.experiment=", "tracking.experiment"),
    ("tracking.retries=11", "tracking.retries"), ("tracking.connect_timeout=0", "tracking.connect_timeout"),
    ("tracking.retry_seconds=-1", "tracking.retry_seconds"),
])
def test_impossible_values_are_refused_in_one_line_naming_key_and_value(hydra_conf, override, key):
    cfg = hydra_conf(override)
    with pytest.raises(C.ConfigError) as info:
        C.validate(cfg)
    message = str(info.value)
    assert info.value.key == key and "\n" not in message
    assert message.startswith(f"invalid config: {key}=")


@pytest.mark.parametrize("overrides, key, valid", [
    (("model.branch_scale=0.5",), "model.branch_scale", "needs residual=True"),
    (("model.branch_gate=true",), "model.branch_gate", "needs residual=True"),
    (("init=fixup",), "init.name", "needs residual=True"),
    (("model.residual=true", "model.width=[8,16]"), "model.width", "valid: one width"),
    (("model.norm=batchnorm",), "model.norm", "'layernorm'"),
    (("model.residual=true", "model.branch_gate=true", "model.branch_scale=0.3"), "model.branch_scale", "with a gate"),
    (("model.residual=true", "init=fixup", "model.branch_scale=0.3"), "model.branch_scale", "fixup"),
    (("init=lsuv", "init.tol=2"), "init.tol", "fraction"),
    (("init=lsuv", "init.max_passes=0"), "init.max_passes", ">= 1"),
    (("model.parametrization=foo",), "model.parametrization", "valid choices: mup, ntk, sp"),
    (("model.parametrization=mup", "model.base_width=0"), "model.base_width", "integer >= 1"),
    (("model.parametrization=mup",), "model.base_width", "needs base_width"),
    (("diagnostics.coord_steps=-1",), "diagnostics.coord_steps", ">= 0"),
    (("trainer.loss=hinge",), "trainer.loss", "cross_entropy, mse"),
])
def test_depth_and_width_options_are_refused_with_their_key_and_what_is_valid(hydra_conf, overrides, key, valid):
    with pytest.raises(C.ConfigError) as info:
        C.RunSpec.from_cfg(hydra_conf(*overrides))
    message = str(info.value)
    assert info.value.key == key and "\n" not in message and valid in message, message


def test_depth_options_reach_the_network(hydra_conf):
    from nnlab.core import MLP

    spec = C.RunSpec.from_cfg(hydra_conf("model.residual=true", "model.norm=layernorm", "model.depth=4",
                                         "model.width=8", "model.branch_gate=true"))
    model = MLP.from_shape(64, 10, **spec.model)
    assert model.architecture["residual"] and model.architecture["norm"] == "layernorm"
    assert model.architecture["branch_gate"] and len(model.residual_blocks()) == 3


def test_group_parameters_are_validated_too(hydra_conf):
    for overrides, key in [(("init=random", "init.std=0"), "init.std"), (("activation=elu", "activation.alpha=-1"), "activation.alpha"),
                           (("optimizer=momentum", "optimizer.momentum=1.5"), "optimizer.momentum")]:
        with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
            C.validate(hydra_conf(*overrides))


@pytest.mark.parametrize("override", ["trainer.epochs=abc", "model.depth=1.5", "seed=x", "init.std=0.1"])
def test_wrong_types_and_foreign_keys_fail_while_composing(hydra_conf, override):
    with pytest.raises(HydraException):
        hydra_conf(override)


def test_unknown_option_lists_the_valid_ones(hydra_conf):
    with pytest.raises(HydraException, match=r"(?s)activation/foo.*leaky_relu.*tanh"):
        hydra_conf("activation=foo")


def test_params_hold_every_leaf_but_the_uri(hydra_conf):
    cfg = hydra_conf("init=random", "tracking.uri=http://user:secret@host:5000")
    params = C.flat_params(cfg)
    for key in ("model.depth", "model.width", "optimizer.lr", "init.std", "trainer.epochs", "seed", "dataset.split_seed"):
        assert key in params
    assert params["init.std"] == "0.01" and params["trainer.patience"] == "null"
    assert not any("secret" in v for v in params.values()) and "tracking.uri" not in params
    assert C.group_choices(cfg) == {"init": "random", "activation": "relu", "optimizer": "adam", "dataset": "digits"}


def test_run_names_read_at_a_glance(hydra_conf):
    cfg = hydra_conf("model.depth=4", "activation=tanh", "init=xavier", "seed=3")
    assert C.run_name(cfg) == "tanh-xavier-d4-s3"
    overrides = ["model.depth=4", "optimizer=sgd", "optimizer.lr=0.1", "+experiment=smoke", "model.width=8"]
    assert C.run_name(cfg, overrides) == "tanh-xavier-d4-s3"  # a single run: the overrides are in a tag
    varying = C.varying_keys([["optimizer=sgd", "optimizer.lr=0.1", "model.depth=4", "model.width=8"],
                              ["optimizer=adam", "optimizer.lr=0.2", "model.depth=2", "model.width=8"]])
    assert varying == ["model.depth", "optimizer", "optimizer.lr"]
    assert C.run_name(cfg, overrides, varying) == "tanh-xavier-d4-s3-sgd-lr0.1"
    baseline = ["experiment/baseline@_global_=classic", "seed=3"]
    assert C.run_name(cfg, baseline, ["experiment/baseline@_global_", "seed"]) == "tanh-xavier-d4-s3-classic"


def test_experiment_folder_is_the_experiment_group():
    link = CONF_DIR / "experiment"
    assert link.is_symlink() and Path(link.resolve()) == (CONF_DIR.parent / "experiments").resolve()
