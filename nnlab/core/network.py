"""Dense layers and the MLP: forward and backward side by side."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .activations import Activation, get_activation
from .initializers import Initializer, get_bias_initializer, get_initializer
from .parametrization import LayerScale, layer_scales, lr_multiplier_vector, scale_record

Array = np.ndarray


class Module:
    """Something with parameters and gradients aligned one-to-one."""

    def parameters(self) -> list[Array]:
        return []

    def grads(self) -> list[Array]:
        return []

    def zero_grad(self) -> None:
        for g in self.grads():
            g.fill(0)


class Dense(Module):
    """``a = f(x @ W + b)`` with W of shape (fan_in, fan_out) and b of shape (fan_out,).

    ``buffers`` optionally hands in (W, b, dW, db) storage, so an MLP can keep all its parameters
    in one flat array; W is filled by ``init``, b by ``bias_init`` (None: zeros).
    """

    def __init__(self, fan_in: int, fan_out: int, activation: Activation, init: Initializer,
                 rng: np.random.Generator, dtype=np.float32, buffers: tuple[Array, ...] | None = None,
                 bias_init: Initializer | None = None):
        if buffers is None:
            buffers = (np.empty((fan_in, fan_out), dtype), np.empty(fan_out, dtype),
                       np.empty((fan_in, fan_out), dtype), np.empty(fan_out, dtype))
        self.W, self.b, self.dW, self.db = buffers
        self.W[...] = init(fan_in, fan_out, rng=rng, dtype=dtype)
        self.b[...] = 0 if bias_init is None else bias_init(fan_out, rng=rng, dtype=dtype)
        self.dW[...] = 0
        self.db[...] = 0
        self.activation = activation
        self.x = self.z = self.a = None  # cached by forward for backward
        self.grad_z = None  # dL/dz (N, fan_out) of the last backward pass (per-sample gradient norms use it)
        self._buffers: dict[tuple[str, int], Array] = {}

    def _buffer(self, name: str, n: int) -> Array:
        """A reusable (n, fan_out) work array: the training loop allocates nothing per step.

        Only the last two batch sizes are kept (the full batches and the epoch's remainder)."""
        key = (name, n)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= 6:  # z, a, dx for two sizes
                self._buffers.pop(next(iter(self._buffers)))
            width = self.W.shape[1] if name != "dx" else self.W.shape[0]
            buf = self._buffers[key] = np.empty((n, width), self.W.dtype)
        return buf

    def forward(self, x: Array) -> Array:
        """(N, fan_in) -> (N, fan_out). The output is a work array, overwritten by the next call of
        the same batch size; ``MLP.forward`` hands callers a copy."""
        self.x = x                                           # (N, fan_in)
        self.z = np.matmul(x, self.W, out=self._buffer("z", len(x)))  # (N, fan_out)
        self.z += self.b
        self.a = self.activation.forward_into(self.z, self._buffer("a", len(x)))  # (N, fan_out)
        return self.a

    def backward(self, grad_a: Array, input_grad: bool = True) -> Array | None:
        """Fill dW, db from dL/da (N, fan_out), which is overwritten; return dL/dx (N, fan_in)
        unless ``input_grad`` is False (the first layer: nothing below needs it)."""
        grad_z = self.grad_z = self.activation.backward_inplace(self.z, self.a, grad_a)
        np.matmul(self.x.T, grad_z, out=self.dW)
        np.add.reduce(grad_z, axis=0, out=self.db)
        if not input_grad:
            return None
        return np.matmul(grad_z, self.W.T, out=self._buffer("dx", len(grad_z)))

    def parameters(self) -> list[Array]:
        return [self.W, self.b]

    def grads(self) -> list[Array]:
        return [self.dW, self.db]


class MLP(Module):
    """A stack of Dense layers: hidden layers with one activation, linear output layer (logits).

    ``sizes = [n_in, h_1, ..., h_depth, n_out]``; ``params`` is ``[W1, b1, ..., W_L, b_L]`` and
    ``grads()`` is aligned with it. Softmax lives in the loss, not in the network.

    Every parameter is a view into one flat array, ``flat_params`` (likewise ``flat_grads``), so
    an element-wise optimiser can update the whole network in a handful of NumPy calls.

    ``parametrization`` (``sp``, ``ntk``, ``mup``; see ``nnlab.core.parametrization``) sets how each
    layer's initial scale and learning rate depend on its width relative to ``base_width``; ``sp`` is
    the initialiser as it is. ``readout_zero_init`` starts the output layer at zero.
    """

    def __init__(self, sizes: Sequence[int], activation: str | Activation = "relu",
                 init: str | Initializer = "he", *, activation_params: dict | None = None,
                 init_params: dict | None = None, rng: np.random.Generator | None = None,
                 seed: int | None = None, dtype=np.float32, parametrization: str = "sp",
                 base_width: int | Sequence[int] | None = None, readout_zero_init: bool = False):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must be >= 2 positive layer sizes [n_in, ..., n_out], got {sizes}")
        if rng is None:
            rng = np.random.default_rng(seed)
        elif seed is not None:
            raise ValueError("pass either rng or seed, not both")
        self.sizes = sizes
        self.dtype = np.dtype(dtype)
        # checked before any draw: a refused parametrisation costs nothing
        self.scales: list[LayerScale] = layer_scales(sizes, parametrization, base_width, init, init_params,
                                                     readout_zero_init)
        self.parametrization, self.base_width, self.readout_zero_init = parametrization, base_width, readout_zero_init
        self.activation = get_activation(activation, **(activation_params or {}))
        init_fn = get_initializer(init, **(init_params or {}))
        bias_fn = get_bias_initializer(init, **(init_params or {}))
        identity = get_activation("identity")
        shapes = [s for fan_in, fan_out in zip(sizes[:-1], sizes[1:]) for s in ((fan_in, fan_out), (fan_out,))]
        self.flat_params, params = _flat_views(shapes, self.dtype)
        self.flat_grads, grads = _flat_views(shapes, self.dtype)
        n_layers = len(sizes) - 1
        self.layers = [
            Dense(fan_in, fan_out, self.activation if i < n_layers - 1 else identity, init_fn, rng, self.dtype,
                  buffers=(params[2 * i], params[2 * i + 1], grads[2 * i], grads[2 * i + 1]), bias_init=bias_fn)
            for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]))
        ]
        self.params = params
        for layer, scale in zip(self.layers, self.scales):  # the parametrisation rescales the initialiser's draw
            if scale.init_factor == 0.0:  # a zero readout (mup's readout_zero_init): its bias too
                layer.W[...] = 0
                layer.b[...] = 0
            elif scale.init_factor != 1.0:
                layer.W *= scale.init_factor
        self._scratch: list[Array] | None = None  # weight-shaped work arrays for add_weight_decay

    def lr_multipliers(self, optimizer) -> Array:
        """Per-parameter learning-rate multipliers (P,), laid out like ``flat_params``, for ``optimizer``
        (a name or an Optimizer: ``sgd`` and ``momentum`` share one rule, ``adam`` has its own)."""
        return lr_multiplier_vector(self.scales, optimizer, self.dtype)

    def scale_record(self, optimizer) -> dict[str, float]:
        """``lr_mult/layer_{i}`` and ``init_std/layer_{i}`` (i = 1 nearest the input, readout = depth + 1)."""
        return scale_record(self.scales, optimizer)

    @classmethod
    def from_shape(cls, n_in: int, n_out: int, depth: int, width: int | Sequence[int], **kwargs) -> "MLP":
        """``depth`` hidden layers of ``width`` units (or one width per hidden layer)."""
        return cls([n_in, *hidden_sizes(depth, width), n_out], **kwargs)

    @property
    def depth(self) -> int:
        """Number of hidden layers."""
        return len(self.layers) - 1

    @property
    def weights(self) -> list[Array]:
        return [layer.W for layer in self.layers]

    def forward(self, x: Array, *, reuse: bool = False) -> Array:
        """(N, n_in) inputs -> (N, n_out) logits (a fresh array; ``reuse=True`` returns the last
        layer's work array instead, overwritten by the next forward pass: the training loop's choice)."""
        for layer in self.layers:
            x = layer.forward(x)
        return x if reuse else x.copy()

    __call__ = forward

    def backward(self, dlogits: Array) -> None:
        """Backpropagate dL/dlogits (N, n_out), filling every layer's gradients; ``dlogits`` may be
        overwritten. The input layer's dL/dx is not computed: nothing uses it."""
        grad = dlogits
        for i in range(len(self.layers) - 1, -1, -1):
            grad = self.layers[i].backward(grad, input_grad=i > 0)

    def views(self, flat: Array) -> list[Array]:
        """Views of a flat vector shaped like ``params`` ([W1, b1, ..., W_L, b_L]); ``flat`` (P,)."""
        out, start = [], 0
        for p in self.params:
            out.append(flat[start : start + p.size].reshape(p.shape))
            start += p.size
        return out

    def add_weight_decay(self, weight_decay: float) -> None:
        """dW += weight_decay * W for every layer (biases are not decayed), without temporaries."""
        if self._scratch is None:
            self._scratch = self.views(np.empty_like(self.flat_params))[0::2]
        for layer, scratch in zip(self.layers, self._scratch):
            np.multiply(layer.W, weight_decay, out=scratch)
            layer.dW += scratch

    def hidden_activations(self) -> list[tuple[Array, Array]]:
        """(z, a) of each hidden layer from the last forward pass, input side first."""
        return [(layer.z, layer.a) for layer in self.layers[:-1]]

    def parameters(self) -> list[Array]:
        return [p for layer in self.layers for p in layer.parameters()]

    def grads(self) -> list[Array]:
        return [g for layer in self.layers for g in layer.grads()]

    def state_dict(self) -> dict[str, Array]:
        """Weights by name (``W1``, ``b1``, ...) for ``np.savez``."""
        return {f"{kind}{i}": p for i, layer in enumerate(self.layers, 1) for kind, p in zip("Wb", layer.parameters())}

    def load_state_dict(self, state: dict[str, Array]) -> None:
        for i, layer in enumerate(self.layers, 1):
            for kind, p in zip("Wb", layer.parameters()):
                if state[f"{kind}{i}"].shape != p.shape:
                    raise ValueError(f"{kind}{i}: shape {state[f'{kind}{i}'].shape} != model's {p.shape}")
                p[...] = state[f"{kind}{i}"]


def _flat_views(shapes: list[tuple[int, ...]], dtype) -> tuple[Array, list[Array]]:
    """One zeroed flat array and a list of views into it with the given shapes."""
    sizes = [int(np.prod(s)) for s in shapes]
    flat = np.zeros(sum(sizes), dtype=dtype)
    offsets = np.cumsum([0, *sizes])
    return flat, [flat[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]


def hidden_sizes(depth: int, width: int | Sequence[int]) -> list[int]:
    """Validate depth/width and return the list of hidden layer sizes."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
    widths = [width] * depth if isinstance(width, (int, np.integer)) else list(width)
    if len(widths) != depth:
        raise ValueError(f"got {len(widths)} widths {widths} for depth {depth}; give one width per hidden layer")
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1]
    if bad or (isinstance(width, (int, np.integer)) and width < 1):
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    return [int(w) for w in widths]
