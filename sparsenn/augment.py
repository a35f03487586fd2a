"""The CIFAR-10 input pipeline of TensorFlow's CIFAR-10 tutorial (used by the 2019 LeNet-5 code):
random 24x24 crops and horizontal flips for training, centre crops for testing, then per-image
standardisation.

    train:  crop at a random (oy, ox) in [0, 32-24], flip left-right with probability 1/2,
            standardise                                        -> (n, 3*24*24) float32 rows
    test:   crop at the centre (4, 4), standardise

Per-image standardisation is ``tf.image.per_image_standardization``: over all 3*24*24 values
of one image (pixels as 0..255 floats), ``(x - mean) / max(std, 1 / sqrt(n_values))``; the
floor keeps a flat image from being divided by ~0.

The output rows are batch-major (one image per row, features in (channel, row, col) order),
which is what ``sparsenn.train.ArrayData`` holds and what a LeNet-5 with
``input_shape=(3, 24, 24)`` reads.

Every draw takes an explicit ``numpy.random.Generator``. :class:`EpochCrops` redraws the crops
of the whole training set at each epoch from ``(seed, epoch)`` alone: each image is used once
per epoch, so one draw per image per epoch is the same distribution as drawing per mini-batch,
and a run resumed mid-epoch sees exactly the crops it would have seen.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

CROP = 24  # TensorFlow's CIFAR-10 tutorial crops 32x32 images to 24x24


@njit(parallel=True, fastmath=True, cache=True)
def crop_flip_standardize(images, oy, ox, flip, size, out):
    """out[n] = standardise(flip?(images[n, :, oy:oy+size, ox:ox+size])), flattened (c, row, col).

    images[n, C, H, W] uint8 C-contiguous; oy[n], ox[n] int64 crop corners (0 <= oy <= H-size);
    flip[n] bool (mirror the columns); out[n, C*size*size] float32: overwritten.
    Standardise: (v - mean) / max(std, 1/sqrt(C*size*size)) over the image's crop (float64
    sums). Cost O(n * C * size^2). One image per prange iteration: each writes only its row.
    """
    n, C = images.shape[0], images.shape[1]
    m = C * size * size
    floor = 1.0 / np.sqrt(m)
    for k in prange(n):
        row = out[k]
        y0, x0 = oy[k], ox[k]
        t = 0
        for c in range(C):
            for i in range(size):
                src = images[k, c, y0 + i]
                for j in range(size):
                    jj = x0 + size - 1 - j if flip[k] else x0 + j
                    row[t] = src[jj]
                    t += 1
        s = 0.0
        for t in range(m):
            s += row[t]
        mean = s / m
        s = 0.0
        for t in range(m):
            s += (row[t] - mean) * (row[t] - mean)
        scale = 1.0 / max(np.sqrt(s / m), floor)
        for t in range(m):
            row[t] = (row[t] - mean) * scale


def crop_flip_standardize_ref(images, oy, ox, flip, size):
    """NumPy twin of :func:`crop_flip_standardize`: returns (n, C*size*size) float32."""
    n, C = images.shape[:2]
    out = np.empty((n, C * size * size), dtype=np.float32)
    for k in range(n):
        crop = images[k, :, oy[k]:oy[k] + size, ox[k]:ox[k] + size].astype(np.float64)
        if flip[k]:
            crop = crop[:, :, ::-1]
        out[k] = per_image_standardization(crop.reshape(1, -1))[0]
    return out


def per_image_standardization(x) -> np.ndarray:
    """tf.image.per_image_standardization on rows of ``x`` (n, n_values): float32 (n, n_values)."""
    x = np.asarray(x, dtype=np.float64)
    std = np.maximum(x.std(axis=1, keepdims=True), 1.0 / np.sqrt(x.shape[1]))
    return ((x - x.mean(axis=1, keepdims=True)) / std).astype(np.float32)


def _check_images(images, size):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (n, C, H, W) as loaded, got {images.dtype} {images.shape}")
    if images.shape[2] < size or images.shape[3] < size:
        raise ValueError(f"crop size {size} is larger than the {images.shape[2]}x{images.shape[3]} images")
    return np.ascontiguousarray(images)


def random_crops(images, rng, size: int = CROP, flip: bool = True, out=None) -> np.ndarray:
    """Training view: a random ``size`` crop of each image, mirrored with probability 1/2 when
    ``flip``, standardised. images: uint8 (n, C, H, W) -> float32 (n, C*size*size) (into ``out``)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    images = _check_images(images, size)
    n, C, H, W = images.shape
    oy = rng.integers(0, H - size + 1, n)
    ox = rng.integers(0, W - size + 1, n)
    mirror = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    if out is None:
        out = np.empty((n, C * size * size), dtype=np.float32)
    crop_flip_standardize(images, oy, ox, mirror, size, out)
    return out


def center_crops(images, size: int = CROP) -> np.ndarray:
    """Test view: the centre ``size`` crop of each image, standardised: float32 (n, C*size*size)."""
    images = _check_images(images, size)
    n, C, H, W = images.shape
    oy = np.full(n, (H - size) // 2, dtype=np.int64)
    ox = np.full(n, (W - size) // 2, dtype=np.int64)
    out = np.empty((n, C * size * size), dtype=np.float32)
    crop_flip_standardize(images, oy, ox, np.zeros(n, dtype=bool), size, out)
    return out


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The crops' generator for one epoch: a function of (seed, epoch) only, and a different
    stream from the data order's (``sparsenn.train.epoch_permutation`` uses [seed, epoch])."""
    return np.random.default_rng([seed, epoch, 0xC409])


class EpochCrops:
    """Redraws the training crops in place at every epoch boundary.

    ``x_train``: the float32 (n, C*size*size) array the training loop gathers batches from
    (``ArrayData.x_train``); ``images``: the uint8 (n, C, H, W) originals. Use
    ``fill(epoch)`` before training (the epoch a run starts or resumes in), and pass the object
    as a ``fit`` callback: ``on_step_end`` refills at the end of each epoch for the next one.
    """

    def __init__(self, images, x_train, seed: int, steps_per_epoch: int, size: int = CROP, flip: bool = True):
        self.images = _check_images(images, size)
        n, C = self.images.shape[:2]
        if x_train.shape != (n, C * size * size) or x_train.dtype != np.float32:
            raise ValueError(f"x_train must be float32 ({n}, {C * size * size}), got {x_train.dtype} {x_train.shape}")
        self.x_train, self.seed, self.steps_per_epoch = x_train, int(seed), int(steps_per_epoch)
        self.size, self.flip = size, flip

    def fill(self, epoch: int) -> None:
        random_crops(self.images, epoch_rng(self.seed, epoch), self.size, self.flip, out=self.x_train)

    def on_step_end(self, step, model, optimizer) -> None:
        if step % self.steps_per_epoch == 0:
            self.fill(step // self.steps_per_epoch)
