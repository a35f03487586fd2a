"""Learning-rate schedules: step -> learning rate.

    Constant(lr)                          lr
    PiecewiseConstant([10000, 20000],     0.2 for step < 10000, 0.1 until 20000, then 0.05
                      [0.2, 0.1, 0.05])   (the 2019 study's schedule)
    Cosine(lr, total_steps, warmup=0,     linear warm-up to lr, then half a cosine down to
           min_lr=0)                      min_lr at total_steps

``step`` counts optimiser steps from 0.
"""

from __future__ import annotations

import bisect
import math


class Constant:
    def __init__(self, lr: float):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.lr = float(lr)

    def __call__(self, step: int) -> float:
        return self.lr

    def __repr__(self):
        return f"Constant({self.lr})"


class PiecewiseConstant:
    def __init__(self, boundaries, values):
        boundaries, values = [int(b) for b in boundaries], [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"need one more value than boundaries, got {len(boundaries)} boundaries and {len(values)} values"
            )
        if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])) or any(b < 0 for b in boundaries):
            raise ValueError(f"boundaries must be non-negative and increasing, got {boundaries}")
        if any(not v > 0 for v in values):
            raise ValueError(f"learning rates must be > 0, got {values}")
        self.boundaries, self.values = boundaries, values

    def __call__(self, step: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, step)]

    def __repr__(self):
        return f"PiecewiseConstant({self.boundaries}, {self.values})"


class Cosine:
    def __init__(self, lr: float, total_steps: int, warmup: int = 0, min_lr: float = 0.0):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if total_steps < 1 or not 0 <= warmup < total_steps:
            raise ValueError(f"need total_steps >= 1 and 0 <= warmup < total_steps, got {total_steps}, {warmup}")
        if not 0 <= min_lr <= lr:
            raise ValueError(f"min_lr must be in [0, lr], got {min_lr}")
        self.lr, self.total, self.warmup, self.min_lr = float(lr), int(total_steps), int(warmup), float(min_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def __repr__(self):
        return f"Cosine({self.lr}, total_steps={self.total}, warmup={self.warmup}, min_lr={self.min_lr})"


def make(name: str, lr: float, total_steps: int, milestones=None, values=None, warmup: int = 0):
    """Build a schedule by name: ``constant``, ``step`` (milestones + values) or ``cosine``."""
    if name == "constant":
        return Constant(lr)
    if name == "cosine":
        return Cosine(lr, total_steps, warmup=warmup)
    if name == "step":
        if milestones is None:
            raise ValueError("the 'step' schedule needs milestones")
        if values is None:  # halve at each milestone, as the 2019 study did
            values = [lr / 2**i for i in range(len(milestones) + 1)]
        return PiecewiseConstant(milestones, values)
    raise ValueError(f"unknown schedule {name!r}; choose constant, step or cosine")
