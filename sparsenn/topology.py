"""Sparse topologies: RadiX-Nets, their random equivalents, X-Net expanders, and a describer.

Every function here returns a list of boolean ``scipy.sparse.csr_matrix`` masks in sparsenn's
orientation: mask ``i`` has shape ``(n_out, n_in)`` (row = output neuron, column = input
neuron), so a stack ``masks`` maps ``widths[0] -> widths[1] -> ... -> widths[L]`` with
``masks[i].shape == (widths[i + 1], widths[i])``. The RadiX-Net papers write the transpose
(row = source neuron); the docstrings say where that matters.

Everything is built straight into CSR arrays with vectorised NumPy in O(nnz) memory: no dense
``n_out x n_in`` array is ever formed, so the 65536-neuron RadiX-Nets generate in seconds.

RadiX-Nets (Robinett & Kepner 2018, 2019)
-----------------------------------------
A *mixed radix* ``N = (N_1, ..., N_L)`` with ``N' = N_1 * ... * N_L`` and place values
``nu_1 = 1``, ``nu_i = N_1 * ... * N_{i-1}`` gives ``L`` weight layers between ``L + 1`` node
layers of ``N'`` nodes. In the papers' orientation weight layer ``i`` joins node ``j`` of layer
``i - 1`` to the nodes ``(j - n * nu_i) mod N'`` of layer ``i`` for ``n = 0 .. N_i - 1``.
That minus sign is the convention of the authors' code, which generated the Sparse DNN Graph
Challenge files; the other sign gives an isomorphic graph (relabel ``j -> -j``) but different
files. In sparsenn's orientation it reads: output ``r`` is fed by the inputs
``(r + n * nu_i) mod N'``. Each layer is ``N_i``-regular (every row and column holds ``N_i``
ones, sparsity ``1 - N_i / N'``), and the product of the ``L`` layers is all-ones: exactly one
path joins every input to every output (read ``r + sum_i n_i nu_i`` as a mixed-radix number).

An *extended* mixed radix is a list of ``M`` radix lists: every list but the last has product
``N'``, the last one's product ``p`` divides ``N'``; the layers are concatenated and place values
restart at 1 in each list. Paths per input/output pair: 1 for ``M = 1``, ``N'^(M-2) * p`` for
``M >= 2``. The *Kronecker step* with widths ``B = (B_1, ..., B_{L+1})`` widens node layer ``i``
to ``B_i * N'`` neurons (neuron ``(b, j)`` has index ``b * N' + j``) and replaces weight layer
``i`` by ``kron(ones(B_i, B_{i+1}), W_i)`` (papers' orientation); densities are unchanged and
paths per pair multiply by ``B_2 * ... * B_L``.

The Sparse DNN Graph Challenge (MIT/IEEE/Amazon 2019) networks are such RadiX-Nets: the
1024-neuron, 120-layer one is ``radix_net([[2] * 6] * 20, B=[16] * 121)``.

Random and expander topologies
------------------------------
:func:`random_sparse` (each connection independently present: Bernoulli), :func:`xnet` (exact
in-degree, every input used, after Prabhu et al.'s X-Nets), and :func:`random_equivalent`
(a random stack with the same per-layer densities as a given one). Every random choice takes an
explicit ``numpy.random.Generator``.

Size limits
-----------
Before allocating anything, every generator estimates the memory of what it is asked to build
(bytes per connection and per neuron, plus the temporaries its algorithm creates; see
:func:`_check_fits`) and raises :class:`TopologyTooLarge`, a ValueError, when that exceeds
:func:`available_memory` or a layer exceeds sparsenn's int32 CSR indices. Builds that run
longer than ``PROGRESS_DELAY_S`` seconds show a per-layer progress bar on stderr.

Run ``python -m sparsenn.topology --help`` for the command line.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from numbers import Integral
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

# Largest intermediate input->output path matrix (rows x inputs) that describe() will hold.
# An int64 sparse product costs about 12 bytes per stored entry plus SciPy's temporaries, so
# 2**24 entries keeps path counting under ~0.5 GB; the 1024-neuron Graph Challenge network
# (2**20) fits, a 65536-neuron stack (2**32) does not and gets a note instead.
MAX_PATH_ENTRIES = 2**24

# Most work exact path counting may take, in word additions (see path_stats for the model).
# 2**33 is about 10 s on one core: the 60000-layer RadiX-Net 2x6 repeated 10^4 times is counted,
# the 600000-layer one (path counts of 600000 bits) is skipped with a note instead.
MAX_PATH_WORK = 2**33

# Builds and descriptions that run longer than this many seconds show a per-layer progress bar
# on stderr (tqdm's `delay`); quicker ones print nothing.
PROGRESS_DELAY_S = 1.0

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_LIMB_BITS = 31  # multi-limb fallback base 2**31: deg * 2**31 + carry stays < 2**63 for deg < 2**31


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int after checking ``low <= value (<= high)``; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def _as_mask(m, name: str) -> sp.csr_matrix:
    """Any dense array or scipy.sparse matrix -> canonical boolean CSR (nonzero = connection).

    A ``csr_matrix`` that already is one (as every generator here returns) comes back as is,
    not copied: describing a stack must not double its memory.
    """
    if sp.issparse(m):
        if (isinstance(m, sp.csr_matrix) and m.dtype == bool and m.has_canonical_format
                and m.data.all()):
            return m
        m = sp.csr_matrix(m)
    else:
        arr = np.asarray(m)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_out, n_in), got shape {arr.shape}")
        m = sp.csr_matrix(arr)
    m = m.astype(bool)
    m.eliminate_zeros()
    m.sum_duplicates()
    m.sort_indices()
    return m


def _check_stack(masks, what: str = "masks") -> list:
    """Canonical boolean CSR masks whose shapes chain: masks[i+1].shape[1] == masks[i].shape[0]."""
    if isinstance(masks, (str, bytes)) or not hasattr(masks, "__len__") or len(masks) == 0:
        raise ValueError(f"{what} must be a non-empty list of (n_out, n_in) masks")
    out = [_as_mask(m, f"{what}[{i}]") for i, m in enumerate(masks)]
    for i in range(1, len(out)):
        if out[i].shape[1] != out[i - 1].shape[0]:
            raise ValueError(
                f"{what}[{i}] has n_in = {out[i].shape[1]} but {what}[{i - 1}] has "
                f"n_out = {out[i - 1].shape[0]}: consecutive layers must chain"
            )
    return out


def _csr(indptr, indices, shape) -> sp.csr_matrix:
    """Boolean CSR from canonical arrays, int32 indices as sparsenn.csr expects."""
    if len(indices) > _INT32_MAX or max(shape) > _INT32_MAX:
        raise TopologyTooLarge(
            f"a layer of shape {shape} with {len(indices)} connections does not fit "
            "sparsenn's int32 CSR indices (at most 2**31 - 1)"
        )
    indptr = np.asarray(indptr, dtype=np.int32)
    indices = np.asarray(indices, dtype=np.int32)
    m = sp.csr_matrix((np.ones(len(indices), dtype=bool), indices, indptr), shape=shape)
    m.has_sorted_indices = True  # built sorted and unique; spares SciPy a re-check
    return m


# --------------------------------------------------------------------------------------------
# size limits: estimate the memory of a build and refuse it before allocating anything
# --------------------------------------------------------------------------------------------

# What a build costs, in bytes. Measured with tracemalloc (NumPy 2.4, SciPy 1.17) and rounded up.
_MASK_BYTES_PER_NNZ = 5  # a finished mask keeps int32 indices + bool data per connection,
_MASK_BYTES_PER_ROW = 4  # one int32 indptr entry per output neuron,
_MASK_OVERHEAD = 2048  # and ~2 KB of Python/SciPy objects: it counts in 10^5-layer stacks.
_DRAW_BYTES_PER_NNZ = 40  # random draws: int64 rows, values, keys and sort buffers per connection
_XNET_BYTES_PER_NNZ = 80  # xnet: the same plus the deal's seeds and the final lexsort
_DRAW_BYTES_PER_NEURON = 40  # int64 row counts, sizes, permutations, indptr
_DENSE_BYTES_PER_ENTRY = 32  # rows over half full are drawn as complements (see _random_subsets)


class TopologyTooLarge(ValueError):
    """A requested topology does not fit sparsenn's int32 CSR indices or the available memory."""


class _LayerCost(NamedTuple):
    """What building one ``(n_out, n_in)`` mask with ``nnz`` connections costs, in bytes:
    ``kept`` stays allocated in the finished mask, ``extra`` is freed once the mask is built."""

    n_out: int
    n_in: int
    nnz: int
    kept: int
    extra: int


def available_memory() -> int | None:
    """Bytes that new allocations can use now, or None when the system does not say.

    Linux: ``MemAvailable`` from /proc/meminfo (free memory plus reclaimable caches); elsewhere
    the free physical pages from ``os.sysconf``. A cgroup memory limit (a container), when set,
    caps the result, since the kernel kills the process at that limit before NumPy can raise
    MemoryError. Tests monkeypatch this function to pretend the machine is small.
    """
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            pass
    for limit_file, usage_file in (  # cgroup v2, then v1; "max" or a huge number: no limit
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
         "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as f, open(usage_file) as g:
                room = int(f.read()) - int(g.read())
        except (OSError, ValueError):
            continue
        avail = room if avail is None else min(avail, room)
        break
    return avail


def _fmt_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; binary units up to PiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def _mask_bytes(n_out: int, nnz: int) -> int:
    """Bytes a finished boolean CSR mask keeps: ``5 nnz + 4 (n_out + 1) + 2 KiB``."""
    return _MASK_BYTES_PER_NNZ * nnz + _MASK_BYTES_PER_ROW * (n_out + 1) + _MASK_OVERHEAD


def _radix_cost(n_prime: int, radix: int, b_in: int, b_out: int) -> _LayerCost:
    """Cost of :func:`_radix_layer`: besides the mask it holds ``base`` (N' x radix, int64), the
    Kronecker block ``block_rows`` (N' x b_in x radix) in int64 and in int32, and an int64 indptr:
    ``extra = 8 N' (1 + radix) + 12 N' b_in radix + 8 (n_out + 1)``."""
    n_out, n_in = b_out * n_prime, b_in * n_prime
    nnz = n_out * b_in * radix
    extra = 8 * n_prime * (1 + radix) + 12 * n_prime * b_in * radix + 8 * (n_out + 1)
    return _LayerCost(n_out, n_in, nnz, _mask_bytes(n_out, nnz), extra)


def _drawn_cost(n_out: int, n_in: int, nnz: int, dense_rows: bool, per_nnz: int) -> _LayerCost:
    """Cost of a mask drawn row by row with :func:`_random_subsets`:
    ``extra = per_nnz * nnz + 40 (n_out + n_in) [+ 32 n_out n_in when dense_rows]``.

    ``per_nnz`` is 40 bytes for Bernoulli and fixed fan-in draws, 80 for :func:`xnet`. Rows that
    take more than half of their inputs (``dense_rows``) draw the inputs they leave out and lay
    out all ``n_in`` candidates, 32 bytes each, to strike those.
    """
    extra = per_nnz * nnz + _DRAW_BYTES_PER_NEURON * (n_out + n_in)
    if dense_rows:
        extra += _DENSE_BYTES_PER_ENTRY * n_out * n_in
    return _LayerCost(n_out, n_in, nnz, _mask_bytes(n_out, nnz), extra)


def _bernoulli_cost(n_out: int, n_in: int, density: float) -> _LayerCost:
    """:func:`_drawn_cost` of :func:`random_sparse` at its expected nnz. Binomial row counts
    straddle ``n_in / 2`` well below density 1/2, so from density 0.4 up all rows count as dense."""
    nnz = math.ceil(density * n_out * n_in)
    return _drawn_cost(n_out, n_in, nnz, density > 0.4, _DRAW_BYTES_PER_NNZ)


def _check_fits(what: str, costs: list, smaller: str) -> None:
    """Refuse a build that int32 CSR indices or the available memory cannot hold, before it starts.

    ``costs``: one :class:`_LayerCost` per mask to build. The estimate assumes every finished
    mask stays alive while the most demanding one is drawn:
    ``need = sum(kept) + max(extra)`` bytes, compared with :func:`available_memory`.
    Raises :class:`TopologyTooLarge` (a ValueError) naming the estimate, the memory available,
    and ``smaller``: how to ask for less.
    """
    need = sum(c.kept for c in costs) + max(c.extra for c in costs)
    avail = available_memory()
    memory = (f"about {_fmt_bytes(need)} of memory ("
              + ("unknown" if avail is None else _fmt_bytes(avail)) + " available)")
    for i, c in enumerate(costs):
        if max(c.n_out, c.n_in, c.nnz) > _INT32_MAX:
            raise TopologyTooLarge(
                f"{what}: layer {i} would be {c.n_out:,} x {c.n_in:,} with {c.nnz:,} connections, "
                f"more than sparsenn's int32 CSR indices allow (2**31 - 1); building it would "
                f"need {memory}; {smaller}"
            )
    if avail is not None and need > avail:
        nnz = sum(c.nnz for c in costs)
        layers = "1 layer" if len(costs) == 1 else f"{len(costs):,} layers"
        raise TopologyTooLarge(
            f"{what}: {layers} with {nnz:,} connections would need {memory}; {smaller}"
        )


def _progress(desc: str, enabled: bool, items=None, total: int | None = None):
    """A per-layer progress bar on stderr that appears only after ``PROGRESS_DELAY_S`` seconds:
    iterate over it (``items``), or call ``.update()`` once per layer (``total``)."""
    return tqdm(items, total=total, desc=desc, unit="layer", file=sys.stderr,
                delay=PROGRESS_DELAY_S, disable=not enabled, mininterval=0.5)


# --------------------------------------------------------------------------------------------
# RadiX-Nets
# --------------------------------------------------------------------------------------------


def _check_radix_lists(radix_lists) -> list:
    """Validate an (extended) mixed radix; returns it as a list of lists of ints."""
    if isinstance(radix_lists, (str, bytes)) or not hasattr(radix_lists, "__len__"):
        raise ValueError(f"radix_lists must be a list of radix lists, got {radix_lists!r}")
    if len(radix_lists) == 0:
        raise ValueError(
            "radix_lists must be non-empty: give at least one radix list, e.g. [[2, 2, 2]]"
        )
    # A flat list of ints is one mixed radix: radix_net([10, 10]) == radix_net([[10, 10]]).
    if all(isinstance(x, Integral) and not isinstance(x, bool) for x in radix_lists):
        radix_lists = [radix_lists]
    lists = []
    for k, radices in enumerate(radix_lists):
        if isinstance(radices, (str, bytes)) or not hasattr(radices, "__len__"):
            raise ValueError(f"radix list {k} must be a list of integers, got {radices!r}")
        if len(radices) == 0:
            raise ValueError(f"radix list {k} is empty: every radix list needs at least one radix")
        lists.append([_check_int(r, f"radix {i} of list {k}", 1) for i, r in enumerate(radices)])
    n_prime = math.prod(lists[0])
    for k, radices in enumerate(lists[1:-1], start=1):
        if math.prod(radices) != n_prime:
            raise ValueError(
                f"radix list {k} {radices} has product {math.prod(radices)}, but every list "
                f"except the last must have product N' = {n_prime} (the product of list 0)"
            )
    if len(lists) > 1 and n_prime % math.prod(lists[-1]) != 0:
        raise ValueError(
            f"the last radix list {lists[-1]} has product {math.prod(lists[-1])}, "
            f"which must divide N' = {n_prime}"
        )
    return lists


def _radix_layer(n_prime: int, radix: int, place: int, b_in: int, b_out: int) -> sp.csr_matrix:
    """One Kronecker-widened RadiX layer, shape ``(b_out * N', b_in * N')``, in O(nnz).

    Row ``(b', r)`` (index ``b' * N' + r``) holds the columns ``b * N' + (r + n * place) mod N'``
    for ``b < b_in``, ``n < radix``: ``b_in * radix`` entries per row. The ``radix`` offsets are
    distinct mod ``N'`` because ``radix * place`` divides ``N'``.
    """
    r = np.arange(n_prime, dtype=np.int64)
    base = (r[:, None] + place * np.arange(radix, dtype=np.int64)[None, :]) % n_prime  # (N', radix)
    base.sort(axis=1)  # the wrap-around breaks the order; sorting a short row is cheap
    blocks = n_prime * np.arange(b_in, dtype=np.int64)  # (b_in,) first column of each input block
    # Row r of one output block: the blocks in increasing order, each holding base[r] (sorted).
    block_rows = (base[:, None, :] + blocks[None, :, None]).astype(np.int32)  # (N', b_in, radix)
    indices = np.tile(block_rows.reshape(-1), b_out)  # every output block repeats the pattern
    degree = b_in * radix
    indptr = degree * np.arange(b_out * n_prime + 1, dtype=np.int64)
    return _csr(indptr, indices, (b_out * n_prime, b_in * n_prime))


def radix_net(radix_lists, B=None, *, progress: bool = True) -> list:
    """A RadiX-Net as a list of boolean ``(n_out, n_in)`` CSR masks.

    ``radix_lists``: an extended mixed radix, a list of ``M >= 1`` lists of integers >= 1
    (a single flat list of ints is taken as ``M = 1``); every list but the last must have the
    product ``N'`` of the first list, and the last list's product must divide ``N'``.
    ``B``: ``L + 1`` positive widths, ``L`` = total number of radices (default all ones);
    node layer ``i`` has ``B[i] * N'`` neurons, neuron ``(b, j)`` at index ``b * N' + j``.

    Mask ``i`` (the ``i``-th radix ``N_i`` overall, place value ``nu_i`` within its own list) has
    shape ``(B[i+1] * N', B[i] * N')``; output ``(b', r)`` is fed by the inputs
    ``(b, (r + n * nu_i) mod N')`` for all ``b < B[i]``, ``n < N_i``. That is the transpose of the
    papers' ``kron(ones(B_i, B_{i+1}), W_i)`` with ``W_i[j, (j - n nu_i) mod N'] = 1`` (row =
    source), the sign convention of the authors' code and the Graph Challenge files.

    Properties: every row of mask ``i`` holds ``B[i] * N_i`` ones and every column
    ``B[i+1] * N_i``; density ``N_i / N'``; every input reaches every output by the same number
    of paths, ``B[1] * ... * B[L-1]`` times 1 (``M = 1``) or ``N'^(M-2) * p`` (``M >= 2``).
    Cost: O(total nnz) time and memory.

    Too large: before building anything, raises :class:`TopologyTooLarge` (a ValueError) when a
    layer exceeds int32 CSR indices or the estimated memory, ``sum over layers of
    (5 nnz + 4 n_out + 2 KiB)`` kept plus the biggest layer's temporaries ``8 N' (1 + N_i) +
    12 N' B[i] N_i + 8 n_out`` (see :func:`_radix_cost`), exceeds :func:`available_memory`.
    ``progress``: show a per-layer bar on stderr when the build takes over ``PROGRESS_DELAY_S``.
    """
    lists = _check_radix_lists(radix_lists)
    n_prime = math.prod(lists[0])
    n_layers = sum(len(radices) for radices in lists)
    if B is None:
        B = [1] * (n_layers + 1)
    if isinstance(B, (str, bytes)) or not hasattr(B, "__len__"):
        raise ValueError(f"B must be a list of {n_layers + 1} positive integers, got {B!r}")
    if len(B) != n_layers + 1:
        raise ValueError(
            f"B must have L + 1 = {n_layers + 1} entries (one per node layer, L = {n_layers} "
            f"radices in total), got {len(B)}"
        )
    B = [_check_int(b, f"B[{i}]", 1) for i, b in enumerate(B)]
    radices_flat = [r for radices in lists for r in radices]
    costs = [_radix_cost(n_prime, radix, B[i], B[i + 1]) for i, radix in enumerate(radices_flat)]
    _check_fits(f"RadiX-Net with N' = {n_prime:,}", costs,
                "use fewer or smaller radices, fewer radix lists, or a smaller B")
    masks = []
    i = 0
    with _progress("radix_net", progress, total=n_layers) as bar:
        for radices in lists:
            place = 1  # place values restart at 1 in every list
            for radix in radices:
                masks.append(_radix_layer(n_prime, radix, place, B[i], B[i + 1]))
                place *= radix
                i += 1
                bar.update()
    return masks


def trim(masks, widths) -> list:
    """Keep the first ``widths[k]`` neurons of every node layer ``k``.

    ``masks``: a chained stack, ``masks[i]: (n_{i+1}, n_i)``; ``widths``: ``len(masks) + 1``
    integers with ``1 <= widths[k] <= n_k``. Returns ``masks[i][:widths[i+1], :widths[i]]``.

    Trimming a RadiX-Net breaks its exact regularity: rows that lose inputs have a smaller
    in-degree (columns that lose outputs a smaller out-degree), and trimming an *interior* layer
    removes paths unevenly, so path counts stop being equal. (Trimming only the input and
    output layers deletes whole columns/rows of the path matrix, so the surviving pairs keep
    their equal counts.) :func:`describe` shows both: min != max degrees, and path min != max.
    Raises :class:`TopologyTooLarge` when the trimmed masks, ``5 nnz + 4 n_out + 2 KiB`` bytes
    each (nnz of the untrimmed layer, an upper bound), exceed :func:`available_memory`.
    """
    masks = _check_stack(masks)
    sizes = [masks[0].shape[1]] + [m.shape[0] for m in masks]
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__"):
        raise ValueError(f"widths must be a list of {len(sizes)} integers, got {widths!r}")
    if len(widths) != len(sizes):
        raise ValueError(
            f"widths must have {len(sizes)} entries (one per node layer of a {len(masks)}-layer "
            f"stack), got {len(widths)}"
        )
    widths = [_check_int(w, f"widths[{k}]", 1, sizes[k]) for k, w in enumerate(widths)]
    # A trimmed layer keeps at most the connections it had; SciPy slices straight into new arrays.
    costs = [_LayerCost(widths[i + 1], widths[i], m.nnz, _mask_bytes(widths[i + 1], m.nnz), 0)
             for i, m in enumerate(masks)]
    _check_fits("trimmed stack", costs, "trim to smaller widths or trim a smaller stack")
    return [sp.csr_matrix(m[: widths[i + 1], : widths[i]]) for i, m in enumerate(masks)]


def lenet300_radix() -> list:
    """RadiX-Net fitted to LeNet-300-100 (784-300-100), as in Robinett & Kepner 2019.

    ``radix_net([[10, 10]], B=[8, 3, 1])`` is 800-300-100 at 90% sparsity (one path per B-copy:
    3 paths per pair); the last 16 input neurons are dropped to get 784 inputs. Returns masks
    of shapes ``(300, 784)`` and ``(100, 300)``; the dense 100 -> 10 logits layer is the
    model's, not part of this list. Dropping inputs leaves in-degrees of 70..80 in layer 1.
    """
    return trim(radix_net([[10, 10]], B=[8, 3, 1]), [784, 300, 100])


def lenet300_radix_wide() -> list:
    """The 10x wider RadiX LeNet: ``radix_net([[10, 10]], B=[8, 30, 1])`` trimmed to 784-3000-100.

    Masks ``(3000, 784)`` and ``(100, 3000)`` at 90% sparsity: 265,200 connections, the same
    number as the dense LeNet-300-100 weight layers (784*300 + 300*100 = 265,200; the 100 -> 10
    logits layer, dense in both, is added by the model).
    """
    return trim(radix_net([[10, 10]], B=[8, 30, 1]), [784, 3000, 100])


PRESETS = {"radix": lenet300_radix, "radix-wide": lenet300_radix_wide}


# --------------------------------------------------------------------------------------------
# random topologies
# --------------------------------------------------------------------------------------------


def _reject_subsets(sizes, counts, rng):
    """Row ``r``: a uniform random ``counts[r]``-subset of ``range(sizes[r])``; counts <= sizes/2.

    Returns ``(keys, stride)``: the sorted keys ``r * stride + value`` (int64, ``sum(counts)``)
    and ``stride = max(sizes)``. Each round draws, per row, as many values as the row still
    lacks and keeps the new distinct ones. The procedure commutes with every relabelling of
    ``range(size)``, so the final set is uniform over subsets; with ``counts <= sizes / 2`` at
    least half of the draws succeed, so the deficit shrinks geometrically (about log2(max
    count) rounds).
    Cost O(nnz log nnz) time, O(nnz) memory.
    """
    n_rows = len(counts)
    stride = max(int(sizes.max()), 1) if n_rows else 1
    keys = np.empty(0, dtype=np.int64)
    deficit = counts.astype(np.int64)
    while True:
        need = np.flatnonzero(deficit)
        if need.size == 0:
            return keys, stride
        rows = np.repeat(need, deficit[need])
        cand = np.sort(rows * stride + rng.integers(0, sizes[rows]))
        cand = cand[np.concatenate(([True], cand[1:] != cand[:-1]))]  # sort-based unique: fast
        if keys.size:
            pos = np.minimum(np.searchsorted(keys, cand), keys.size - 1)
            cand = cand[keys[pos] != cand]
        # keys and cand are both sorted: the stable sort (timsort) merges two runs in O(n).
        keys = np.sort(np.concatenate((keys, cand)), kind="stable")
        deficit -= np.bincount(cand // stride, minlength=n_rows)


def _random_subsets(sizes, counts, rng):
    """Row ``r``: a uniform random ``counts[r]``-subset of ``range(sizes[r])``, any counts <= sizes.

    Returns ``(rows, values)`` (int64, row-major sorted). Rows asking for more than half of
    their range draw the *excluded* values instead and keep the complement (O(sizes[r]) <=
    O(2 counts[r]) work for such a row), so rejection always runs at >= 50% acceptance.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    dense = 2 * counts > sizes
    out_rows, out_vals = [], []

    sparse_rows = np.flatnonzero(~dense)
    keys, stride = _reject_subsets(sizes[sparse_rows], counts[sparse_rows], rng)
    out_rows.append(sparse_rows[keys // stride])
    out_vals.append(keys % stride)

    dense_rows = np.flatnonzero(dense)
    if dense_rows.size:
        d_sizes = sizes[dense_rows]
        excluded, stride = _reject_subsets(d_sizes, d_sizes - counts[dense_rows], rng)
        # All (row, value) pairs of the dense rows, laid out row after row; strike the excluded.
        start = np.concatenate(([0], np.cumsum(d_sizes)))
        local_row = np.repeat(np.arange(dense_rows.size), d_sizes)
        value = np.arange(start[-1], dtype=np.int64) - start[local_row]
        keep = np.ones(start[-1], dtype=bool)
        keep[start[excluded // stride] + excluded % stride] = False
        out_rows.append(dense_rows[local_row[keep]])
        out_vals.append(value[keep])

    if len(out_rows) == 1:  # only sparse rows: the keys came out row-major sorted already
        return out_rows[0], out_vals[0]
    rows = np.concatenate(out_rows)
    vals = np.concatenate(out_vals)
    order = np.lexsort((vals, rows))
    return rows[order], vals[order]


def _rows_to_csr(rows, cols, shape) -> sp.csr_matrix:
    """Row-major sorted (rows, cols) without duplicates -> boolean CSR."""
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    return _csr(indptr, cols, shape)


def _random_rows(n_out: int, n_in: int, counts, rng) -> sp.csr_matrix:
    """Mask ``(n_out, n_in)``; row ``r`` is a uniform random ``counts[r]``-subset of the inputs."""
    rows, cols = _random_subsets(np.full(n_out, n_in, dtype=np.int64), counts, rng)
    return _rows_to_csr(rows, cols, (n_out, n_in))


def _check_density(density) -> float:
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise ValueError(f"density must be a number in [0, 1], got {density!r}") from None
    if not 0.0 <= d <= 1.0:  # also refuses NaN
        raise ValueError(f"density must be in [0, 1], got {density!r}")
    return d


def random_sparse(n_out: int, n_in: int, density: float, rng) -> sp.csr_matrix:
    """A Bernoulli mask ``(n_out, n_in)``: each connection present independently with ``density``.

    Drawn as row counts ``~ Binomial(n_in, density)`` and then a uniform subset of that size per
    row, which is the same distribution without touching all ``n_out * n_in`` entries.
    Cost O(nnz + n_out) memory, O(nnz log nnz) time.

    Too large: raises :class:`TopologyTooLarge` before drawing when the expected nnz
    ``density * n_out * n_in`` exceeds int32 CSR indices, or when the estimated memory
    ``45 nnz + 44 n_out + 40 n_in`` bytes (plus ``32 n_out n_in`` from density 0.4 up, where
    rows over half full are drawn as complements; see :func:`_drawn_cost`) exceeds
    :func:`available_memory`.
    """
    _check_rng(rng)
    n_out = _check_int(n_out, "n_out", 1)
    n_in = _check_int(n_in, "n_in", 1)
    density = _check_density(density)
    _check_fits(f"random_sparse {n_out:,} x {n_in:,} at density {density:g}",
                [_bernoulli_cost(n_out, n_in, density)], "use a lower density or fewer neurons")
    counts = rng.binomial(n_in, density, size=n_out)
    return _random_rows(n_out, n_in, counts, rng)


def xnet(n_out: int, n_in: int, in_degree: int, rng) -> sp.csr_matrix:
    """An X-Net style random expander mask ``(n_out, n_in)`` (after Prabhu et al. 2018).

    Every output neuron gets exactly ``in_degree`` distinct inputs. So that no input is left
    unused, the inputs are first dealt round-robin: inputs in a random order go to outputs in a
    random order, one each in turn, until every input has been dealt once or every output is
    full (``min(n_in, n_out * in_degree)`` connections; no output receives more than
    ``ceil(n_in / n_out)`` of them). Each output is then topped up to ``in_degree`` with inputs
    drawn uniformly among those it does not yet have. Hence when ``in_degree * n_out >= n_in``
    every input feeds at least one output, and otherwise no input feeds two. (The result is not
    exactly uniform over all such graphs: the deal spreads out-degrees more evenly.)
    Cost O(n_out * in_degree + n_in) memory.

    Too large: raises :class:`TopologyTooLarge` before drawing when ``nnz = n_out * in_degree``
    exceeds int32 CSR indices, or when the estimated memory ``85 nnz + 44 n_out + 40 n_in``
    bytes (plus ``32 n_out n_in`` when ``2 in_degree > n_in``; see :func:`_drawn_cost`)
    exceeds :func:`available_memory`.
    """
    _check_rng(rng)
    n_out = _check_int(n_out, "n_out", 1)
    n_in = _check_int(n_in, "n_in", 1)
    in_degree = _check_int(in_degree, "in_degree", 1, n_in)
    _check_fits(f"xnet {n_out:,} x {n_in:,} with in-degree {in_degree:,}",
                [_drawn_cost(n_out, n_in, n_out * in_degree, 2 * in_degree > n_in,
                             _XNET_BYTES_PER_NNZ)],
                "use a lower in-degree or fewer neurons")

    # The deal: slot t takes input in_order[t] to output out_order[t % n_out].
    n_dealt = min(n_in, n_out * in_degree)
    in_order = rng.permutation(n_in)[:n_dealt]
    out_order = rng.permutation(n_out)
    seed_rows = out_order[np.arange(n_dealt) % n_out]
    order = np.lexsort((in_order, seed_rows))
    seed_rows, seed_cols = seed_rows[order], in_order[order]
    n_seeds = np.bincount(seed_rows, minlength=n_out)
    seed_ptr = np.concatenate(([0], np.cumsum(n_seeds)))

    # Top up: row r draws in_degree - s_r of its n_in - s_r unseeded inputs, as positions a in
    # range(n_in - s_r). With the row's seeds sorted, s_0 < s_1 < ..., and t_k = s_k - k, the
    # a-th unseeded input is a + #{k : t_k <= a}; keyed per row this is one searchsorted.
    rows, a = _random_subsets(n_in - n_seeds, in_degree - n_seeds, rng)
    stride = n_in + 1  # t_k and a are both in [0, n_in]
    t_keys = seed_rows * stride + (seed_cols - (np.arange(n_dealt) - seed_ptr[seed_rows]))
    cols = a + np.searchsorted(t_keys, rows * stride + a, side="right") - seed_ptr[rows]

    all_rows = np.concatenate((seed_rows, rows))
    all_cols = np.concatenate((seed_cols, cols))
    order = np.lexsort((all_cols, all_rows))
    return _rows_to_csr(all_rows[order], all_cols[order], (n_out, n_in))


def random_equivalent(masks, rng, fixed_fan_in: bool = False, *, progress: bool = True) -> list:
    """The random equivalent of a stack: same shapes, each layer at that layer's density.

    ``fixed_fan_in=False``: each layer Bernoulli at its density ``nnz / (n_out * n_in)`` (see
    :func:`random_sparse`). ``fixed_fan_in=True``: every output neuron of a layer gets exactly
    ``round(density * n_in)`` inputs (Python's ``round``: the mean in-degree, ties to even),
    chosen uniformly without replacement; the layer's nnz is then exact whenever the mean
    in-degree is an integer, as in untrimmed RadiX-Nets.

    Too large: the whole stack is checked before the first draw, with the estimates of
    :func:`random_sparse` (or, for fixed fan-in, of ``n_out * k`` drawn connections), and
    refused with :class:`TopologyTooLarge` when it exceeds :func:`available_memory`.
    ``progress``: show a per-layer bar on stderr when the build takes over ``PROGRESS_DELAY_S``.
    """
    _check_rng(rng)
    masks = _check_stack(masks)
    densities = [m.nnz / (m.shape[0] * m.shape[1]) if m.shape[0] * m.shape[1] else 0.0
                 for m in masks]
    fan_ins = [min(round(d * m.shape[1]), m.shape[1]) for d, m in zip(densities, masks)]
    if fixed_fan_in:
        costs = [_drawn_cost(m.shape[0], m.shape[1], m.shape[0] * k, 2 * k > m.shape[1],
                             _DRAW_BYTES_PER_NNZ) for m, k in zip(masks, fan_ins)]
    else:
        costs = [_bernoulli_cost(*m.shape, d) for m, d in zip(masks, densities)]
    _check_fits("random equivalent", costs, "use a smaller or sparser stack")
    out = []
    layers = zip(masks, densities, fan_ins)
    for m, density, k in _progress("random_equivalent", progress, layers, total=len(masks)):
        n_out, n_in = m.shape
        if fixed_fan_in:
            out.append(_random_rows(n_out, n_in, np.full(n_out, k, dtype=np.int64), rng))
        else:
            out.append(random_sparse(n_out, n_in, density, rng))
    return out


# --------------------------------------------------------------------------------------------
# describing a stack: degrees and exact input-to-output path counts
# --------------------------------------------------------------------------------------------


def _exact_matvec(m: sp.csr_matrix, u: np.ndarray) -> np.ndarray:
    """``m @ u`` for a 0/1 CSR ``m`` and an object array of Python ints ``u``: exact, any size."""
    g = np.concatenate((u[m.indices], np.array([0], dtype=object)))  # trailing 0: see below
    # reduceat sums g[indptr[r]:indptr[r+1]]; the appended 0 makes every start a valid index
    # (trailing empty rows start at nnz), and an empty row in the middle would return the next
    # row's first element, so empty rows are zeroed explicitly.
    sums = np.add.reduceat(g, m.indptr[:-1].astype(np.int64))
    sums[np.diff(m.indptr) == 0] = 0
    return sums


def _limbs_from_int64(p: np.ndarray) -> list:
    """Non-negative int64 dense array -> base-2**31 limbs, least significant first."""
    limbs, p = [], p.copy()
    mask = (1 << _LIMB_BITS) - 1
    while True:
        limbs.append(p & mask)
        p >>= _LIMB_BITS
        if not p.any():
            return limbs


def _limbs_matmul(m: sp.csr_matrix, limbs: list) -> list:
    """``m @ P`` for ``P = sum_k limbs[k] * 2**(31 k)``; carries propagated so limbs stay < 2**31.

    Each ``m @ limbs[k]`` is an int64 SciPy product with entries < max_deg * 2**31 < 2**63.
    """
    mask = (1 << _LIMB_BITS) - 1
    out, carry = [], 0
    for limb in limbs:
        t = m @ limb + carry
        out.append(t & mask)
        carry = t >> _LIMB_BITS
    while np.any(carry):
        out.append(carry & mask)
        carry = carry >> _LIMB_BITS
    return out


def _limbs_extreme(limbs: list, pick) -> int:
    """Exact min or max (``pick`` = np.min / np.max) over the entries of a multi-limb array."""
    alive = np.ones(limbs[0].shape, dtype=bool)  # entries still tied for the extreme
    value = 0
    for k in range(len(limbs) - 1, -1, -1):  # most significant limb decides first
        best = int(pick(limbs[k][alive]))
        value += best << (_LIMB_BITS * k)
        alive &= limbs[k] == best
    return value


def _rank_one(p: sp.csr_matrix):
    """``(u, v)`` with ``p == outer(u, v)`` if ``p`` is full with constant rows or columns, or None.

    Checked exactly on every entry, so the structure is verified, never assumed.
    """
    n_r, n_c = p.shape
    if n_r * n_c == 0 or p.nnz != n_r * n_c:
        return None
    d = p.toarray()
    if np.all(d == d[:, :1]):
        return d[:, 0].astype(object), np.ones(n_c, dtype=object)
    if np.all(d == d[:1, :]):
        return np.ones(n_r, dtype=object), d[0].astype(object)
    return None


def path_stats(masks, max_entries: int = MAX_PATH_ENTRIES,
               max_work: float = MAX_PATH_WORK) -> dict:
    """Exact statistics of the number of paths from each input to each output of a stack.

    ``masks``: chained ``(n_out, n_in)`` masks; the path-count matrix is
    ``P = M_L @ ... @ M_1``, shape ``(n_L, n_0)``, ``P[o, i]`` = number of paths input ``i`` ->
    output ``o``. Returns ``{"min", "max"}`` (exact Python ints, or None when skipped),
    ``"all_reachable"`` (every output reachable from every input), ``"all_equal"``,
    ``"method"`` and ``"note"``.

    How, exactly: ``P`` is propagated layer by layer as an int64 sparse matrix while
    ``max_row_nnz(M) * max(P) < 2**63`` proves the next product cannot overflow. When ``P`` is
    full with constant rows (or columns), verified entry by entry, it is kept as an outer
    product ``u v^T`` and only ``u <- M u`` is propagated, in Python ints once int64 could
    overflow: this is what makes the 120-layer Graph Challenge network (2**590 paths per pair)
    cheap. Otherwise an overflowing ``P`` continues as dense base-2**31 limbs, each an int64
    product. Limit: path statistics are skipped, with a note, when an intermediate ``P_k`` has
    more than ``max_entries`` entries (``n_k * n_0``) or the limbs would exceed
    ``2 * max_entries`` int64 words; a 65536-neuron stack (``2**32`` entries) is skipped.

    Deep stacks: path counts grow by up to a factor ``d_k`` (layer ``k``'s largest in-degree)
    per layer, so they carry up to ``bits_k = sum_{j<=k} log2 d_j`` bits. Even the cheapest
    exact method adds, per layer, ``nnz_k`` numbers of that size, and each layer costs Python
    overhead worth about ``2**15`` word additions, so the work is at least
    ``work = sum_k (2**15 + nnz_k * (1 + bits_k / 64))`` word additions; when that exceeds
    ``max_work`` the statistics are skipped with a note (a 600000-layer RadiX-Net, with
    600000-bit path counts, would take hours).
    """
    return _path_stats(_check_stack(masks), max_entries, max_work)


def _path_work(masks: list) -> tuple:
    """``(work, bits)``: the lower bound on exact path counting work in :func:`path_stats`'s
    docstring, and the bound ``bits_L`` on the bits of the final path counts."""
    work, bits = 0.0, 0.0
    for m in masks:
        bits += math.log2(max(int(np.diff(m.indptr).max(initial=0)), 1))
        work += 2**15 + m.nnz * (1 + bits / 64)
    return work, bits


def _skipped(note: str) -> dict:
    return dict(min=None, max=None, all_reachable=None, all_equal=None, method="skipped",
                note=f"path counts not computed: {note}")


def _path_stats(masks: list, max_entries: int, max_work: float = MAX_PATH_WORK,
                progress: bool = False) -> dict:
    """:func:`path_stats` on masks already checked by :func:`_check_stack`."""
    n_in = masks[0].shape[1]
    biggest = max(m.shape[0] for m in masks) * n_in
    if biggest > max_entries:
        return _skipped(f"an intermediate path matrix would have {biggest:,} entries > "
                        f"max_entries = {max_entries:,}")
    work, bits = _path_work(masks)
    if work > max_work:
        return _skipped(f"{len(masks):,} layers with path counts of up to ~{bits:,.0f} bits "
                        f"would take at least {work:.2g} word additions > max_work = "
                        f"{max_work:.2g}")
    ints = [m.astype(np.int64) for m in masks]
    p, uv, limbs = ints[0], None, None
    method = "int64 sparse products"
    for m in _progress("path counts", progress, ints[1:]):
        max_deg = int(np.diff(m.indptr).max(initial=0))
        if uv is None and limbs is None:
            uv = _rank_one(p)
            if uv is not None:
                method = "int64 sparse products, then verified rank-1 u v^T with exact ints"
        if uv is not None:
            u, v = uv
            if max_deg * int(u.max()) <= _INT64_MAX:
                u = (m @ u.astype(np.int64)).astype(object)
            else:
                u = _exact_matvec(m, u)
            uv = (u, v)
        elif limbs is not None:
            limbs = _limbs_matmul(m, limbs)
        elif max_deg * int(p.data.max(initial=0)) <= _INT64_MAX:
            p = m @ p
            p.eliminate_zeros()
        else:
            limbs = _limbs_from_int64(p.toarray())
            method = "int64 sparse products, then exact base-2**31 limbs"
            limbs = _limbs_matmul(m, limbs)
        if limbs is not None and len(limbs) * limbs[0].size > 2 * max_entries:
            return _skipped(f"they exceed int64 without rank-1 structure and the exact limbs "
                            f"would need more than 2 * max_entries = {2 * max_entries:,} "
                            f"int64 words")

    if uv is not None:
        u, v = uv  # entries >= 0, so the extremes of u_o * v_i are products of extremes
        lo, hi = int(u.min()) * int(v.min()), int(u.max()) * int(v.max())
        reachable = lo > 0
    elif limbs is not None:
        lo, hi = _limbs_extreme(limbs, np.min), _limbs_extreme(limbs, np.max)
        reachable = bool(np.all(np.logical_or.reduce([limb != 0 for limb in limbs])))
    else:
        full = p.nnz == p.shape[0] * p.shape[1]  # stored entries are all > 0
        lo, hi = _min_max(p.data)
        lo = lo if full else 0
        reachable = full
    return dict(min=lo, max=hi, all_reachable=bool(reachable), all_equal=lo == hi,
                method=method, note=None)


def _min_max(a: np.ndarray) -> tuple:
    """(min, max) of an integer array as Python ints; (0, 0) when it is empty."""
    return (int(a.min()), int(a.max())) if a.size else (0, 0)


def describe(masks, max_entries: int = MAX_PATH_ENTRIES, max_work: float = MAX_PATH_WORK, *,
             progress: bool = True) -> dict:
    """Per-layer degree statistics and whole-stack path statistics of a chained stack of masks.

    Returns ``{"widths": [n_0, ..., n_L], "layers": [...], "nnz": total, "paths": {...}}``.
    Each layer entry: ``shape`` (n_out, n_in), ``nnz``, ``density``, ``in_degree`` (min, max)
    over output neurons (row nnz), ``out_degree`` (min, max) over input neurons (column nnz).
    ``paths``: see :func:`path_stats`. All counts are Python ints. Cost O(nnz) plus path counting.
    ``progress``: per-layer bars on stderr when degrees or path counts take over
    ``PROGRESS_DELAY_S`` seconds (10^5-layer stacks).
    """
    masks = _check_stack(masks)
    layers = []
    for m in _progress("degrees", progress, masks):
        n_out, n_in = m.shape
        row_nnz = np.diff(m.indptr)
        col_nnz = np.bincount(m.indices, minlength=n_in)
        layers.append(dict(
            shape=(n_out, n_in),
            nnz=int(m.nnz),
            density=m.nnz / (n_out * n_in) if n_out * n_in else 0.0,
            in_degree=_min_max(row_nnz),
            out_degree=_min_max(col_nnz),
        ))
    return dict(
        widths=[masks[0].shape[1]] + [m.shape[0] for m in masks],
        layers=layers,
        nnz=sum(layer["nnz"] for layer in layers),
        paths=_path_stats(masks, max_entries, max_work, progress),
    )


def _fmt_count(n: int) -> str:
    """Exact ints up to 15 digits; bigger ones as mantissa e exponent, plus 2^k when exact."""
    if n < 10**15:
        return f"{n:,}"
    s = str(n)
    text = f"{s[0]}.{s[1:5]}e{len(s) - 1}"
    if n & (n - 1) == 0:
        text += f" (= 2^{n.bit_length() - 1})"
    return text


def _fmt_range(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else f"{lo}..{hi}"


def format_description(desc: dict) -> str:
    """A text table of :func:`describe`'s result: one line per layer, then the path summary."""
    header = ("layer", "shape (out x in)", "nnz", "density", "sparsity", "in-degree", "out-degree")
    rows = []
    for i, layer in enumerate(desc["layers"], start=1):
        n_out, n_in = layer["shape"]
        rows.append((
            str(i), f"{n_out} x {n_in}", f"{layer['nnz']:,}", f"{layer['density']:.4f}",
            f"{100 * (1 - layer['density']):.2f}%",
            _fmt_range(*layer["in_degree"]), _fmt_range(*layer["out_degree"]),
        ))
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]

    def line(cells):  # first two columns left-aligned (text), the numbers right-aligned
        return "  ".join(
            c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]

    # Run-length the widths so a 121-layer stack reads '1024(x121)', not 121 numbers.
    runs = []
    for w in desc["widths"]:
        if runs and runs[-1][0] == w:
            runs[-1][1] += 1
        else:
            runs.append([w, 1])
    widths_txt = "-".join(f"{w}" if k == 1 else f"{w}(x{k})" for w, k in runs)
    out.append(f"widths {widths_txt}; {len(desc['layers'])} layers; {desc['nnz']:,} connections")
    uniform = all(
        layer["in_degree"][0] == layer["in_degree"][1]
        and layer["out_degree"][0] == layer["out_degree"][1]
        for layer in desc["layers"]
    )
    out.append("degrees: " + ("uniform in every layer" if uniform else
                              "NOT uniform (some layer has min != max in- or out-degree)"))
    p = desc["paths"]
    if p["min"] is None:
        out.append(f"paths input->output: {p['note']}")
    else:
        if p["all_equal"]:
            counts = f"{_fmt_count(p['min'])} for every input/output pair"
        else:
            counts = f"min {_fmt_count(p['min'])}, max {_fmt_count(p['max'])} (NOT all equal)"
        reach = ("every output reachable from every input" if p["all_reachable"]
                 else "some outputs NOT reachable from some inputs")
        out.append(f"paths input->output: {counts}; {reach}")
        out.append(f"  (exact; {p['method']})")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2, no usage dump."""

    def error(self, message):
        # Our type functions name their option ("--seed must be ..."), so drop argparse's
        # "argument --seed: " prefix rather than say the name twice.
        message = re.sub(r"^argument (\S+): (?=\1 )", "", message)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# Options whose value is a comma-separated list. argparse takes a value such as "-2,2" for an
# option (only plain negative numbers like "-2" count as values), so main() glues such a value
# to its option, "--radices=-2,2", and the list's own check can say what is wrong with it.
_LIST_OPTIONS = ("--radices", "--widths", "--B", "--trim")


def _glue_negative_lists(argv: list) -> list:
    """['--radices', '-2,2'] -> ['--radices=-2,2']; everything else unchanged."""
    out = []
    for arg in argv:
        if out and out[-1] in _LIST_OPTIONS and re.match(r"-\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _seed(text: str) -> int:
    """argparse type of --seed: numpy.random.default_rng takes integers >= 0."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"--seed must be a non-negative integer, got {text}")
    return seed


def _int_list(text: str, what: str, item_name: str = "width") -> list:
    """'8,3,1' -> [8, 3, 1]; an item 'VxK' repeats V K times ('16x121'). Every value and
    count must be >= 1, as radices and widths are; ``item_name`` names a value in errors."""
    out = []
    for item in text.replace(" ", "").split(","):
        value, _, times = item.partition("x")
        try:
            value, times = int(value), int(times) if times else 1
        except ValueError:
            raise ValueError(
                f"{what}: {item!r} is not an integer or VALUExCOUNT (in {text!r})"
            ) from None
        if value < 1 or times < 1:
            bad, name = (value, item_name) if value < 1 else (times, "count")
            raise ValueError(f"{what}: {name} {bad} must be >= 1 (in {text!r})")
        out += [value] * times
    return out


def _radix_lists_arg(text: str, repeat: int) -> list:
    """'2,2,2/2,2' (or ';') -> [[2, 2, 2], [2, 2]], the whole sequence repeated ``repeat`` times."""
    lists = [_int_list(part, "--radices", "radix") for part in text.replace(";", "/").split("/")]
    return lists * repeat


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m sparsenn.topology",
        description="Generate sparse topologies (RadiX-Nets, LeNet-300-100 presets, X-Nets, "
                    "Bernoulli random), print their degree and exact path statistics as a "
                    "table, and optionally save the masks (sparsenn mask file, .npz).",
        epilog="examples:\n"
               "  python -m sparsenn.topology radix --radices 2,2,2\n"
               "  python -m sparsenn.topology radix --radices 10,10 --B 8,3,1 --trim 784,300,100\n"
               "  python -m sparsenn.topology radix --radices 2x6 --repeat 20 --B 16x121\n"
               "  python -m sparsenn.topology preset radix-wide --save lenet_wide.npz\n"
               "  python -m sparsenn.topology xnet --widths 784,300,100 --in-degree 32 --seed 0\n"
               "  python -m sparsenn.topology describe masks.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, seed=False):
        p.add_argument("--trim", metavar="W0,W1,...",
                       help="keep the first W_k neurons of node layer k (one width per node "
                            "layer); breaks exact degree uniformity, see the table")
        p.add_argument("--save", metavar="FILE.npz",
                       help="save the masks with sparsenn.io.save_masks")
        p.add_argument("--max-path-entries", type=int, default=MAX_PATH_ENTRIES, metavar="N",
                       help="skip exact path counting when an intermediate path matrix has "
                            f"more than N entries (default {MAX_PATH_ENTRIES})")
        p.add_argument("--max-path-work", type=float, default=MAX_PATH_WORK, metavar="W",
                       help="skip exact path counting when it would take more than W word "
                            f"additions (default {MAX_PATH_WORK:.2g}, about 10 s)")
        if seed:
            p.add_argument("--seed", type=_seed, default=0,
                           help="seed of numpy.random.default_rng, >= 0 (default 0)")

    p = sub.add_parser("radix", help="a RadiX-Net from an (extended) mixed radix",
                       description="A RadiX-Net (Robinett & Kepner). Radix lists are "
                                   "comma-separated, lists separated by '/' (or ';'); "
                                   "VALUExCOUNT repeats a value.")
    p.add_argument("--radices", required=True, metavar="N1,N2,.../...",
                   help="the mixed radix, e.g. 10,10 or 2,2,2/2,2 or 2x6")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="repeat the whole list of radix lists K times (default 1)")
    p.add_argument("--B", metavar="B1,...,B(L+1)",
                   help="Kronecker widths, one per node layer (default all 1), "
                        "e.g. 8,3,1 or 16x121")
    common(p)

    p = sub.add_parser("preset", help="a named LeNet-300-100 preset: " + ", ".join(PRESETS))
    p.add_argument("name", help="one of: " + ", ".join(PRESETS))
    common(p)

    p = sub.add_parser("xnet", help="X-Net random expander layers with exact in-degree")
    p.add_argument("--widths", required=True, metavar="W0,W1,...", help="node layer widths")
    p.add_argument("--in-degree", required=True, type=int, help="inputs per output neuron")
    common(p, seed=True)

    p = sub.add_parser("random", help="Bernoulli random layers at one density")
    p.add_argument("--widths", required=True, metavar="W0,W1,...", help="node layer widths")
    p.add_argument("--density", required=True, type=float, help="connection probability in [0, 1]")
    common(p, seed=True)

    p = sub.add_parser("describe", help="describe the masks in a saved mask file")
    p.add_argument("file", help="a mask file written by sparsenn.io.save_masks")
    common(p)
    return parser


def _run(args) -> list:
    """Build the masks the parsed command asks for; prints a title line first."""
    if args.command == "radix":
        if args.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
        lists = _radix_lists_arg(args.radices, args.repeat)
        B = _int_list(args.B, "--B") if args.B else None
        masks = radix_net(lists, B=B)
        shown = str(lists) if len(lists) <= 4 else f"{lists[:2]} ... ({len(lists)} lists)"
        shown_b = "all 1" if B is None else B if len(B) <= 12 else f"{B[:6]} ... ({len(B)} widths)"
        print(f"RadiX-Net: radices {shown}, N' = {math.prod(lists[0])}, B = {shown_b}")
    elif args.command == "preset":
        if args.name not in PRESETS:
            raise ValueError(f"unknown preset {args.name!r}; choose one of {', '.join(PRESETS)}")
        masks = PRESETS[args.name]()
        print(f"preset {args.name!r}: RadiX-Net fitted to LeNet-300-100 "
              "(the dense 100 -> 10 logits layer belongs to the model, not listed)")
    elif args.command in ("xnet", "random"):
        widths = _int_list(args.widths, "--widths")
        if len(widths) < 2:
            raise ValueError(f"--widths needs at least two node layers, got {args.widths!r}")
        rng = np.random.default_rng(args.seed)
        pairs = list(zip(widths, widths[1:]))  # (n_in, n_out) of each layer
        # Refuse the whole stack up front: xnet and random_sparse only see one layer each.
        if args.command == "xnet":
            k = _check_int(args.in_degree, "--in-degree", 1, min(widths[:-1]))
            costs = [_drawn_cost(o, i, o * k, 2 * k > i, _XNET_BYTES_PER_NNZ) for i, o in pairs]
            _check_fits(f"X-Net with in-degree {k:,}", costs,
                        "use a lower --in-degree or fewer or narrower --widths")
            masks = [xnet(o, i, k, rng) for i, o in _progress("xnet", True, pairs)]
            print(f"X-Net: widths {widths}, in-degree {k}, seed {args.seed}")
        else:
            density = _check_density(args.density)
            costs = [_bernoulli_cost(o, i, density) for i, o in pairs]
            _check_fits(f"Bernoulli random stack at density {density:g}", costs,
                        "use a lower --density or fewer or narrower --widths")
            masks = [random_sparse(o, i, density, rng)
                     for i, o in _progress("random_sparse", True, pairs)]
            print(f"Bernoulli random: widths {widths}, density {args.density}, seed {args.seed}")
    else:
        from sparsenn.io import load_masks

        masks = load_masks(args.file)
        print(f"mask file {args.file}")
    if args.trim:
        masks = trim(masks, _int_list(args.trim, "--trim"))
        print(f"trimmed to widths {args.trim} (exact degree uniformity no longer guaranteed)")
    return masks


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (2 for bad input)."""
    parser = _build_parser()
    args = parser.parse_args(_glue_negative_lists(sys.argv[1:] if argv is None else list(argv)))
    try:
        masks = _run(args)
        desc = describe(masks, max_entries=args.max_path_entries, max_work=args.max_path_work)
        print(format_description(desc))
        if args.save:
            from sparsenn.io import save_masks

            save_masks(args.save, masks)
            print(f"saved {len(masks)} masks to {args.save}")
    except (ValueError, TypeError, FileNotFoundError) as e:  # TopologyTooLarge is a ValueError
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:  # the estimates in _check_fits were too low for this machine
        print(f"{parser.prog}: error: ran out of memory (the size check let this through); "
              "ask for fewer or smaller layers", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout piped into e.g. `head`: stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return 1
    except OSError as e:  # e.g. --save into a read-only directory: not the user's syntax
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
