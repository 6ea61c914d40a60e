"""nnlab.core: a from-scratch NumPy MLP (plain, residual, LayerNorm) and its training loop. Imports neither Hydra
nor MLflow."""
from .activations import ACTIVATIONS, Activation, get_activation
from .blocks import Block
from .diagnostics import GradNormMeter, TrainMeter, activation_length_logvar, activation_stats, preactivation_std
from .initializers import INITIALIZERS, MODEL_INITIALIZERS, fixup, get_bias_initializer, get_initializer, lsuv
from .instruments import InstrumentConfig, Instruments
from .jacobian import JacobianProbe, hidden_jacobians, jacobian_singular_values, jacobian_stats
from .losses import LOSSES, get_loss, l2_penalty, log_softmax, mse_one_hot, softmax, softmax_cross_entropy
from .network import MLP, NORMS, Dense, Module, hidden_sizes
from .norm import LayerNorm
from .optim import OPTIMIZERS, SCHEDULES, SGD, Adam, Momentum, Optimizer, get_schedule, make_optimizer
from .parametrization import (INIT_VARIANCES, PARAMETRIZATIONS, LayerScale, coord_stats, init_variance,
                              layer_scales, scale_record)
from .objective import loss_and_grads
from .train import (DivergenceError, History, TrainConfig, accuracy, evaluate, fit, predict,
                    train_epoch)

__all__ = [
    "ACTIVATIONS", "Activation", "get_activation", "GradNormMeter", "TrainMeter", "activation_stats",
    "preactivation_std", "INITIALIZERS", "get_initializer", "get_bias_initializer", "JacobianProbe",
    "hidden_jacobians", "jacobian_singular_values", "jacobian_stats", "l2_penalty", "log_softmax", "softmax",
    "softmax_cross_entropy", "MLP", "Dense", "Module",
    "hidden_sizes", "OPTIMIZERS", "SCHEDULES", "SGD", "Adam", "Momentum", "Optimizer", "get_schedule",
    "make_optimizer", "DivergenceError", "History", "TrainConfig", "accuracy", "evaluate", "fit",
    "loss_and_grads", "predict", "train_epoch", "InstrumentConfig", "Instruments",
    "Block", "LayerNorm", "NORMS", "MODEL_INITIALIZERS", "fixup", "lsuv", "activation_length_logvar",
    "LOSSES", "get_loss", "mse_one_hot", "INIT_VARIANCES", "PARAMETRIZATIONS", "LayerScale", "coord_stats",
    "init_variance", "layer_scales", "scale_record",
]
