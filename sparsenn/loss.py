"""Softmax cross-entropy, fused with its gradient."""

from __future__ import annotations

import numpy as np

from sparsenn import backend_cpu
from sparsenn.device import backend_of
from sparsenn.layers import _check_array


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer class labels.

    ``forward(logits, labels) -> loss``; logits: (n_classes, batch) features-major, float32 or
    float64, labels: (batch,) integers in [0, n_classes). ``backward() -> dlogits``
    (n_classes, batch), the gradient of the last forward (an error before any forward).
    On a GPU (logits a device array) the loss is computed there and only the number comes
    back; labels may then be a device array too, whose shape and dtype are checked here but
    whose range is checked by the kernel (reading it here would mean a copy to the host).
    ``name`` starts every error message.
    """

    def __init__(self, name: str = "loss"):
        self.name = name
        self._d = None

    def forward(self, logits, labels) -> float:
        # the logits decide the device; anything but a device array is checked as CPU input
        ops = backend_of(logits) if hasattr(logits, "copy_to_host") else backend_cpu
        _check_array(logits, ops, self.name, what="logits")
        if logits.ndim != 2:
            raise ValueError(f"{self.name}: logits must be 2-D (n_classes, batch), got shape {logits.shape}")
        if logits.dtype.kind != "f":  # the gradient is written into an array of the logits' dtype
            raise TypeError(f"{self.name}: logits must be float32 or float64, got {logits.dtype}")
        if ops is not backend_cpu and ops.is_array(labels):  # labels already on the GPU
            self._check_labels(logits, labels, check_range=False)
        else:
            labels = np.asarray(labels)
            self._check_labels(logits, labels)
        if self._d is None or self._d.shape != logits.shape or self._d.dtype != logits.dtype:
            self._d = ops.empty(logits.shape, logits.dtype)
        return ops.softmax_xent(logits, labels, self._d)

    def _check_labels(self, logits, labels, check_range: bool = True) -> None:
        batch = logits.shape[1]
        if tuple(labels.shape) != (batch,):
            raise ValueError(f"{self.name}: labels must have shape ({batch},) to match logits "
                             f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: labels must be integers, got {labels.dtype}")
        if check_range and labels.size and (labels.min() < 0 or labels.max() >= logits.shape[0]):
            raise ValueError(f"{self.name}: labels must be in [0, {logits.shape[0]}), "
                             f"got range [{labels.min()}, {labels.max()}]")

    def backward(self):
        """loss = mean_b [log sum_c exp z[c,b] - z[y_b, b]]  =>  dz = (softmax(z) - onehot(y)) / batch.

        Returns the gradient computed by the last forward (a buffer that the next forward
        overwrites); (n_classes, batch) with that forward's batch.
        """
        if self._d is None:
            raise RuntimeError(f"{self.name}: backward called before forward (the gradient is computed "
                               f"by forward, from the logits and labels)")
        return self._d

    __call__ = forward
