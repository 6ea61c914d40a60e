"""A hidden layer with a skip connection and/or LayerNorm around its ``Dense``: forward and backward side by side.

    plain + norm:   h_i = phi(W LN(h) + b)
    residual:       h_i = h + alpha * phi(W u + b),   u = LN(h) with norm, else h;  u += s with a shift

``alpha`` is a fixed number (``scale``) or a trained scalar per layer (the gate: SkipInit / ReZero,
initialised at 0); ``s`` is Fixup's scalar bias before the weight layer (initialised at 0). A plain hidden
layer without norm is a bare ``Dense`` (the MLP uses it directly, so the default network is unchanged).
"""
from __future__ import annotations

import math

import numpy as np

from .norm import LayerNorm, WorkArrays

Array = np.ndarray


class Block:
    """One hidden layer ``i >= 2`` around its ``dense`` (the MLP's weight layer i, listed there with the other
    weight layers). ``parameters()`` lists the block's own: LayerNorm gain and bias, gate, shift, in that order.

    ``gate`` and ``shift`` are (1,) views into the MLP's flat parameter vector (``dgate``, ``dshift`` into its
    flat gradient), so every optimiser updates them.
    """

    def __init__(self, dense, *, residual: bool, scale: float | None = None, norm: LayerNorm | None = None,
                 gate: tuple[Array, Array] | None = None, shift: tuple[Array, Array] | None = None):
        if not residual and (scale is not None or gate is not None or shift is not None):
            raise ValueError("a plain block takes no branch scale, gate or shift")
        if residual and (scale is None) == (gate is None):
            raise ValueError("a residual block takes exactly one of a fixed scale or a gate")
        self.dense, self.residual, self.scale, self.norm = dense, residual, scale, norm
        self.gate, self.dgate = gate if gate is not None else (None, None)
        self.shift, self.dshift = shift if shift is not None else (None, None)
        for p in (self.gate, self.dgate, self.shift, self.dshift):
            if p is not None:
                p[...] = 0
        self.h = self.out = None  # input and output of the last forward pass
        self.grad_out = self.grad_u = None  # dL/d(output) and dL/du of the last backward pass
        self._work = WorkArrays(dense.W.dtype)

    @property
    def alpha(self) -> float:
        """The branch's multiplier now: the gate's value, or the fixed scale (1 for a plain block)."""
        if self.gate is not None:
            return float(self.gate[0])
        return 1.0 if self.scale is None else self.scale

    def forward(self, h: Array) -> Array:
        """(N, n) -> (N, n'); the output is a work array, overwritten by the next call of the same batch size."""
        self.h = h
        u = h if self.norm is None else self.norm.forward(h)                  # LN(h)
        if self.shift is not None:                                            # Fixup: a scalar bias before W
            u = np.add(u, self.shift, out=self._work.get("u", u.shape))
        a = self.dense.forward(u)                                             # phi(W u + b): (N, n)
        if not self.residual:
            self.out = a
            return a
        out = np.multiply(a, self.gate if self.gate is not None else self.scale, out=self._work.get("out", a.shape))
        out += h                                                              # the skip
        self.out = out
        return out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        """Fill the block's and its dense's gradients from dL/d(output) (N, n'); return dL/dh (N, n).

        A residual block leaves ``grad_out`` intact (the gate's per-sample gradients read it); a plain one
        overwrites it, as ``Dense.backward`` does."""
        if self.residual:
            self.grad_out = grad_out
            if self.gate is not None:
                self.dgate[0] = np.vdot(grad_out, self.dense.a)               # dL/dalpha = <dL/dh_i, phi(z)>
            grad_a = np.multiply(grad_out, self.gate if self.gate is not None else self.scale,
                                 out=self._work.get("grad_a", grad_out.shape))
        else:
            grad_a = grad_out
        grad_u = self.grad_u = self.dense.backward(grad_a)                    # dL/du (N, n), dense's work array
        if self.shift is not None:
            self.dshift[0] = grad_u.sum()
        grad_h = grad_u if self.norm is None else self.norm.backward(grad_u)
        if self.residual:                                                     # the skip passes grad_out through
            grad_h = np.add(grad_h, grad_out, out=self._work.get("dx", grad_h.shape))
        return grad_h

    def jvp(self, t: Array) -> Array:
        """Tangents of h (k, n, m) -> tangents of the output (k, n', m) at the last forward pass's inputs."""
        u = t if self.norm is None else self.norm.jvp(t)
        branch = self.dense.jvp(u)
        if not self.residual:
            return branch
        branch *= self.alpha
        branch += t
        return branch

    def branch_ratio(self) -> float | None:
        """||alpha * phi(z)|| / ||h|| over the last forward pass's batch (Frobenius norms); None for a plain
        block or when the skip is zero (the ratio is undefined)."""
        if not self.residual:
            return None
        skip = math.sqrt(np.vdot(self.h, self.h))
        if not skip > 0:
            return None
        ratio = abs(self.alpha) * math.sqrt(np.vdot(self.dense.a, self.dense.a)) / skip
        return ratio if math.isfinite(ratio) else None

    def per_sample_sq_norms(self) -> Array:
        """Squared norm of row n's share of the block's own gradients (gate, shift, LayerNorm) in the last
        backward pass -> (N,) float64; sample n's own gradient is N times its share (the caller scales)."""
        n = len(self.dense.z)
        total = np.zeros(n)
        if self.gate is not None:
            total += np.einsum("ij,ij->i", self.grad_out, self.dense.a, dtype=np.float64) ** 2
        if self.shift is not None:
            total += self.grad_u.sum(axis=1, dtype=np.float64) ** 2  # dL/ds = sum over units of dL/du
        if self.norm is not None:
            total += self.norm.per_sample_sq_norms()
        return total

    def parameters(self) -> list[Array]:
        own = [] if self.norm is None else self.norm.parameters()
        return own + [p for p in (self.gate, self.shift) if p is not None]

    def grads(self) -> list[Array]:
        own = [] if self.norm is None else self.norm.grads()
        return own + [g for g in (self.dgate, self.dshift) if g is not None]
