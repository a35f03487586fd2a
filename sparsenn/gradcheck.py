"""Gradient checking: hand-written backward passes against central differences in float64.

    numeric  d loss / d theta_i  ~  (loss(theta_i + eps) - loss(theta_i - eps)) / (2 eps)

Build the layer or model with ``dtype=np.float64`` (the kernels compile for it), so the
differences are not swamped by float32 rounding. A mismatch is reported with the parameter
name and the flat index that disagree, so a wrong backward points at its own line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GradCheckReport:
    checked: int = 0
    failures: list = field(default_factory=list)  # (what, index, analytic, numeric)
    max_rel_err: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_if_failed(self) -> None:
        if self.failures:
            lines = [f"  {w}[{i}]: analytic {a:.8g} vs numeric {n:.8g}" for w, i, a, n in self.failures[:10]]
            more = f"\n  ... and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
            raise AssertionError(
                f"gradient check failed at {len(self.failures)} of {self.checked} entries:\n"
                + "\n".join(lines) + more
            )


def _compare(report, what, idx, analytic, numeric, rtol, atol):
    err = abs(analytic - numeric)
    report.checked += 1
    denom = max(abs(analytic), abs(numeric), 1e-12)
    report.max_rel_err = max(report.max_rel_err, err / denom if err > atol else 0.0)
    if err > atol + rtol * max(abs(analytic), abs(numeric)):
        report.failures.append((what, idx, analytic, numeric))


def _indices(size, rng, max_per_array):
    if max_per_array is None or size <= max_per_array:
        return np.arange(size)
    return np.sort(rng.choice(size, max_per_array, replace=False))


def check(forward_loss, backward, params, inputs=(), rng=None, eps=1e-6, rtol=1e-5, atol=1e-8,
          max_per_array=None) -> GradCheckReport:
    """Generic checker.

    forward_loss(): runs the forward pass and returns the scalar loss.
    backward(): runs the backward pass (after a forward) and returns a dict
        ``{input_name: d loss / d input}`` for the arrays in ``inputs``.
    params: Parameters whose ``.grad`` the backward fills; inputs: ``(name, array)`` pairs
    perturbed in place. ``max_per_array`` samples that many entries per array (with ``rng``).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    forward_loss()
    input_grads = backward()
    analytic = [(p.name, p.value, p.grad.copy()) for p in params]
    analytic += [(name, arr, np.array(input_grads[name], copy=True)) for name, arr in inputs]
    report = GradCheckReport()
    for what, arr, grad in analytic:
        if arr.dtype != np.float64:
            raise TypeError(f"gradient check needs float64 arrays; {what} is {arr.dtype}")
        flat, gflat = arr.reshape(-1), grad.reshape(-1)
        for i in _indices(flat.size, rng, max_per_array):
            old = flat[i]
            flat[i] = old + eps
            up = forward_loss()
            flat[i] = old - eps
            down = forward_loss()
            flat[i] = old
            _compare(report, what, int(i), float(gflat[i]), (up - down) / (2 * eps), rtol, atol)
    return report


def check_layer(layer, x, rng, **kw) -> GradCheckReport:
    """Check a layer's parameter gradients and dx with the loss ``sum(y * R)`` (so dy = R)."""
    y = layer.forward(x)
    R = rng.standard_normal(y.shape)

    def forward_loss():
        return float(np.sum(layer.forward(x) * R))

    def backward():
        return {"x": layer.backward(R.copy(), need_dx=True)}

    return check(forward_loss, backward, layer.parameters(), [("x", x)], rng=rng, **kw)


def check_model(model, loss_fn, x, labels, rng, **kw) -> GradCheckReport:
    """Check every parameter gradient of ``model`` under ``loss_fn`` (e.g. SoftmaxCrossEntropy)."""

    def forward_loss():
        return float(loss_fn.forward(model.forward(x), labels))

    def backward():
        model.backward(loss_fn.backward())
        return {}

    return check(forward_loss, backward, model.parameters(), rng=rng, **kw)
