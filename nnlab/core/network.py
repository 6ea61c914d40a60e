"""Dense layers and the MLP: forward and backward side by side."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .activations import Activation, get_activation
from .blocks import Block
from .initializers import MODEL_INITIALIZERS, Initializer, fixup, get_bias_initializer, get_initializer
from .norm import LayerNorm
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

    def jvp(self, t: Array | None) -> Array:
        """Tangents of x (k, fan_in, m) -> of a (k, fan_out, m) at the last forward pass's k inputs: D W^T t,
        D = diag(f'(z)); ``t=None`` is the identity (m = fan_in), for the Jacobian probe."""
        d = self.activation.backward(self.z, self.a, np.ones_like(self.z))[:, :, None]  # f'(z): (k, fan_out, 1)
        if t is None:
            return d * self.W.T[None, :, :]
        out = self.W.T @ t  # (fan_out, fan_in) @ (k, fan_in, m) -> (k, fan_out, m)
        out *= d
        return out

    def parameters(self) -> list[Array]:
        return [self.W, self.b]

    def grads(self) -> list[Array]:
        return [self.dW, self.db]


class MLP(Module):
    """A stack of hidden layers with one activation and a linear output layer (logits).

    ``sizes = [n_in, h_1, ..., h_depth, n_out]``. Softmax lives in the loss, not in the network.

    Depth options (all off by default: a plain stack of Dense layers, exactly as before they existed):

    - ``residual=True``: every hidden layer after the first is ``h <- h + alpha * phi(W h + b)`` (the first
      has no skip: its width differs from the input's; the readout is unchanged). Every hidden layer must
      then be as wide as the first. ``branch_scale`` is alpha: a number > 0, or None = 1/sqrt(depth)
      (depth = number of hidden layers). ``branch_gate=True`` makes alpha a trained scalar per residual
      layer initialised at 0 (SkipInit / ReZero); the gate *replaces* the fixed scale, so ``branch_scale``
      must then be None. ``branch_shift=True`` adds Fixup's trained scalar bias to each branch's input
      (initialised at 0). Without ``residual``, ``branch_scale`` must be None and the flags False.
    - ``norm="layernorm"``: LayerNorm (trained gain 1, bias 0) on the input of every hidden layer after the
      first: ``h + alpha * phi(W LN(h) + b)`` in a residual net, ``phi(W LN(h) + b)`` in a plain one. The
      first hidden layer's input is the data, whose scaling is the dataset's business; the readout is
      unchanged.
    - ``init="fixup"`` (residual nets only; turns on the gate and the shift; ``init_params`` as He's) and
      ``init="lsuv"`` (orthogonal weights here; call ``nnlab.core.lsuv(model, x_batch)`` before training;
      ``init_params`` may hold its ``tol`` and ``max_passes``, and orthogonal's ``gain``): see ``initializers``.

    ``params`` is ``[W1, b1, ..., W_L, b_L]`` followed by each hidden layer's own parameters (LayerNorm gain
    and bias, gate, shift; layer 2 first), and ``grads()`` is aligned with it. Every parameter is a view into
    one flat array, ``flat_params`` (likewise ``flat_grads``), so an element-wise optimiser updates the whole
    network, gates and gains included, in a handful of NumPy calls.

    ``parametrization`` (``sp``, ``ntk``, ``mup``; see ``nnlab.core.parametrization``) sets how each
    layer's initial scale and learning rate depend on its width relative to ``base_width``; ``sp`` is
    the initialiser as it is. ``readout_zero_init`` starts the output layer at zero. A hidden layer's own
    parameters (LayerNorm gain and bias, gate, shift) take the learning-rate multiplier of its biases.
    """

    def __init__(self, sizes: Sequence[int], activation: str | Activation = "relu",
                 init: str | Initializer = "he", *, activation_params: dict | None = None,
                 init_params: dict | None = None, rng: np.random.Generator | None = None,
                 seed: int | None = None, dtype=np.float32, residual: bool = False,
                 branch_scale: float | None = None, branch_gate: bool = False, branch_shift: bool = False,
                 norm: str | None = None, parametrization: str = "sp",
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
        self.init_name = init if isinstance(init, str) else getattr(init, "__name__", "custom")
        if init == "fixup":  # Fixup's scalar multiplier (at 0) and bias per branch: the gate and the shift
            branch_gate, branch_shift = True, True
        self.architecture = _architecture(sizes, residual, branch_scale, branch_gate, branch_shift, norm, init)
        init_params = dict(init_params or {})
        # LSUV's own settings ride along in init_params (the config's init group) until lsuv() uses them
        self.lsuv_options = {k: init_params.pop(k) for k in ("tol", "max_passes") if k in init_params} \
            if init == "lsuv" else {}
        base = MODEL_INITIALIZERS.get(init, init) if isinstance(init, str) else init  # fixup: he, lsuv: orthogonal
        # checked before any draw: a refused parametrisation costs nothing
        self.scales: list[LayerScale] = layer_scales(sizes, parametrization, base_width, base, init_params,
                                                     readout_zero_init)
        self.parametrization, self.base_width, self.readout_zero_init = parametrization, base_width, readout_zero_init
        self.activation = get_activation(activation, **(activation_params or {}))
        init_fn = get_initializer(base, **init_params)
        bias_fn = get_bias_initializer(base, **init_params)
        identity = get_activation("identity")
        depth = len(sizes) - 2
        extra = _extra_shapes(sizes, self.architecture)  # (hidden layer i, name, shape) of the layers' own params
        shapes = [s for fan_in, fan_out in zip(sizes[:-1], sizes[1:]) for s in ((fan_in, fan_out), (fan_out,))]
        shapes += [shape for _, _, shape in extra]
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
        self._grads = grads
        # hidden layer i's own parameters by name: {i: {"ln_gain": (p, g), ...}}
        own: dict[int, dict[str, tuple[Array, Array]]] = {}
        for k, (i, name, _) in enumerate(extra, 2 * n_layers):
            own.setdefault(i, {})[name] = (params[k], grads[k])
        self._own_params = [(i, params[k]) for k, (i, _, _) in enumerate(extra, 2 * n_layers)]  # flat order
        # hidden layers: the first is a bare Dense (no skip, no norm); later ones a Block when they have one
        self.blocks: list[Dense | Block] = self.layers[:1] if depth else []
        a = self.architecture
        for i in range(2, depth + 1):
            mine = own.get(i, {})
            if not (a["residual"] or a["norm"]):
                self.blocks.append(self.layers[i - 1])
                continue
            ln = None
            if "ln_gain" in mine:
                (gain, dgain), (bias, dbias) = mine["ln_gain"], mine["ln_bias"]
                ln = LayerNorm(sizes[i - 1], self.dtype, buffers=(gain, bias, dgain, dbias))
            self.blocks.append(Block(self.layers[i - 1], residual=a["residual"], norm=ln,
                                     scale=None if a["branch_gate"] or not a["residual"] else a["branch_scale"],
                                     gate=mine.get("gate"), shift=mine.get("shift")))
        self._stack = [*self.blocks, self.layers[-1]]
        self._scratch: list[Array] | None = None  # weight-shaped work arrays for add_weight_decay
        # LSUV rescales on data: until nnlab.core.lsuv(model, x_batch) has run, the weights are only orthogonal
        self.needs_data_init = init == "lsuv"
        if init == "fixup":
            fixup(self)

    def lr_multipliers(self, optimizer) -> Array:
        """Per-parameter learning-rate multipliers (P,), laid out like ``flat_params``, for ``optimizer``
        (a name or an Optimizer: ``sgd`` and ``momentum`` share one rule, ``adam`` has its own). A hidden
        layer's own parameters (LayerNorm, gate, shift: vector-like) take its biases' multiplier."""
        from .parametrization import optimizer_kind

        kind = optimizer_kind(optimizer)
        own = [np.full(p.size, self.scales[i - 1].lr_bias[kind], self.dtype) for i, p in self._own_params]
        return np.concatenate([lr_multiplier_vector(self.scales, optimizer, self.dtype), *own])

    def scale_record(self, optimizer) -> dict[str, float]:
        """``lr_mult/layer_{i}`` and ``init_std/layer_{i}`` (i = 1 nearest the input, readout = depth + 1)."""
        return scale_record(self.scales, optimizer)

    @classmethod
    def from_shape(cls, n_in: int, n_out: int, depth: int, width: int | Sequence[int], **kwargs) -> "MLP":
        """``depth`` hidden layers of ``width`` units (or one width per hidden layer)."""
        return cls([n_in, *hidden_sizes(depth, width), n_out], **kwargs)

    def empty_like(self, dtype=None) -> "MLP":
        """A network of the same architecture with zero weights (the other parameters at their initial values;
        copy parameters in through ``flat_params``): what ``instruments`` builds its float64 copy from."""
        return MLP(self.sizes, self.activation, init=_zeros, dtype=self.dtype if dtype is None else dtype,
                   **self.architecture)

    @property
    def depth(self) -> int:
        """Number of hidden layers."""
        return len(self.layers) - 1

    @property
    def readout(self) -> Dense:
        return self.layers[-1]

    @property
    def weights(self) -> list[Array]:
        return [layer.W for layer in self.layers]

    def forward(self, x: Array, *, reuse: bool = False) -> Array:
        """(N, n_in) inputs -> (N, n_out) logits (a fresh array; ``reuse=True`` returns the last
        layer's work array instead, overwritten by the next forward pass: the training loop's choice)."""
        for layer in self._stack:
            x = layer.forward(x)
        return x if reuse else x.copy()

    __call__ = forward

    def backward(self, dlogits: Array) -> None:
        """Backpropagate dL/dlogits (N, n_out), filling every layer's gradients; ``dlogits`` may be
        overwritten. The input layer's dL/dx is not computed: nothing uses it."""
        grad = dlogits
        for i in range(len(self._stack) - 1, -1, -1):
            grad = self._stack[i].backward(grad, input_grad=i > 0)

    def views(self, flat: Array) -> list[Array]:
        """Views of a flat vector shaped like ``params`` ([W1, b1, ..., W_L, b_L, own...]); ``flat`` (P,)."""
        out, start = [], 0
        for p in self.params:
            out.append(flat[start : start + p.size].reshape(p.shape))
            start += p.size
        return out

    def weight_views(self, flat: Array) -> list[Array]:
        """Views of the weight matrices [W1, ..., W_L] in a flat vector laid out like ``flat_params``."""
        return self.views(flat)[0 : 2 * len(self.layers) : 2]

    def add_weight_decay(self, weight_decay: float) -> None:
        """dW += weight_decay * W for every layer (biases, gains, gates are not decayed), without temporaries."""
        if self._scratch is None:
            self._scratch = self.weight_views(np.empty_like(self.flat_params))
        for layer, scratch in zip(self.layers, self._scratch):
            np.multiply(layer.W, weight_decay, out=scratch)
            layer.dW += scratch

    def hidden_activations(self) -> list[tuple[Array, Array]]:
        """(z, h) of each hidden layer from the last forward pass, input side first: z (N, n) the weight
        layer's pre-activation, h (N, n) the layer's output (the sum h + alpha phi(z), for a residual layer)."""
        return [(layer.z, block.out if isinstance(block, Block) else layer.a)
                for layer, block in zip(self.layers, self.blocks)]

    def residual_blocks(self) -> list[tuple[int, Block]]:
        """(i, block) of each hidden layer with a skip connection (i = 2..depth), empty for a plain net."""
        return [(i, b) for i, b in enumerate(self.blocks, 1) if isinstance(b, Block) and b.residual]

    def parameters(self) -> list[Array]:
        return list(self.params)

    def grads(self) -> list[Array]:
        return list(self._grads)

    def _named(self) -> list[tuple[str, Array]]:
        named = [(f"{kind}{i}", p) for i, layer in enumerate(self.layers, 1)
                 for kind, p in zip("Wb", layer.parameters())]
        for i, block in enumerate(self.blocks, 1):
            if isinstance(block, Block):
                names = (["ln_gain", "ln_bias"] if block.norm is not None else []) + \
                        [n for n, p in (("gate", block.gate), ("shift", block.shift)) if p is not None]
                named += [(f"{n}{i}", p) for n, p in zip(names, block.parameters())]
        return named

    def state_dict(self) -> dict[str, Array]:
        """Parameters by name (``W1``, ``b1``, ..., and ``ln_gain{i}``, ``ln_bias{i}``, ``gate{i}``,
        ``shift{i}`` of hidden layer i where it has them) for ``np.savez``."""
        return dict(self._named())

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Set every parameter from ``state`` (as ``state_dict`` names them); the weights are then final, so an
        LSUV model no longer needs its data step."""
        for name, p in self._named():
            if name not in state:
                raise ValueError(f"{name}: missing from the state (it has: {', '.join(sorted(state))})")
            if state[name].shape != p.shape:
                raise ValueError(f"{name}: shape {state[name].shape} != model's {p.shape}")
            p[...] = state[name]
        self.needs_data_init = False


NORMS = (None, "layernorm")


def _zeros(fan_in: int, fan_out: int, *, rng: np.random.Generator, dtype=np.float32) -> Array:
    return np.zeros((fan_in, fan_out), dtype)


def _architecture(sizes: list[int], residual, branch_scale, branch_gate, branch_shift, norm, init) -> dict:
    """Validate the depth options once; return them resolved (branch_scale None -> 1/sqrt(depth))."""
    for name, value in (("residual", residual), ("branch_gate", branch_gate), ("branch_shift", branch_shift)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid choices: None (no normalisation), 'layernorm'")
    depth, widths = len(sizes) - 2, sizes[1:-1]
    if not residual:
        if init == "fixup":
            raise ValueError("init='fixup' needs residual=True: it zero-initialises residual branches, and a plain "
                             "net has none; valid: residual=True, or another init")
        for name, value, off in (("branch_scale", branch_scale, None), ("branch_gate", branch_gate, False),
                                 ("branch_shift", branch_shift, False)):
            if value != off:
                raise ValueError(f"{name}={value!r} needs residual=True (it acts on the residual branch); "
                                 f"valid without residual: {off}")
        return {"residual": False, "branch_scale": None, "branch_gate": False, "branch_shift": False, "norm": norm}
    if len(set(widths)) > 1:
        raise ValueError(f"residual=True needs every hidden layer as wide as the first (each skip adds h_(i-1) to "
                         f"h_i); got hidden widths {widths}; valid: one width, e.g. {[widths[0]] * depth}")
    if branch_scale is not None:
        if branch_gate:
            why = "init='fixup' has one (its scalar multiplier)" if init == "fixup" else "branch_gate=True"
            raise ValueError(f"branch_scale={branch_scale!r} with a gate ({why}): the gate is the branch's scale, a "
                             "trained scalar initialised at 0; valid: branch_scale=None with a gate")
        if isinstance(branch_scale, bool) or not isinstance(branch_scale, (int, float, np.number)) \
                or not (0 < branch_scale < np.inf):
            raise ValueError(f"branch_scale must be a finite number > 0 or None (1/sqrt(depth)), got {branch_scale!r}")
        scale = float(branch_scale)
    else:
        scale = None if branch_gate else 1.0 / np.sqrt(max(depth, 1))
    return {"residual": True, "branch_scale": scale, "branch_gate": bool(branch_gate),
            "branch_shift": bool(branch_shift), "norm": norm}


def _extra_shapes(sizes: list[int], arch: dict) -> list[tuple[int, str, tuple[int, ...]]]:
    """(hidden layer i, name, shape) of every hidden layer's own parameters, in flat order (layer 2 first)."""
    out = []
    for i in range(2, len(sizes) - 1):
        if arch["norm"] == "layernorm":
            out += [(i, "ln_gain", (sizes[i - 1],)), (i, "ln_bias", (sizes[i - 1],))]
        if arch["branch_gate"]:
            out.append((i, "gate", (1,)))
        if arch["branch_shift"]:
            out.append((i, "shift", (1,)))
    return out


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
