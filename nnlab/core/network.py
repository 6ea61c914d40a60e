"""Dense layers and the MLP: forward and backward side by side."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .activations import Activation, get_activation
from .initializers import Initializer, get_bias_initializer, get_initializer

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

    def forward(self, x: Array) -> Array:
        self.x = x                       # (N, fan_in)
        self.z = x @ self.W + self.b     # (N, fan_out)
        self.a = self.activation(self.z)  # (N, fan_out)
        return self.a

    def backward(self, grad_a: Array) -> Array:
        """Fill dW, db from dL/da (N, fan_out); return dL/dx (N, fan_in)."""
        grad_z = self.activation.backward(self.z, self.a, grad_a)
        np.matmul(self.x.T, grad_z, out=self.dW)
        np.sum(grad_z, axis=0, out=self.db)
        return grad_z @ self.W.T

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
    """

    def __init__(self, sizes: Sequence[int], activation: str | Activation = "relu",
                 init: str | Initializer = "he", *, activation_params: dict | None = None,
                 init_params: dict | None = None, rng: np.random.Generator | None = None,
                 seed: int | None = None, dtype=np.float32):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must be >= 2 positive layer sizes [n_in, ..., n_out], got {sizes}")
        if rng is None:
            rng = np.random.default_rng(seed)
        elif seed is not None:
            raise ValueError("pass either rng or seed, not both")
        self.sizes = sizes
        self.dtype = np.dtype(dtype)
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

    def forward(self, x: Array) -> Array:
        """(N, n_in) inputs -> (N, n_out) logits."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dlogits: Array) -> None:
        """Backpropagate dL/dlogits (N, n_out), filling every layer's gradients."""
        grad = dlogits
        for layer in reversed(self.layers):
            grad = layer.backward(grad)

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
