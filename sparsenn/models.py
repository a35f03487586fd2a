"""Model builders: LeNet-300-100 on dense and sparse topologies.

``lenet300(topology, rng)`` returns a ``Sequential`` of weight layers and ReLUs,
784 -> hidden... -> 10, features-major. Topologies:

    dense         784-300-100-10, every layer dense
    radix         RadiX-Net preset (sparsenn.topology.lenet300_radix): 784-300-100 at 90%
                  sparsity, then a dense 100 -> 10 logits layer (as in the 2019 study)
    radix-wide    784-3000-100 at 90% sparsity (as many connections as dense), dense logits
    random        the random equivalent of radix (Bernoulli, same per-layer density)
    random-wide   the random equivalent of radix-wide
    xnet          X-Net expanders with radix's mean in-degree, 784-300-100, dense logits
    masks=[...]   any list of (n_out, n_in) masks: 2 masks -> dense logits layer added,
                  3 masks -> every layer sparse (e.g. a pruned LeNet-300-100)
"""

from __future__ import annotations

import numpy as np

from sparsenn import topology
from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear

TOPOLOGIES = ("dense", "radix", "radix-wide", "random", "random-wide", "xnet")
N_INPUTS, N_CLASSES = 784, 10


def lenet300_masks(topology_name: str, rng) -> list | None:
    """The hidden-layer masks of a named topology (None for dense)."""
    if topology_name == "dense":
        return None
    if topology_name in ("radix", "radix-wide"):
        return topology.PRESETS[topology_name]()
    if topology_name in ("random", "random-wide"):
        base = topology.PRESETS["radix" if topology_name == "random" else "radix-wide"]()
        return topology.random_equivalent(base, rng)
    if topology_name == "xnet":
        base = topology.lenet300_radix()
        return [topology.xnet(m.shape[0], m.shape[1], max(1, round(m.nnz / m.shape[0])), rng) for m in base]
    raise ValueError(f"unknown topology {topology_name!r}; choose one of {', '.join(TOPOLOGIES)} or give masks")


def sequential_from_masks(masks, rng, n_inputs=None, n_classes=None, init="kaiming_normal",
                          fan="actual", dtype=np.float32) -> Sequential:
    """Sparse layers on ``masks`` with ReLUs between; a dense logits layer is added when the
    last mask does not already end at ``n_classes`` outputs."""
    shapes = [tuple(m.shape) for m in masks]
    if n_inputs is not None and shapes[0][1] != n_inputs:
        raise ValueError(f"first mask has {shapes[0][1]} inputs, the data has {n_inputs} features")
    for i in range(1, len(shapes)):
        if shapes[i][1] != shapes[i - 1][0]:
            raise ValueError(f"masks do not chain: mask {i - 1} is {shapes[i - 1]}, mask {i} is {shapes[i]} "
                             f"(each mask is (n_out, n_in); n_in must equal the previous n_out)")
    layers = []
    for i, m in enumerate(masks):
        if i:
            layers.append(ReLU())
        layers.append(SparseLinear(m, rng, init=init, fan=fan, dtype=dtype, name=f"fc{i + 1}"))
    if n_classes is not None and shapes[-1][0] != n_classes:
        layers += [ReLU(), Linear(shapes[-1][0], n_classes, rng, init=init, dtype=dtype, name=f"fc{len(masks) + 1}")]
    return Sequential(*layers)


def lenet300(topology_name: str = "dense", rng=None, masks=None, init="kaiming_normal", fan="actual",
             dtype=np.float32) -> Sequential:
    """LeNet-300-100 (784 -> 300 -> 100 -> 10, ReLU) on a topology; see the module docstring."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if masks is None:
        masks = lenet300_masks(topology_name, rng)
    if masks is None:
        return Sequential(
            Linear(784, 300, rng, init=init, dtype=dtype, name="fc1"), ReLU(),
            Linear(300, 100, rng, init=init, dtype=dtype, name="fc2"), ReLU(),
            Linear(100, 10, rng, init=init, dtype=dtype, name="fc3"),
        )
    return sequential_from_masks(masks, rng, N_INPUTS, N_CLASSES, init=init, fan=fan, dtype=dtype)


def layer_table(model) -> str:
    """Per weight layer: shape, nnz, density, and stored bytes (CSR or dense) vs dense bytes."""
    rows = [f"{'layer':<6} {'shape (out, in)':>16} {'nnz':>10} {'density':>8} {'stored bytes':>13} {'dense bytes':>12}"]
    tot_nnz = tot_stored = tot_dense = 0
    for layer in model.weight_layers():
        n_out, n_in = layer.shape
        dense_bytes = 4 * n_out * n_in
        stored = layer.pattern.nbytes() if isinstance(layer, SparseLinear) else dense_bytes
        kind = "csr" if isinstance(layer, SparseLinear) else "dense"
        rows.append(f"{layer.name:<6} {f'({n_out}, {n_in})':>16} {layer.nnz:>10,} {layer.nnz / (n_out * n_in):>8.4f} "
                    f"{stored:>9,} {kind:<3} {dense_bytes:>12,}")
        tot_nnz += layer.nnz
        tot_stored += stored
        tot_dense += dense_bytes
    rows.append(f"{'total':<6} {'':>16} {tot_nnz:>10,} {'':>8} {tot_stored:>13,} {tot_dense:>12,}")
    return "\n".join(rows)
