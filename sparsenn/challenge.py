"""The Sparse DNN Graph Challenge (MIT/IEEE/Amazon, HPEC 2019): RadiX-Net inference.

The problem, as the challenge's reference code states it. A network of ``L`` layers of ``N``
neurons, each layer a RadiX-Net with 32 connections per neuron, every weight 1/16, and one bias
per neuron (-0.30, -0.35, -0.40, -0.45 for N = 1024, 4096, 16384, 65536). The input ``Y`` is a
60,000 x N binary matrix (one image per row). For each layer::

    Z = Y W                          (W: N x N, row i = neuron i's outgoing connections)
    Z[Z != 0] += bias                the bias only on the nonzero entries of Z
    Y = min(max(Z, 0), 32)           ReLU, then a cap at 32

The answer is the *categories*: the images whose final row of ``Y`` is not all zero. The rate
is ``images x nnz(all layers) / seconds`` edges per second (``60,000 x 32 N L / s``).

Layers are stored in sparsenn's orientation, ``(n_out, n_in)``: row ``j`` of a layer lists
the neurons that feed neuron ``j`` (the transpose of the challenge's ``W``, whose row ``i``
lists neuron ``i``'s outgoing connections). The official files are transposed as they are read.

The engine (:func:`infer`), and why it looks the way it does
-------------------------------------------------------------
Inference is a different problem from a training step: no backward pass, every image
independent, and most images die out layer by layer (their row becomes all zero). What is
left is not sparse: on our MNIST inputs the survivors saturate within about 20 layers to rows
with every neuron at the cap, 32 (of 6,000 images, 1,349 survive 120 layers of the 1024-neuron
network, all with 1,024 of 1,024 neurons active from layer 20 on). So the engine keeps each
image's row sparse *across images*, not within them:

* **Blocks of images, features-major** (``y: (N, width)``, one column per image, as the
  training kernels' activations): a thread takes a block of images and pushes it through every
  layer, ``z[j, :] = sum over inputs i of neuron j of W[j, i] * y[i, :]``. The inner loop runs
  along the images, over contiguous memory, in SIMD registers; each weight is read once per
  block instead of once per image.
* **Dead images stop costing anything**: after each layer the block's live columns are packed
  to the left and the width shrinks (padded to 16, one AVX-512 register), so the work of a
  layer is proportional to the images still alive. With the survivors' rows full, this does
  only about 16% more multiply-adds than a product that skips every zero (0.265 against 0.228
  of the nominal edges on 1024 x 120).
* **The epilogue is fused** into the layer: the bias where ``z != 0``, ReLU, the cap at 32, and
  a running maximum per column that says which images are still alive, in one pass over the
  row just computed.
* **Per-thread workspaces** (two ``N x block`` arrays): blocks are independent, so there is
  nothing to synchronise and no atomics.
* **float32** throughout, as the challenge's own implementations; the categories are checked
  against a float64 SciPy implementation in every run of ``examples/graph_challenge.py``, and
  any disagreement is explained from the values involved (so far: one image whose row sits
  near an unstable fixed point, where float32 rounding decides).

Measured on the 1024 x 120 network with all 60,000 inputs (2 cores): the blocked engine runs
at 1.2e11-1.3e11 edges/s; a sparse depth-first version (one image at a time, active neurons as a
list, scatter ``z[j] += y[i] w`` along each active neuron's connections) ran at 4.7e9 (on 6,000 images), because
the surviving rows are full and a scatter does not vectorise. :func:`infer_plain` keeps the
textbook loop, one image and one neuron at a time, as the reference a reader checks first.

Limits: all layers are held in memory (``8 x 32 N L`` bytes: 2 GB for 65,536 x 120), and each
block reads every layer's weights once (the 1024-neuron network's 31 MB fit in L3; larger ones
stream from memory, which the larger N's smaller blocks make the bottleneck). The rate counts
nominal edges, so it depends on how fast the inputs die out: it is a property of the problem
instance, as in the published results.

Inputs from MNIST (:func:`mnist_inputs`): the official inputs are not reachable here, so the
60,000 MNIST training images are resized to ``sqrt(N) x sqrt(N)`` by bilinear interpolation
(``scipy.ndimage.zoom``, order 1, ``grid_mode=True``, on intensities / 255) and set to 1 where
the result is >= 0.5. Official files (:func:`read_tsv_layer`, :func:`read_tsv_images`,
:func:`read_categories`, :func:`read_official`) are read when a directory holding them is given.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import scipy.sparse as sp
from numba import get_num_threads, njit, prange

YMAX = 32.0
BIAS = {1024: -0.30, 4096: -0.35, 16384: -0.40, 65536: -0.45}
SIZES = tuple(BIAS)
_F0 = np.float32(0.0)


class Network:
    """``L`` layers of ``N`` neurons, stored for the engine, in sparsenn's orientation.

    layers: ``L`` matrices ``(N, N)`` (anything ``scipy.sparse.csr_matrix`` takes), row ``j`` =
    the inputs of neuron ``j``. bias: a scalar, one value per layer, or ``(L, N)``.

    Attributes: indptr int64 ``(L, N+1)`` (offsets into the concatenated layers: layer ``l``'s
    row ``j`` is ``indptr[l, j] .. indptr[l, j+1]``), indices int32 ``(nnz,)``, data float32
    ``(nnz,)``, bias float32 ``(L, N)``, n_neurons, n_layers, nnz.
    """

    def __init__(self, layers, bias):
        layers = list(layers)
        if not layers:
            raise ValueError("a network needs at least one layer")
        n = layers[0].shape[0]
        nnz = np.zeros(len(layers) + 1, dtype=np.int64)
        for k, w in enumerate(layers):
            if w.shape != (n, n):
                raise ValueError(f"layer {k + 1} has shape {w.shape}, expected ({n}, {n})")
            nnz[k + 1] = w.nnz
        offsets = np.cumsum(nnz)
        self.n_neurons, self.n_layers, self.nnz = n, len(layers), int(offsets[-1])
        self.indptr = np.empty((len(layers), n + 1), dtype=np.int64)
        self.indices = np.empty(self.nnz, dtype=np.int32)
        self.data = np.empty(self.nnz, dtype=np.float32)
        for k, w in enumerate(layers):  # one layer at a time: no second copy of the network
            w = sp.csr_matrix(w)
            w.sort_indices()
            self.indptr[k] = w.indptr + offsets[k]
            self.indices[offsets[k]:offsets[k + 1]] = w.indices
            self.data[offsets[k]:offsets[k + 1]] = w.data
        bias = np.asarray(bias, dtype=np.float32)
        if bias.ndim == 1 and len(bias) == len(layers):
            bias = bias[:, None]
        if bias.ndim > 2 or (bias.ndim == 2 and bias.shape not in ((len(layers), n), (len(layers), 1))):
            raise ValueError(f"bias must be a scalar, one value per layer or (layers, neurons), got {bias.shape}")
        self.bias = np.ascontiguousarray(np.broadcast_to(bias, (len(layers), n)))

    def layer(self, k) -> sp.csr_matrix:
        """Layer ``k`` (0-based), ``(n_out, n_in)``, as a SciPy CSR matrix viewing the stored arrays."""
        lo, hi = self.indptr[k, 0], self.indptr[k, -1]
        return sp.csr_matrix((self.data[lo:hi], self.indices[lo:hi], self.indptr[k] - lo),
                             shape=(self.n_neurons, self.n_neurons))

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes + self.bias.nbytes


def check_size(n_neurons: int, n_layers: int) -> int:
    """Validate a challenge size; returns the RadiX-Net's radix-list length log2(N/16)."""
    if n_neurons not in BIAS:
        raise ValueError(f"--neurons must be one of the challenge's sizes {', '.join(map(str, SIZES))}, "
                         f"got {n_neurons}")
    depth = int(math.log2(n_neurons // 16))  # radix-2 lists of this length make N' = N / 16
    if n_layers < 1 or n_layers % depth:
        raise ValueError(f"--layers must be a positive multiple of {depth} for {n_neurons} neurons "
                         f"(each radix list of the RadiX-Net is {depth} layers), got {n_layers}")
    return depth


# bytes per connection while the network is built: the RadiX-Net's masks (int32 indices, and
# their values) and the packed Network (int32 index, float32 weight) alive at once. Measured:
# network(16384, 120), 62.9 million connections, peaked 1.08 GB over the interpreter's own
# (17.2 bytes each)
BUILD_BYTES_PER_CONNECTION = 18


def check_memory(n_neurons: int, n_layers: int) -> None:
    """Refuse a network that would not fit in the memory available (TopologyTooLarge, a
    ValueError, naming the estimate), before anything is built: 32 connections per neuron and
    layer, :data:`BUILD_BYTES_PER_CONNECTION` bytes each."""
    from sparsenn.topology import TopologyTooLarge, _fmt_bytes, available_memory

    connections = 32 * n_neurons * n_layers
    need, avail = BUILD_BYTES_PER_CONNECTION * connections, available_memory()
    if avail is not None and need > avail:
        raise TopologyTooLarge(f"the {n_neurons:,}-neuron, {n_layers:,}-layer network has {connections:,} connections "
                               f"and would need about {_fmt_bytes(need)} of memory to build ({_fmt_bytes(avail)} "
                               f"available); ask for fewer --layers")


def network(n_neurons: int, n_layers: int) -> Network:
    """The challenge's RadiX-Net: N' = N/16, radix-2 lists of length log2(N') repeated, B = 16
    everywhere (:func:`sparsenn.topology.radix_net`), every weight 1/16, the challenge's bias."""
    from sparsenn.topology import radix_net

    depth = check_size(n_neurons, n_layers)
    check_memory(n_neurons, n_layers)
    masks = radix_net([[2] * depth] * (n_layers // depth), B=[16] * (n_layers + 1), progress=False)
    layers = (sp.csr_matrix((np.full(m.nnz, 1 / 16, np.float32), m.indices, m.indptr), shape=m.shape)
              for m in masks)
    return Network(layers, BIAS[n_neurons])


def mnist_inputs(images: np.ndarray, n_neurons: int) -> sp.csr_matrix:
    """Binary ``(n_images, N)`` CSR float32 inputs made of images: each resized to
    ``sqrt(N) x sqrt(N)`` (bilinear, ``scipy.ndimage.zoom`` order 1, ``grid_mode=True``, on
    intensities / 255) and set to 1 where the result is >= 0.5. images: uint8 (n, h, w)."""
    from scipy import ndimage

    side = math.isqrt(n_neurons)
    if side * side != n_neurons:
        raise ValueError(f"neurons must be a perfect square to make images of them, got {n_neurons}")
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (n_images, height, width), got shape {images.shape}")
    rows = []
    chunk = max(1, (1 << 24) // (side * side))  # ~64 MB of float32 at a time
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].astype(np.float32) / 255.0
        big = ndimage.zoom(block, (1, side / block.shape[1], side / block.shape[2]), order=1,
                           grid_mode=True, mode="nearest")
        rows.append(sp.csr_matrix((big >= 0.5).reshape(len(block), -1).astype(np.float32)))
    return sp.vstack(rows, format="csr")


# ---------------------------------------------------------------------------------------------
# The textbook loop, and the engine
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def infer_plain(x, w_indptr, w_indices, w_data, bias, ymax):
    """The challenge as written, one image and one neuron at a time (the reference to read).

    x[n_images, N] dense float32 inputs; the layers as in :class:`Network`. Returns the final
    rows ``(n_images, N)``. Cost O(n_images x nnz): every connection of every image, even dead.
    """
    n_images, n = x.shape
    out = np.empty_like(x)
    y = np.empty(n, dtype=np.float32)
    z = np.empty(n, dtype=np.float32)
    for img in range(n_images):
        y[:] = x[img]
        for layer in range(w_indptr.shape[0]):
            for j in range(n):  # z[j] = sum over the inputs i of neuron j of W[j, i] y[i]
                s = np.float32(0.0)
                for k in range(w_indptr[layer, j], w_indptr[layer, j + 1]):
                    s += w_data[k] * y[w_indices[k]]
                if s != 0:  # the bias only where Z is nonzero
                    s += bias[layer, j]
                z[j] = min(max(s, np.float32(0.0)), ymax)  # ReLU, cap
            y[:] = z
        out[img] = y
    return out


@njit(fastmath=True, inline="always")
def _layer(indptr, indices, data, bias, ymax, y, z, width, live):
    """z[:, :width] = min(max(W y + bias where nonzero, 0), ymax) for one layer and one block.

    indptr[N+1] (global offsets), indices, data: the layer (row j = inputs of neuron j).
    y[N, >=width], z[N, >=width]: features-major blocks (z overwritten). live[width]: each
    column's running maximum (> 0: the image is alive). Cost O(nnz_layer x width).
    Four connections per pass over z[j]: one load and store of z[j, b] per four multiply-adds.
    """
    for j in range(len(indptr) - 1):
        zr = z[j]
        for b in range(width):
            zr[b] = _F0
        k, end = indptr[j], indptr[j + 1]
        while k + 4 <= end:
            w0, w1, w2, w3 = data[k], data[k + 1], data[k + 2], data[k + 3]
            y0, y1, y2, y3 = y[indices[k]], y[indices[k + 1]], y[indices[k + 2]], y[indices[k + 3]]
            for b in range(width):
                zr[b] += w0 * y0[b] + w1 * y1[b] + w2 * y2[b] + w3 * y3[b]
            k += 4
        while k < end:
            w0, y0 = data[k], y[indices[k]]
            for b in range(width):
                zr[b] += w0 * y0[b]
            k += 1
        bj = bias[j]
        for b in range(width):  # the fused epilogue
            s = zr[b]
            s = min(max(s + bj, _F0), ymax) if s != _F0 else _F0
            zr[b] = s
            live[b] = max(live[b], s)


@njit(parallel=True, fastmath=True, cache=True)
def _infer_blocks(x_indptr, x_indices, x_data, w_indptr, w_indices, w_data, bias, ymax, block,
                  row_sum, row_nnz, layers_run):
    """Push blocks of ``block`` images through every layer; write each image's final row sum
    and nonzero count, and per block the image-layers computed (the work done).

    x_indptr[n_images+1], x_indices, x_data: the inputs (CSR, images = rows).
    w_indptr[L, N+1], w_indices, w_data, bias[L, N]: the network (:class:`Network`).
    row_sum[n_images], row_nnz[n_images], layers_run[n_blocks]: overwritten.
    Each block is one prange iteration with its own workspace: no sharing, no atomics.
    """
    n_images = len(x_indptr) - 1
    n_layers, n = w_indptr.shape[0], w_indptr.shape[1] - 1
    for blk in prange((n_images + block - 1) // block):
        start = blk * block
        width = min(n_images, start + block) - start  # live images in the block
        ids = np.arange(start, start + width)  # column c holds image ids[c]
        cap = (width + 15) // 16 * 16
        y = np.zeros((n, cap), dtype=np.float32)
        z = np.zeros((n, cap), dtype=np.float32)
        live = np.empty(cap, dtype=np.float32)
        kept = np.empty(cap, dtype=np.int64)
        for c in range(width):
            for p in range(x_indptr[start + c], x_indptr[start + c + 1]):
                y[x_indices[p], c] = x_data[p]
        padded = cap  # width rounded up to a whole SIMD register; the padding stays zero
        work = 0
        for layer in range(n_layers):
            if width == 0:
                break
            live[:padded] = _F0
            _layer(w_indptr[layer], w_indices, w_data, bias[layer], ymax, y, z, padded, live)
            y, z = z, y
            work += width
            alive = 0
            for c in range(width):
                if live[c] > _F0:
                    kept[alive] = c
                    alive += 1
            if alive < width:  # pack the live columns to the left: dead images cost nothing more
                for j in range(n):
                    r = y[j]
                    for t in range(alive):
                        r[t] = r[kept[t]]
                    for t in range(alive, padded):
                        r[t] = _F0
                for t in range(alive):
                    ids[t] = ids[kept[t]]
                width = alive
                padded = (alive + 15) // 16 * 16
        layers_run[blk] = work
        for c in range(width):
            s = 0.0
            cnt = 0
            for j in range(n):
                if y[j, c] != _F0:
                    s += y[j, c]
                    cnt += 1
            row_sum[ids[c]] = s
            row_nnz[ids[c]] = cnt


def default_block(n_neurons: int) -> int:
    """Images per block: 2048 up to N = 16384, 1024 for 65536, so that a thread's two
    ``N x block`` float32 workspaces stay at 2 x 256 MB at most. Larger blocks read each layer
    once for more images (the 65,536-neuron network's 2 GB of weights stream from memory once
    per block) and pack dead images away in larger groups."""
    return max(16, min(2048, (1 << 26) // n_neurons // 16 * 16))


def infer(net: Network, x, block: int | None = None):
    """The challenge's inference of ``x`` (``(n_images, N)``, CSR or dense; binary float32 for
    the challenge) through ``net``. Returns a dict: ``categories`` (int64, 0-based indices of
    the images whose final row is nonzero), ``row_sum`` (float64) and ``row_nnz`` (int64) of
    each final row, and ``work`` (image-layers computed; ``n_images x L`` if none died)."""
    x = sp.csr_matrix(x, dtype=np.float32)
    if x.shape[1] != net.n_neurons:
        raise ValueError(f"inputs have {x.shape[1]} columns, the network has {net.n_neurons} neurons")
    block = block or default_block(net.n_neurons)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n = x.shape[0]
    row_sum, row_nnz = np.zeros(n), np.zeros(n, dtype=np.int64)
    work = np.zeros(max(1, -(-n // block)), dtype=np.int64)
    _infer_blocks(x.indptr.astype(np.int64), x.indices.astype(np.int32), x.data, net.indptr, net.indices,
                  net.data, net.bias, np.float32(YMAX), block, row_sum, row_nnz, work)
    return {"categories": np.flatnonzero(row_nnz), "row_sum": row_sum, "row_nnz": row_nnz,
            "work": int(work.sum())}


# ---------------------------------------------------------------------------------------------
# SciPy: the independent check (float64) and a peer (float32)
# ---------------------------------------------------------------------------------------------


def scipy_layers(net: Network, dtype=np.float64) -> list:
    """The challenge's ``W`` of each layer (source = row, ``Y @ W``) as SciPy CSR of ``dtype``."""
    return [net.layer(k).T.tocsr().astype(dtype) for k in range(net.n_layers)]


def infer_scipy(layers, bias, x, dtype=np.float64, progress=None):
    """The reference semantics in SciPy: per layer ``Z = Y @ W``, the bias on Z's nonzero
    values, ReLU, cap at 32. layers: the challenge's W's (:func:`scipy_layers`); bias (L, N).
    ``progress(k)`` is called after layer k. Returns ``(categories, row_sum)``."""
    y = sp.csr_matrix(x, dtype=dtype)
    for k, w in enumerate(layers):
        z = y @ w
        z.eliminate_zeros()  # the bias goes on the nonzero values only (Matlab: logical(Z))
        z.data += bias[k].astype(dtype)[z.indices]
        np.clip(z.data, 0, YMAX, out=z.data)
        z.eliminate_zeros()
        y = z
        if progress is not None:
            progress(k + 1)
    return np.flatnonzero(np.diff(y.indptr)), np.asarray(y.sum(axis=1), dtype=np.float64).ravel()


def compare(categories, row_sum, truth, truth_sum=None, tol: float = 1e-3) -> dict:
    """Compare categories (and final row sums, when both are given) with the truth.

    Returns ``match`` (bool), ``missing`` / ``extra`` (indices), ``sum_mismatch`` (indices of
    images in both whose row sums differ by more than ``tol`` relative)."""
    categories, truth = np.asarray(categories), np.asarray(truth)
    out = {"match": bool(np.array_equal(categories, truth)),
           "missing": np.setdiff1d(truth, categories).tolist(), "extra": np.setdiff1d(categories, truth).tolist(),
           "sum_mismatch": []}
    if truth_sum is not None and row_sum is not None:
        both = np.intersect1d(categories, truth)
        a, b = np.asarray(row_sum)[both], np.asarray(truth_sum)[both]
        out["sum_mismatch"] = both[np.abs(a - b) > tol * np.maximum(1.0, np.abs(b))].tolist()
    return out


# ---------------------------------------------------------------------------------------------
# The official files
# ---------------------------------------------------------------------------------------------


def _read_triples(path, what: str, shape):
    """1-based "row col value" lines -> 0-based (rows, cols, values), checked against shape."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        a = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
    except ValueError as e:
        raise ValueError(f"{path}: not a {what} of 'row col value' lines ({e})") from None
    if a.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if a.shape[1] != 3:
        raise ValueError(f"{path}: expected 3 columns (row col value), got {a.shape[1]}")
    rc = a[:, :2]
    bad = np.flatnonzero(np.any(rc != np.round(rc), axis=1))
    if len(bad):
        raise ValueError(f"{path}, line {bad[0] + 1}: row and column must be integers, got {a[bad[0], 0]:g} {a[bad[0], 1]:g}")
    rows, cols = rc[:, 0].astype(np.int64) - 1, rc[:, 1].astype(np.int64) - 1
    for idx, limit, name in ((rows, shape[0], "row"), (cols, shape[1], "column")):
        bad = np.flatnonzero((idx < 0) | (idx >= limit))
        if len(bad):
            raise ValueError(f"{path}, line {bad[0] + 1}: {name} {idx[bad[0]] + 1} is out of range 1..{limit}")
    return rows, cols, a[:, 2].astype(np.float32)


def read_tsv_layer(path, n_neurons: int) -> sp.csr_matrix:
    """One official layer file (``n{N}-l{k}.tsv``: 1-based "row col value" of the challenge's
    W, row = source neuron) as an ``(N, N)`` CSR in sparsenn's orientation (row = target)."""
    rows, cols, vals = _read_triples(path, "layer file", (n_neurons, n_neurons))
    w = sp.csr_matrix((vals, (cols, rows)), shape=(n_neurons, n_neurons))  # transposed on read
    w.sum_duplicates()
    return w


def read_tsv_images(path, n_neurons: int, n_images: int = 60000) -> sp.csr_matrix:
    """The official input file (``sparse-images-{N}.tsv``) as ``(n_images, N)`` CSR float32."""
    rows, cols, vals = _read_triples(path, "sparse image file", (n_images, n_neurons))
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_images, n_neurons))


def read_categories(path) -> np.ndarray:
    """The official truth file (``neuron{N}-l{L}-categories.tsv``, 1-based) as 0-based int64."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"categories file not found: {path}")
    try:
        with warnings.catch_warnings():  # an empty file is no category at all, not a warning
            warnings.simplefilter("ignore", UserWarning)
            c = np.loadtxt(path, dtype=np.float64, ndmin=1, comments=None)
    except ValueError as e:
        raise ValueError(f"{path}: not a categories file of one 1-based image index per line ({e})") from None
    if c.ndim != 1 or np.any(c != np.round(c)) or (c.size and c.min() < 1):
        raise ValueError(f"{path}: not a categories file of one 1-based image index per line")
    return np.sort(c.astype(np.int64) - 1)


def official_paths(directory, n_neurons: int, n_layers: int) -> dict:
    """Where the official files of a size would be under ``directory`` (the challenge's layout:
    ``neuron{N}/n{N}-l{k}.tsv``, ``sparse-images-{N}.tsv``, ``neuron{N}-l{L}-categories.tsv``)."""
    return {"layers": [os.path.join(directory, f"neuron{n_neurons}", f"n{n_neurons}-l{k}.tsv")
                       for k in range(1, n_layers + 1)],
            "images": os.path.join(directory, f"sparse-images-{n_neurons}.tsv"),
            "categories": os.path.join(directory, f"neuron{n_neurons}-l{n_layers}-categories.tsv")}


def read_official(directory, n_neurons: int, n_layers: int, progress=None):
    """The official network, inputs and truth from ``directory``. Returns ``(net, x, truth)``;
    truth is None when the categories file is absent. Every layer file must be there: a missing
    one is an error naming it and how many layers were found."""
    paths = official_paths(directory, n_neurons, n_layers)
    missing = [p for p in paths["layers"] if not os.path.exists(p)]
    if missing:
        found = n_layers - len(missing)
        raise FileNotFoundError(f"{directory}: {found} of the {n_layers} layer files of the {n_neurons}-neuron "
                                f"network are there; the first missing is {missing[0]}")

    def layers():
        for k, p in enumerate(paths["layers"]):
            yield read_tsv_layer(p, n_neurons)
            if progress is not None:
                progress(k + 1)

    net = Network(layers(), BIAS[n_neurons])
    x = read_tsv_images(paths["images"], n_neurons)
    truth = read_categories(paths["categories"]) if os.path.exists(paths["categories"]) else None
    return net, x, truth
