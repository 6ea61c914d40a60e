"""LayerNorm (Ba et al. 2016) with a trained gain and bias, and the reusable work arrays of the new layers.

Per sample, over the features: no batch statistics to carry between training and evaluation.
"""
from __future__ import annotations

import numpy as np

Array = np.ndarray
EPS = 1e-5  # added to the variance (PyTorch's default): a constant row normalises to 0, not NaN


class WorkArrays:
    """Work arrays keyed by name and shape, so a training step allocates nothing after the first one.

    Only the last two batch sizes are kept (the full batches and the epoch's remainder), as ``Dense`` does."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self._by_size: dict[int, dict[str, Array]] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> Array:
        """An uninitialised array of ``shape`` (first axis: the batch), the same object on every call."""
        arrays = self._by_size.get(shape[0])
        if arrays is None:
            if len(self._by_size) >= 2:
                self._by_size.pop(next(iter(self._by_size)))
            arrays = self._by_size[shape[0]] = {}
        buf = arrays.get(name)
        if buf is None or buf.shape != shape:
            buf = arrays[name] = np.empty(shape, self.dtype)
        return buf


class LayerNorm:
    """``y = gain * (x - mean(x)) / sqrt(var(x) + eps) + bias`` per row of x (N, n); gain, bias (n,).

    ``buffers`` hands in (gain, bias, dgain, dbias) storage (views into the MLP's flat arrays); gain
    starts at 1 and bias at 0, so at initialisation the layer only standardises.
    """

    def __init__(self, n: int, dtype=np.float32, buffers: tuple[Array, ...] | None = None):
        if buffers is None:
            buffers = tuple(np.empty(n, dtype) for _ in range(4))
        self.gain, self.bias, self.dgain, self.dbias = buffers
        self.gain[...] = 1
        self.bias[...] = 0
        self.dgain[...] = 0
        self.dbias[...] = 0
        self.xhat = self.rstd = self.grad_y = None  # cached by forward / backward
        self._work = WorkArrays(dtype)

    def forward(self, x: Array) -> Array:
        """(N, n) -> (N, n), a work array overwritten by the next call of the same batch size."""
        n, w = x.shape
        mean = np.mean(x, axis=1, keepdims=True, out=self._work.get("mean", (n, 1)))
        xhat = self.xhat = np.subtract(x, mean, out=self._work.get("xhat", (n, w)))
        y = np.multiply(xhat, xhat, out=self._work.get("y", (n, w)))             # squares first, y later
        rstd = self.rstd = np.mean(y, axis=1, keepdims=True, out=self._work.get("rstd", (n, 1)))
        rstd += EPS
        np.sqrt(rstd, out=rstd)
        np.reciprocal(rstd, out=rstd)                                            # 1 / sigma: (N, 1)
        xhat *= rstd
        np.multiply(xhat, self.gain, out=y)
        y += self.bias
        return y

    def backward(self, grad_y: Array) -> Array:
        """Fill dgain, dbias from dL/dy (N, n), left intact (per-sample gradient norms read it); return dL/dx.

        dx = (g - mean(g) - xhat * mean(g * xhat)) / sigma with g = gain * dL/dy: the standardisation's
        Jacobian is (I - 1 1^T / n - xhat xhat^T / n) / sigma, applied per row."""
        n, w = grad_y.shape
        self.grad_y = grad_y
        np.add.reduce(grad_y, axis=0, out=self.dbias)
        tmp = np.multiply(grad_y, self.xhat, out=self._work.get("tmp", (n, w)))
        np.add.reduce(tmp, axis=0, out=self.dgain)
        g = np.multiply(grad_y, self.gain, out=self._work.get("g", (n, w)))      # dL/dxhat
        mean_g = np.mean(g, axis=1, keepdims=True, out=self._work.get("mean_g", (n, 1)))
        np.multiply(g, self.xhat, out=tmp)
        mean_gx = np.mean(tmp, axis=1, keepdims=True, out=self._work.get("mean_gx", (n, 1)))
        dx = np.multiply(self.xhat, mean_gx, out=self._work.get("dx", (n, w)))
        np.subtract(g, dx, out=dx)
        dx -= mean_g
        dx *= self.rstd
        return dx

    def jvp(self, t: Array) -> Array:
        """Tangents through the layer at the last forward pass's inputs: (k, n, m) -> (k, n, m), for the
        Jacobian probe (k inputs, m tangent directions)."""
        n = t.shape[1]
        xhat = self.xhat[:, :, None]
        proj = np.einsum("kn,knm->km", self.xhat, t)[:, None, :] / n  # mean over features of xhat * t
        out = t - t.mean(axis=1, keepdims=True) - xhat * proj
        out *= self.rstd[:, :, None] * self.gain[None, :, None]
        return out

    def per_sample_sq_norms(self) -> Array:
        """Squared norm of row n's share of d(gain, bias) in the last backward pass, for each row -> (N,)
        float64. The backward pass saw the mean loss, so sample n's own gradient is N times its share: the
        caller multiplies by N^2 (``instruments.per_sample_grad_sq_norms``)."""
        g_sq = np.einsum("ij,ij->i", self.grad_y, self.grad_y, dtype=np.float64)
        gx = self.grad_y * self.xhat
        return g_sq + np.einsum("ij,ij->i", gx, gx, dtype=np.float64)

    def parameters(self) -> list[Array]:
        return [self.gain, self.bias]

    def grads(self) -> list[Array]:
        return [self.dgain, self.dbias]
