"""Sparse topologies: RadiX-Nets, their random equivalents, X-Net expanders, and a describer.

Every function here returns a list of boolean ``scipy.sparse.csr_matrix`` masks in sparsenn's
orientation: mask ``i`` has shape ``(n_out, n_in)`` (row = output neuron, column = input
neuron), so a stack ``masks`` maps ``widths[0] -> widths[1] -> ... -> widths[L]`` with
``masks[i].shape == (widths[i + 1], widths[i])``. The RadiX-Net papers write the transpose
(row = source neuron); the docstrings say where that matters.

Everything is built straight into the masks' int32 CSR arrays with vectorised NumPy: no dense
``n_out x n_in`` array, no Kronecker product and no Python loop over rows is ever formed. The
time is O(nnz) (O(nnz log nnz) for random draws) and the peak memory is the finished masks plus
a constant: RadiX layers are written in place, random ones are drawn a chunk of ``_CHUNK`` (2**20)
entries at a time. A 10^8-connection RadiX or fixed fan-in random layer takes about a second
and at most ~1.1x its CSR bytes (``examples/bench_topology.py --huge`` measures it).

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

*Reduced format* (:func:`radix_widths`): a RadiX-Net given by its node-layer widths
``n_0, ..., n_L`` and out-degrees ``D_0, ..., D_{L-1}``: ``N' = gcd(n_i)``, ``B_i = n_i / N'``,
radices ``r_i = D_i / B_{i+1}``, which must form an extended mixed radix of ``N'``.

*Sparse MLPs* (:func:`radix_mlp`, used by ``sparsenn.models.sparse_mlp``): hidden widths such as
``[262144] * 4`` at a fixed in-degree (fan-in) as one RadiX-Net, with the 784 inputs placed at
evenly spaced positions of a padded input layer, the way :func:`lenet300_radix` cuts 800 inputs
to 784.

Random and expander topologies
------------------------------
:func:`random_sparse` (each connection independently present: Bernoulli), :func:`xnet` (exact
in-degree, every input used, after Prabhu et al.'s X-Nets), and :func:`random_equivalent`
(a random stack with the same per-layer densities as a given one). Every random choice takes an
explicit ``numpy.random.Generator``. :func:`random_fan_in` draws a layer with a fixed in-degree
(every output exactly ``fan_in`` distinct uniform inputs), the random counterpart of a RadiX
layer of the same size.

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
import itertools
import math
import operator
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
_RADIX_BYTES_PER_RING = 4  # RadiX layers: int32 row numbers of one block of rows, <= N' of them
_DRAW_BYTES_PER_ENTRY = 64  # random draws: one chunk's int64 values, keys, rows and positions,
_DRAW_BYTES_PER_ROW = 96  # int64 counts, indptr, sizes, starts and round state per output neuron,
_DRAW_BYTES_PER_INPUT = 48  # and (xnet) the deal's permutations and seeds per input neuron.


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
    """Cost of :func:`_radix_layer`, which writes the mask's int32 arrays in place: besides the
    mask it holds one block of int32 row numbers, ``extra = 4 N'``."""
    n_out, n_in = b_out * n_prime, b_in * n_prime
    nnz = n_out * b_in * radix
    return _LayerCost(n_out, n_in, nnz, _mask_bytes(n_out, nnz), _RADIX_BYTES_PER_RING * n_prime)


def _drawn_cost(n_out: int, n_in: int, nnz: int, dense_rows: bool) -> _LayerCost:
    """Cost of a mask drawn straight into its int32 ``indices`` by :func:`_subsets_into`
    (random_sparse, fixed fan-in, xnet): ``extra = 64 chunk + 96 n_out + 48 n_in``.

    ``chunk = min(work, max(_CHUNK, n_in))`` is the most entries one chunk of draws holds
    (``_CHUNK``, or one row when a row is longer); ``work`` is ``nnz``, or ``n_out * n_in`` when
    rows over half full (``dense_rows``) lay out all their candidates to strike the excluded ones.
    For a big layer the extra is a constant ~64 MiB plus the per-neuron arrays: the peak stays
    close to the finished mask's ``5 nnz + 4 n_out`` bytes.
    """
    work = n_out * n_in if dense_rows else nnz
    chunk = min(work, max(_CHUNK, n_in))
    extra = _DRAW_BYTES_PER_ENTRY * chunk + _DRAW_BYTES_PER_ROW * n_out + _DRAW_BYTES_PER_INPUT * n_in
    return _LayerCost(n_out, n_in, nnz, _mask_bytes(n_out, nnz), extra)


def _bernoulli_cost(n_out: int, n_in: int, density: float) -> _LayerCost:
    """:func:`_drawn_cost` of :func:`random_sparse` at its expected nnz. Binomial row counts
    straddle ``n_in / 2`` well below density 1/2, so from density 0.4 up all rows count as dense."""
    nnz = math.ceil(density * n_out * n_in)
    return _drawn_cost(n_out, n_in, nnz, density > 0.4)


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


def _radix_offsets(out: np.ndarray, n_prime: int, radix: int, place: int) -> None:
    """Write row ``r`` of a RadiX layer's first block, sorted: ``out[r] = sort((r + n * place)
    mod N' for n < radix)``. ``out``: int32 ``(N', radix)``, any strides; needs
    ``place * radix <= N'`` (so the offsets are distinct).

    No modulo and no sort: the offsets of row ``r`` that wrap past ``N'`` are its last ``w``,
    and sorted they come first. ``w`` grows with ``r``, so the rows that wrap ``w`` times are one
    block, ``N' - place (radix - w) <= r < N' - place (radix - w - 1)``, written with two
    broadcast adds. The only temporary is that block's row numbers: at most ``N'`` int32.
    """
    for w in range(radix):  # rows whose last w offsets wrap around
        lo = n_prime - place * (radix - w) if w else 0
        hi = n_prime - place * (radix - w - 1)
        if lo >= hi:
            continue
        r = np.arange(lo, hi, dtype=np.int32)[:, None]
        wrapped = np.arange(radix - w, radix, dtype=np.int64) * place - n_prime  # (w,)
        np.add(r, wrapped.astype(np.int32), out=out[lo:hi, :w])
        np.add(r, (np.arange(radix - w, dtype=np.int64) * place).astype(np.int32), out=out[lo:hi, w:])


def _radix_layer(n_prime: int, radix: int, place: int, b_in: int, b_out: int) -> sp.csr_matrix:
    """One Kronecker-widened RadiX layer, shape ``(b_out * N', b_in * N')``, in O(nnz).

    Row ``(b', r)`` (index ``b' * N' + r``) holds the columns ``b * N' + (r + n * place) mod N'``
    for ``b < b_in``, ``n < radix``: ``b_in * radix`` entries per row. The ``radix`` offsets are
    distinct mod ``N'`` because ``radix * place`` divides ``N'``.

    Memory: the int32 ``indices`` are written in place, block by block (output block 0's input
    block 0 by :func:`_radix_offsets`, the other input blocks by adding ``b * N'``, the other
    output blocks by copying block 0), so the peak is the finished mask plus ``4 N'`` bytes.
    """
    degree = b_in * radix
    n_out, n_in = b_out * n_prime, b_in * n_prime
    indices = np.empty(n_out * degree, dtype=np.int32)
    block = indices[: n_prime * degree].reshape(n_prime, b_in, radix)  # output block 0
    _radix_offsets(block[:, 0, :], n_prime, radix, place)
    for b in range(1, b_in):  # input block b: the same columns shifted by b * N'
        np.add(block[:, 0, :], b * n_prime, out=block[:, b, :])
    indices.reshape(b_out, -1)[1:] = indices[: n_prime * degree]  # every output block repeats it
    indptr = np.arange(0, n_out * degree + 1, degree, dtype=np.int32)  # nnz < 2**31: checked
    return _csr(indptr, indices, (n_out, n_in))


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
    Cost: O(total nnz) time; memory: the masks themselves plus ``4 N'`` bytes (each layer's
    int32 arrays are written in place, see :func:`_radix_layer`).

    Too large: before building anything, raises :class:`TopologyTooLarge` (a ValueError) when a
    layer exceeds int32 CSR indices or the estimated memory, ``sum over layers of
    (5 nnz + 4 n_out + 2 KiB)`` kept plus ``4 N'`` of temporaries (see :func:`_radix_cost`),
    exceeds :func:`available_memory`.
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


def _split_radices(radices: list, n_prime: int, name) -> list:
    """Cut a flat list of radices into an extended mixed radix of ``N'``: consecutive lists with
    product ``N'`` (a list closes as soon as its product reaches ``N'``), then at most one whose
    product divides ``N'``; a single list must reach ``N'``. ``name(i)`` names radix ``i`` in
    the ValueError raised when that is impossible."""
    lists, current, product = [], [], 1
    for i, r in enumerate(radices):
        if (n_prime // product) % r:
            raise ValueError(
                f"{name(i)} = {r} does not divide N' / {product} = {n_prime // product} (N' = "
                f"{n_prime}, divided by the radices before it in its list): the radices must "
                f"multiply up to N', list after list, and the last list's product must divide N'"
            )
        current.append(r)
        product *= r
        if product == n_prime:
            lists.append(current)
            current, product = [], 1
    if current:
        if not lists:
            raise ValueError(
                f"the radices {radices} multiply to {product}, not N' = {n_prime}: a RadiX-Net's "
                f"first radix list must reach N' (only a later list may stop at a divisor of N')"
            )
        lists.append(current)
    return lists


def radix_widths(widths, out_degrees, *, progress: bool = True) -> list:
    """The RadiX-Net with node-layer widths ``n_0, ..., n_L`` and out-degrees ``D_0, ..., D_{L-1}``
    (the papers' "reduced format"), as ``L`` boolean ``(n_{i+1}, n_i)`` CSR masks.

    ``N' = gcd(n_0, ..., n_L)``, ``B_i = n_i / N'`` and the radices ``r_i = D_i / B_{i+1}``; the
    radices, in order, must form an extended mixed radix of ``N'`` (lists whose product is
    ``N'``, a list closing as soon as it reaches ``N'``, then possibly one whose product divides
    ``N'``). The result is ``radix_net(lists, B)``: layer ``i`` has out-degree ``D_i`` and
    in-degree ``B_i r_i = D_i n_i / n_{i+1}`` for every neuron, and every input reaches every
    output by the same number of paths. Example: ``radix_widths([800, 300, 100], [30, 10])`` is
    ``radix_net([[10, 10]], B=[8, 3, 1])`` (N' = 100), the network behind :func:`lenet300_radix`.

    Raises ValueError naming what does not divide: a ``D_i`` that is not a multiple of
    ``B_{i+1}``, or a radix that does not divide what ``N'`` leaves for it. Cost and size limits:
    those of :func:`radix_net`.
    """
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) < 2:
        raise ValueError(f"widths must list at least two node-layer widths n_0, n_1, ..., got {widths!r}")
    widths = [_check_int(n, f"widths[{i}]", 1) for i, n in enumerate(widths)]
    n_layers = len(widths) - 1
    if (isinstance(out_degrees, (str, bytes)) or not hasattr(out_degrees, "__len__")
            or len(out_degrees) != n_layers):
        raise ValueError(f"out_degrees must list one out-degree per layer, {n_layers} for "
                         f"{len(widths)} widths, got {out_degrees!r}")
    out_degrees = [_check_int(d, f"out_degrees[{i}]", 1) for i, d in enumerate(out_degrees)]
    n_prime = math.gcd(*widths)
    B = [n // n_prime for n in widths]
    for i, d in enumerate(out_degrees):
        if d % B[i + 1]:
            raise ValueError(
                f"out_degrees[{i}] = {d} is not a multiple of B[{i + 1}] = widths[{i + 1}] / N' = "
                f"{widths[i + 1]} / {n_prime} = {B[i + 1]} (N' = gcd(widths) = {n_prime}): layer "
                f"{i}'s out-degree is B[{i + 1}] times its radix"
            )
    radices = [d // B[i + 1] for i, d in enumerate(out_degrees)]
    lists = _split_radices(
        radices, n_prime, lambda i: f"radix {i} (out_degrees[{i}] / B[{i + 1}] = "
                                    f"{out_degrees[i]} / {B[i + 1]})")
    return radix_net(lists, B=B, progress=progress)


def _divisors(n: int) -> list:
    """The divisors of ``n >= 1``, increasing (trial division up to sqrt(n))."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def _radix_input_layer(n_prime: int, radix: int, b_in: int, b_out: int, n_inputs: int) -> sp.csr_matrix:
    """The first layer of :func:`radix_mlp`: ``_radix_layer(N', radix, 1, b_in, b_out)`` on a
    padded input of ``n_pad = b_in N'`` positions, keeping only the ``n_inputs`` columns at the
    evenly spaced positions ``q_p = floor(p n_pad / n_inputs)`` (column ``q_p`` becomes ``p``).
    Shape ``(b_out N', n_inputs)``.

    Built on the kept columns only, never the padded layer: row ``(b', r)`` reads, in each input
    block ``b``, the window ``b N' + [r, r + radix)`` wrapping at ``N'``, i.e. the two ranges
    ``b N' + [0, r + radix - N')`` and ``b N' + [r, min(r + radix, N'))`` of padded positions,
    whose kept inputs are two ranges of ``p`` (``q`` is increasing: one searchsorted each).
    Cost O(nnz + N' b_in) time and memory.
    """
    n_pad = b_in * n_prime
    q = np.arange(n_inputs, dtype=np.int64) * n_pad // n_inputs  # (n_inputs,) increasing
    r = np.arange(n_prime, dtype=np.int64)[:, None]  # (N', 1) rows of one output block
    block = (np.arange(b_in, dtype=np.int64) * n_prime)[None, :]  # (1, b_in)
    lo = np.stack(np.broadcast_arrays(block, block + r), axis=-1)  # (N', b_in, 2) range starts
    hi = np.stack(np.broadcast_arrays(block + np.maximum(r + radix - n_prime, 0),
                                      block + np.minimum(r + radix, n_prime)), axis=-1)
    first = np.searchsorted(q, lo.reshape(-1))
    lengths = np.searchsorted(q, hi.reshape(-1)) - first  # kept inputs per range, row-major
    cols = (np.repeat(first, lengths) + _ragged_arange(lengths)).astype(np.int32)
    row_counts = lengths.reshape(n_prime, -1).sum(axis=1)  # in-degree of each row of a block
    indptr = np.zeros(b_out * n_prime + 1, dtype=np.int64)
    np.cumsum(np.tile(row_counts, b_out), out=indptr[1:])
    return _csr(indptr, np.tile(cols, b_out), (b_out * n_prime, n_inputs))


def radix_mlp(n_inputs: int, widths, fan_in: int, *, progress: bool = True) -> list:
    """RadiX-Net masks for a sparse MLP ``n_inputs -> widths[0] -> ... -> widths[-1]`` whose
    hidden layers all have in-degree ``fan_in``. Returns ``len(widths)`` boolean CSR masks,
    shapes ``(widths[0], n_inputs)``, ``(widths[1], widths[0])``, ...

    The hidden node layers are those of one RadiX-Net: ``N' = gcd(widths)``, ``B_k =
    widths[k] / N'``. Hidden layer ``k -> k + 1`` has the radix ``fan_in / B_k`` (so ``B_k``
    must divide ``fan_in``): in-degree exactly ``fan_in``, out-degree ``fan_in B_{k+1} / B_k``.

    The inputs need not divide by ``N'`` (784 pixels into 262,144-wide layers): as
    :func:`lenet300_radix` cuts 800 inputs to 784, the input layer is a RadiX layer on a padded
    input of ``n_pad = B_0' N'`` positions (``B_0' = ceil(n_inputs / N')``), of which only
    ``n_inputs`` are kept, at the evenly spaced positions ``floor(p n_pad / n_inputs)``. Its
    radix ``r_0`` (place 1: output ``r`` reads the window ``[r, r + r_0)`` of every padded
    block) is the divisor of ``N'`` for which ``r_0, fan_in / B_0, fan_in / B_1, ...`` form an
    extended mixed radix of ``N'`` (lists of product ``N'``, the last one's product dividing
    ``N'``: equal path counts between all connected pairs) and the first layer's mean in-degree
    ``r_0 n_inputs / N'`` is closest to ``fan_in``. The kept inputs being evenly spaced, every
    first-layer neuron sees about that many (floor or ceil of it when ``B_0' = 1``), and none is
    left without inputs. Example: 784 inputs, widths ``[2**18] * 4``, fan-in 32: ``N' = 2**18``,
    radices ``[[8192, 32], [32, 32]]``, first-layer in-degree 24 or 25 (mean 784 / 32 = 24.5),
    hidden in-degree 32; for 2**k-wide layers at fan-in 32 the first layer always has 24.5.

    Raises ValueError when there are fewer than two hidden layers (a RadiX-Net of one layer
    connects everything to everything), when a ``B_k`` does not divide ``fan_in``, or when no
    ``r_0`` completes a valid mixed radix. Cost O(nnz + N' B_0') time; memory: the masks plus
    the first layer's ``(N' B_0')``-row temporaries; refused like :func:`radix_net` when that
    exceeds :func:`available_memory` (:class:`TopologyTooLarge`).
    """
    n_prime, B, hidden, r0, b_pad, places = _radix_mlp_plan(n_inputs, widths, fan_in)
    masks = []
    with _progress("radix_mlp", progress, total=len(B)) as bar:
        masks.append(_radix_input_layer(n_prime, r0, b_pad, B[0], int(n_inputs)))
        bar.update()
        for k, r in enumerate(hidden):
            masks.append(_radix_layer(n_prime, r, places[k + 1], B[k], B[k + 1]))
            bar.update()
    return masks


def check_radix_mlp(n_inputs: int, widths, fan_in: int) -> None:
    """Raise the ValueError (or :class:`TopologyTooLarge`) that :func:`radix_mlp` would raise
    for these arguments, without building anything: for scripts that check a whole study's
    models before running the first. O(number of divisors of N') time."""
    _radix_mlp_plan(n_inputs, widths, fan_in)


def _radix_mlp_plan(n_inputs: int, widths, fan_in: int) -> tuple:
    """What :func:`radix_mlp` builds, checked, before anything is allocated: ``(N', B, hidden
    radices, r_0, padded input blocks, places)``; raises as described there."""
    n_inputs = _check_int(n_inputs, "n_inputs", 1)
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) < 2:
        raise ValueError(f"a RadiX-Net MLP needs at least two hidden widths (one RadiX layer alone "
                         f"connects every input to every output), got widths={widths!r}")
    widths = [_check_int(w, f"widths[{k}]", 1) for k, w in enumerate(widths)]
    fan_in = _check_int(fan_in, "fan_in", 1)
    n_prime = math.gcd(*widths)
    B = [w // n_prime for w in widths]
    for k in range(len(widths) - 1):
        if fan_in % B[k]:
            raise ValueError(
                f"fan_in = {fan_in} is not a multiple of B[{k}] = widths[{k}] / N' = {widths[k]} / "
                f"{n_prime} = {B[k]} (N' = gcd(widths)): hidden layer {k + 1}'s in-degree is "
                f"B[{k}] times its radix; use widths with a larger common divisor or another fan_in"
            )
    hidden = [fan_in // B[k] for k in range(len(widths) - 1)]
    b_pad = -(-n_inputs // n_prime)  # padded input blocks
    best = None
    for d in _divisors(n_prime):
        try:
            lists = _split_radices([d] + hidden, n_prime, str)
        except ValueError:
            continue
        key = (abs(d * n_inputs / n_prime - fan_in), -d)  # mean first-layer in-degree vs fan_in
        if best is None or key < best[0]:
            best = (key, d, lists)
    if best is None:
        raise ValueError(
            f"fan_in = {fan_in} gives the hidden layers the radices {hidden} (fan_in / B), and no "
            f"first-layer radix r_0 (a divisor of N' = gcd(widths) = {n_prime}) makes [r_0] + "
            f"{hidden} an extended mixed radix of N' (lists of product N', the last dividing N'); "
            f"choose widths and fan_in so that the radices multiply up to N'"
        )
    _, r0, lists = best
    first_nnz = n_inputs * B[0] * r0  # every kept input keeps its out-degree B_0 r_0
    first_cost = _LayerCost(widths[0], n_inputs, first_nnz, _mask_bytes(widths[0], first_nnz),
                            _DRAW_BYTES_PER_ENTRY * first_nnz // B[0] + 96 * n_prime * b_pad)
    places = [p for radices in lists for p in itertools.accumulate([1] + radices[:-1], operator.mul)]
    costs = [first_cost] + [_radix_cost(n_prime, r, B[k], B[k + 1]) for k, r in enumerate(hidden)]
    _check_fits(f"RadiX-Net MLP {n_inputs}-{'-'.join(map(str, widths))} with N' = {n_prime:,}",
                costs, "use narrower widths or a smaller fan_in")
    return n_prime, B, hidden, r0, b_pad, places


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


# The random generators draw, sort and write at most this many entries at a time (a longer row is
# a chunk of its own). Each chunk's int64 temporaries take ~_CHUNK_BYTES_PER_ENTRY bytes per
# entry, so a big layer's peak is its finished mask plus ~60 MiB, not a multiple of its nnz.
_CHUNK = 2**20


def _ragged_arange(lengths: np.ndarray) -> np.ndarray:
    """``[0, 1, .., lengths[0]-1, 0, 1, .., lengths[1]-1, ...]`` (int64): each entry's rank in its row."""
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)


def _chunks(lengths: np.ndarray, limit: int = _CHUNK):
    """Consecutive runs ``(lo, hi)`` of rows holding at most ``limit`` entries (at least one row)."""
    cum = np.cumsum(lengths)
    lo = 0
    while lo < len(lengths):
        before = int(cum[lo - 1]) if lo else 0
        hi = max(int(np.searchsorted(cum, before + limit, side="right")), lo + 1)
        yield lo, hi
        lo = hi


def _draw_round(indices, starts, sizes, have, counts, rng) -> np.ndarray:
    """One rejection round for a chunk of ``m`` rows; returns the new ``have`` (int64, (m,)).

    Row ``r`` holds ``have[r]`` distinct values, sorted, at ``indices[starts[r]:]``; it draws
    ``counts[r] - have[r]`` more uniformly from ``range(sizes[r])`` and keeps the union, sorted,
    in the same place. Keys ``r * stride + value`` (int64) sort and deduplicate every row at once.
    """
    m = len(starts)
    missing = counts - have
    if not have.any() and np.all(counts == counts[0]) and np.all(sizes == sizes[0]) \
            and np.all(np.diff(starts) == counts[0]):
        return _draw_first_round(indices, int(starts[0]), m, int(counts[0]), int(sizes[0]), rng)
    draws = rng.integers(0, np.repeat(sizes, missing))  # the round's stream, row after row
    stride = max(int(sizes.max()), 1)
    row_key = np.arange(m, dtype=np.int64) * stride
    keys = np.repeat(row_key, missing) + draws
    if have.any():
        held = indices[np.repeat(starts, have) + _ragged_arange(have)]
        keys = np.concatenate((np.repeat(row_key, have) + held, keys))
    keys.sort()
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]  # sort-based unique: fast
    row = keys // stride
    new_have = np.bincount(row, minlength=m)
    indices[starts[row] + _ragged_arange(new_have)] = keys - row * stride
    return new_have


def _draw_first_round(indices, start: int, m: int, k: int, size: int, rng) -> np.ndarray:
    """:func:`_draw_round` for ``m`` rows that hold nothing yet, each drawing ``k`` values of
    ``range(size)`` into consecutive slots ``indices[start + r k : start + (r + 1) k]`` (fixed fan-in).

    The same draws as the general round (``rng.integers`` with one bound or a repeated one
    yields the same stream), but sorted as an int32 ``(m, k)`` array, row by row, which is about
    ten times faster than sorting int64 keys. Only the rows that drew a value twice (rare when
    ``k`` is far below ``size``) are deduplicated one by one.
    """
    block = indices[start: start + m * k].reshape(m, k)
    block[...] = rng.integers(0, size, size=(m, k), dtype=np.int32)
    block.sort(axis=1)
    have = np.full(m, k, dtype=np.int64)
    twice = np.flatnonzero((block[:, 1:] == block[:, :-1]).any(axis=1))
    if twice.size:
        rows = block[twice]  # (t, k), sorted
        first = np.ones(rows.shape, dtype=bool)
        first[:, 1:] = rows[:, 1:] != rows[:, :-1]
        have[twice] = first.sum(axis=1)
        # row-major order keeps each row's distinct values together and sorted
        indices[np.repeat(start + twice * k, have[twice]) + _ragged_arange(have[twice])] = rows[first]
    return have


def _reject_into(indices, starts, sizes, counts, rng) -> None:
    """Row ``r``: a uniform random ``counts[r]``-subset of ``range(sizes[r])``, counts <= sizes/2,
    written sorted to ``indices[starts[r] : starts[r] + counts[r]]``.

    Rejection in rounds: each round draws, for every row still short, as many values as the row
    lacks and keeps the new distinct ones. The procedure commutes with every relabelling of
    ``range(size)``, so the final set is uniform over subsets; with ``counts <= sizes / 2`` at
    least half of the draws succeed, so the deficit shrinks geometrically (about log2(max
    count) rounds). A round visits its rows in chunks of at most ``_CHUNK`` entries, in row
    order, and finishes before the next begins: the generator's stream is consumed exactly as
    by one vectorised round over all rows, so the chunk size changes no result.
    Cost O(nnz log _CHUNK) time; memory: ``indices``, 8 bytes per row, and one chunk.
    """
    have = np.zeros(len(counts), dtype=np.int64)
    while True:
        need = np.flatnonzero(have < counts)
        if need.size == 0:
            return
        for lo, hi in _chunks(counts[need]):
            rows = need[lo:hi]
            have[rows] = _draw_round(indices, starts[rows], sizes[rows], have[rows], counts[rows], rng)


def _complement_into(indices, starts, sizes, n_excluded) -> None:
    """Row ``r`` holds ``n_excluded[r]`` values of ``range(sizes[r])``, sorted, at
    ``indices[starts[r]:]``; overwrite it with the other ``sizes[r] - n_excluded[r]`` values,
    sorted. Chunked like :func:`_reject_into`; O(sum(sizes)) time."""
    for lo, hi in _chunks(sizes):
        st, sz, ex = starts[lo:hi], sizes[lo:hi], n_excluded[lo:hi]
        excluded = indices[np.repeat(st, ex) + _ragged_arange(ex)]
        first = np.cumsum(sz) - sz  # where each row's candidates begin in `keep`
        keep = np.ones(int(sz.sum()), dtype=bool)
        keep[np.repeat(first, ex) + excluded] = False
        indices[np.repeat(st, sz - ex) + _ragged_arange(sz - ex)] = _ragged_arange(sz)[keep]


def _subsets_into(indices, starts, sizes, counts, rng) -> None:
    """Row ``r``: a uniform random ``counts[r]``-subset of ``range(sizes[r])``, any counts <= sizes,
    written sorted to ``indices[starts[r] : starts[r] + counts[r]]`` (an int array of any width).

    Rows asking for more than half of their range draw the values they *exclude* instead and
    keep the complement (O(sizes[r]) <= O(2 counts[r]) work for such a row), so rejection
    always runs at >= 50% acceptance. The rows that draw directly go first, then the others.
    """
    starts = np.asarray(starts, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    dense = 2 * counts > sizes
    if not dense.any():
        _reject_into(indices, starts, sizes, counts, rng)
        return
    direct = np.flatnonzero(~dense)
    _reject_into(indices, starts[direct], sizes[direct], counts[direct], rng)
    rows = np.flatnonzero(dense)
    st, sz = starts[rows], sizes[rows]
    n_excluded = sz - counts[rows]
    _reject_into(indices, st, sz, n_excluded, rng)
    _complement_into(indices, st, sz, n_excluded)


def _random_subsets(sizes, counts, rng):
    """Row ``r``: a uniform random ``counts[r]``-subset of ``range(sizes[r])``, any counts <= sizes.

    Returns ``(rows, values)`` (int64, row-major sorted); see :func:`_subsets_into`.
    """
    counts = np.asarray(counts, dtype=np.int64)
    values = np.empty(int(counts.sum()), dtype=np.int64)
    _subsets_into(values, np.cumsum(counts) - counts, sizes, counts, rng)
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts), values


def _random_rows(n_out: int, n_in: int, counts, rng) -> sp.csr_matrix:
    """Mask ``(n_out, n_in)``; row ``r`` is a uniform random ``counts[r]``-subset of the inputs,
    drawn straight into the mask's int32 ``indices`` (see :func:`_subsets_into`)."""
    counts = np.asarray(counts, dtype=np.int64)
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if indptr[-1] > _INT32_MAX:  # binomial counts can overshoot the expected nnz
        raise TopologyTooLarge(
            f"a layer of shape {(n_out, n_in)} with {int(indptr[-1]):,} connections does not fit "
            "sparsenn's int32 CSR indices (at most 2**31 - 1)"
        )
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    _subsets_into(indices, indptr[:-1], np.full(n_out, n_in, dtype=np.int64), counts, rng)
    return _csr(indptr, indices, (n_out, n_in))


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
    row, which is the same distribution without touching all ``n_out * n_in`` entries. The
    subsets are drawn straight into the mask's int32 ``indices``, a chunk of rows at a time
    (:func:`_subsets_into`). Cost O(nnz log nnz) time; memory: the mask plus ~100 bytes per
    output neuron and one chunk (~64 MiB at most).

    Too large: raises :class:`TopologyTooLarge` before drawing when the expected nnz
    ``density * n_out * n_in`` exceeds int32 CSR indices, or when the estimated memory, the
    mask's ``5 nnz + 4 n_out`` bytes plus :func:`_drawn_cost`'s temporaries (from density 0.4
    up every row counts as drawn by complement), exceeds :func:`available_memory`.
    """
    _check_rng(rng)
    n_out = _check_int(n_out, "n_out", 1)
    n_in = _check_int(n_in, "n_in", 1)
    density = _check_density(density)
    _check_fits(f"random_sparse {n_out:,} x {n_in:,} at density {density:g}",
                [_bernoulli_cost(n_out, n_in, density)], "use a lower density or fewer neurons")
    counts = rng.binomial(n_in, density, size=n_out)
    return _random_rows(n_out, n_in, counts, rng)


def random_fan_in(n_out: int, n_in: int, fan_in, rng) -> sp.csr_matrix:
    """A random mask ``(n_out, n_in)`` with a fixed in-degree: output ``r`` gets exactly
    ``fan_in`` distinct inputs (or ``fan_in[r]``, given an ``(n_out,)`` array), uniformly at
    random without replacement, independently of the other outputs. Out-degrees are binomial.

    The draws go straight into the mask's int32 ``indices``, a chunk of rows at a time
    (:func:`_subsets_into`); ``random_equivalent(masks, rng, fixed_fan_in=True)`` draws its layers
    the same way, so both give the same mask for the same generator state. Cost O(nnz log
    fan_in) time; memory: the mask plus ~100 bytes per output neuron and one chunk (~64 MiB).
    A 10^6 x 10^6 layer at fan-in 100 (10^8 connections) takes about a second.

    Too large: raises :class:`TopologyTooLarge` before drawing when the nnz exceeds int32 CSR
    indices or the estimated memory (:func:`_drawn_cost`) exceeds :func:`available_memory`.
    """
    _check_rng(rng)
    n_out = _check_int(n_out, "n_out", 1)
    n_in = _check_int(n_in, "n_in", 1)
    if np.ndim(fan_in) == 0:
        k = _check_int(fan_in, "fan_in", 1, n_in)
        counts = np.full(n_out, k, dtype=np.int64)
    else:
        counts = np.asarray(fan_in)
        if counts.shape != (n_out,) or counts.dtype.kind not in "iu":
            raise ValueError(f"fan_in must be an integer or an integer array of shape ({n_out},), "
                             f"got {counts.dtype} array of shape {counts.shape}")
        counts = counts.astype(np.int64)
        bad = np.flatnonzero((counts < 0) | (counts > n_in))
        if bad.size:
            raise ValueError(f"fan_in[{bad[0]}] = {counts[bad[0]]} is outside [0, n_in = {n_in}]")
    nnz = int(counts.sum())
    _check_fits(f"random_fan_in {n_out:,} x {n_in:,} with {nnz:,} connections",
                [_drawn_cost(n_out, n_in, nnz, bool(np.any(2 * counts > n_in)))],
                "use a lower fan_in or fewer neurons")
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
    Cost O(nnz log nnz + n_in log n_in) time; memory: the mask plus ~100 bytes per neuron and
    one chunk of draws (the top-ups are drawn into the mask's ``indices``, then each row's seeds
    are put in and the row sorted, a chunk of rows at a time).

    Too large: raises :class:`TopologyTooLarge` before drawing when ``nnz = n_out * in_degree``
    exceeds int32 CSR indices, or when the estimated memory, the mask's ``5 nnz + 4 n_out``
    bytes plus :func:`_drawn_cost`'s temporaries, exceeds :func:`available_memory`.
    """
    _check_rng(rng)
    n_out = _check_int(n_out, "n_out", 1)
    n_in = _check_int(n_in, "n_in", 1)
    in_degree = _check_int(in_degree, "in_degree", 1, n_in)
    _check_fits(f"xnet {n_out:,} x {n_in:,} with in-degree {in_degree:,}",
                [_drawn_cost(n_out, n_in, n_out * in_degree, 2 * in_degree > n_in)],
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

    # Row r owns the slots indices[r k : (r + 1) k] (k = in_degree): its s_r seeds, then its
    # top-up. Top up: row r draws k - s_r of its n_in - s_r unseeded inputs, as positions a in
    # range(n_in - s_r), into its last k - s_r slots.
    k = in_degree
    indices = np.empty(n_out * k, dtype=np.int32)
    _subsets_into(indices, k * np.arange(n_out, dtype=np.int64) + n_seeds, n_in - n_seeds,
                  k - n_seeds, rng)
    # With the row's seeds sorted, s_0 < s_1 < ..., and t_j = s_j - j, the a-th unseeded input is
    # a + #{j : t_j <= a}; keyed per row this is one searchsorted. Then the seeds go into the
    # first slots and each row is sorted, a chunk of rows at a time.
    stride = n_in + 1  # t_j and a are both in [0, n_in]
    t_keys = seed_rows * stride + (seed_cols - (np.arange(n_dealt) - seed_ptr[seed_rows]))
    rows_per_chunk = max(1, _CHUNK // k)
    for lo in range(0, n_out, rows_per_chunk):
        hi = min(lo + rows_per_chunk, n_out)
        block = indices[lo * k: hi * k].reshape(hi - lo, k)  # (rows, k) view
        seeded = np.arange(k)[None, :] < n_seeds[lo:hi, None]  # (rows, k): the seeds' slots
        rows = np.broadcast_to(np.arange(lo, hi)[:, None], block.shape)[~seeded]
        a = block[~seeded].astype(np.int64)
        block[~seeded] = a + np.searchsorted(t_keys, rows * stride + a, side="right") - seed_ptr[rows]
        block[seeded] = seed_cols[seed_ptr[lo]: seed_ptr[hi]]  # row-major: by row, then column
        block.sort(axis=1)
    return _csr(k * np.arange(n_out + 1, dtype=np.int64), indices, (n_out, n_in))


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
        costs = [_drawn_cost(m.shape[0], m.shape[1], m.shape[0] * k, 2 * k > m.shape[1])
                 for m, k in zip(masks, fan_ins)]
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
_LIST_OPTIONS = ("--radices", "--widths", "--B", "--trim", "--out-degrees")


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
    from sparsenn import cli  # the number types that name their flag

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
               "  python -m sparsenn.topology widths --widths 800,300,100 --out-degrees 30,10\n"
               "  python -m sparsenn.topology mlp --inputs 784 --widths 262144x4 --fan-in 32\n"
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
        p.add_argument("--max-path-entries", type=cli.nonneg_int, default=MAX_PATH_ENTRIES, metavar="N",
                       help="skip exact path counting when an intermediate path matrix has "
                            f"more than N entries (default {MAX_PATH_ENTRIES})")
        p.add_argument("--max-path-work", type=cli.nonneg_float, default=MAX_PATH_WORK, metavar="W",
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

    p = sub.add_parser("widths", help="a RadiX-Net from node widths and out-degrees (reduced format)",
                       description="N' = gcd(widths), B_i = n_i / N', radices D_i / B_(i+1).")
    p.add_argument("--widths", required=True, metavar="N0,N1,...", help="node-layer widths")
    p.add_argument("--out-degrees", required=True, metavar="D0,D1,...",
                   help="out-degree of every neuron of each layer, one per layer")
    common(p)

    p = sub.add_parser("mlp", help="the RadiX-Net of a sparse MLP: inputs -> hidden widths at a "
                                   "fixed hidden in-degree (radix_mlp)")
    p.add_argument("--inputs", type=int, default=784, help="input features (default 784)")
    p.add_argument("--widths", required=True, metavar="W1,W2,...",
                   help="hidden widths, e.g. 262144x4")
    p.add_argument("--fan-in", required=True, type=int, help="in-degree of the hidden layers")
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
    elif args.command == "widths":
        widths = _int_list(args.widths, "--widths")
        degrees = _int_list(args.out_degrees, "--out-degrees", "out-degree")
        masks = radix_widths(widths, degrees)
        n_prime = math.gcd(*widths)
        print(f"RadiX-Net (reduced format): widths {widths}, out-degrees {degrees}, N' = {n_prime}, "
              f"B = {[w // n_prime for w in widths]}")
    elif args.command == "mlp":
        widths = _int_list(args.widths, "--widths")
        masks = radix_mlp(args.inputs, widths, args.fan_in)
        print(f"RadiX-Net MLP: {args.inputs} inputs -> hidden widths {widths}, hidden in-degree "
              f"{args.fan_in}, N' = {math.gcd(*widths)} (the dense logits layer is the model's)")
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
            costs = [_drawn_cost(o, i, o * k, 2 * k > i) for i, o in pairs]
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
        if getattr(args, "save", None):  # before the build, which can take a while, not after
            from sparsenn.io import check_output_path

            check_output_path(args.save, "--save")
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
