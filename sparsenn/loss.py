"""Softmax cross-entropy, fused with its gradient."""

from __future__ import annotations

import numpy as np

from sparsenn import backend_cpu
from sparsenn.device import backend_of


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer class labels.

    ``forward(logits, labels) -> loss``; logits: (n_classes, batch) features-major, labels:
    (batch,) integers in [0, n_classes). ``backward() -> dlogits`` (n_classes, batch).
    On a GPU (logits a device array) the loss is computed there and only the number comes
    back; labels may then be a device array too (checked by the kernel, not here).
    """

    def __init__(self):
        self._d = None

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        if logits.ndim != 2:
            raise ValueError(f"logits must be 2-D (n_classes, batch), got shape {logits.shape}")
        ops = backend_of(logits)
        if ops is not backend_cpu and ops.is_array(labels):  # labels already on the GPU
            if labels.shape != (logits.shape[1],):
                raise ValueError(f"labels must have shape ({logits.shape[1]},) to match logits {logits.shape}, got {labels.shape}")
        else:
            labels = np.asarray(labels)
            self._check_labels(logits, labels)
        if self._d is None or self._d.shape != logits.shape or self._d.dtype != logits.dtype:
            self._d = ops.empty(logits.shape, logits.dtype)
        return ops.softmax_xent(logits, labels, self._d)

    @staticmethod
    def _check_labels(logits, labels) -> None:
        if labels.shape != (logits.shape[1],):
            raise ValueError(f"labels must have shape ({logits.shape[1]},) to match logits {logits.shape}, got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[0]):
            raise ValueError(f"labels must be in [0, {logits.shape[0]}), got range [{labels.min()}, {labels.max()}]")

    def backward(self) -> np.ndarray:
        """loss = mean_b [log sum_c exp z[c,b] - z[y_b, b]]  =>  dz = (softmax(z) - onehot(y)) / batch."""
        return self._d

    __call__ = forward
