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
    random, factor=f   the 2019 study's random network by factor f (its table (c)): f < 1
                  keeps 784-300-100 at density f; f > 1 widens hidden-1 to 784-300f-100 at
                  density 1/f (as many connections as dense); f = 1 is dense. Logits dense.
                  (RadiX-Nets by factor are the presets: radix is f = 0.1, radix-wide f = 10.)

Options of the 2019 study's training recipe (``sparsenn.recipes``): ``init`` takes a scheme
name or an ``init.FixedTruncatedNormal(std)``; ``fc_bias`` sets every bias; ``relu_logits``
puts a ReLU after the logits layer too (their code did; the loss then sees logits >= 0).

Masks are checked by :func:`sparsenn.layers.as_mask` (boolean, 0/1 integers or a scipy.sparse
pattern; never floats). A mask with no connections is refused unless ``allow_empty=True``
(the layer would pass on only its bias and the model would train at chance).
"""

from __future__ import annotations

import numpy as np

from sparsenn import topology
from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear, as_mask

TOPOLOGIES = ("dense", "radix", "radix-wide", "random", "random-wide", "xnet")
N_INPUTS, N_CLASSES = 784, 10


def lenet300_masks(topology_name: str, rng, factor: float | None = None) -> list | None:
    """The hidden-layer masks of a named topology (None for dense); ``factor``: the random
    network by factor f (module docstring), with ``topology_name="random"`` only."""
    if factor is not None:
        if topology_name != "random" or not 0 < factor:
            raise ValueError(f"factor applies to the 'random' topology and must be > 0, got "
                             f"{topology_name!r} with factor {factor}")
        if factor == 1:
            return None
        width, density = (300, factor) if factor < 1 else (round(300 * factor), 1 / factor)
        return [topology.random_sparse(width, N_INPUTS, density, rng), topology.random_sparse(100, width, density, rng)]
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
                          fan="actual", dtype=np.float32, allow_empty=False) -> Sequential:
    """Sparse layers fc1, fc2, ... on ``masks`` with ReLUs between; a dense logits layer is
    added when the last mask does not already end at ``n_classes`` outputs. ``allow_empty``:
    accept masks with no connections (see :class:`~sparsenn.layers.SparseLinear`)."""
    masks = [as_mask(m, f"fc{i + 1}") for i, m in enumerate(masks)]  # checked before their shapes are read
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
        layers.append(SparseLinear(m, rng, init=init, fan=fan, dtype=dtype, name=f"fc{i + 1}",
                                   allow_empty=allow_empty))
    if n_classes is not None and shapes[-1][0] != n_classes:
        layers += [ReLU(), Linear(shapes[-1][0], n_classes, rng, init=init, dtype=dtype, name=f"fc{len(masks) + 1}")]
    return Sequential(*layers)


def lenet300(topology_name: str = "dense", rng=None, masks=None, init="kaiming_normal", fan="actual",
             dtype=np.float32, allow_empty=False, factor=None, fc_bias=0.0, relu_logits=False) -> Sequential:
    """LeNet-300-100 (784 -> 300 -> 100 -> 10, ReLU) on a topology; see the module docstring."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if masks is None:
        masks = lenet300_masks(topology_name, rng, factor)
    if masks is None:
        model = Sequential(
            Linear(784, 300, rng, init=init, dtype=dtype, name="fc1"), ReLU(),
            Linear(300, 100, rng, init=init, dtype=dtype, name="fc2"), ReLU(),
            Linear(100, 10, rng, init=init, dtype=dtype, name="fc3"),
        )
    else:
        model = sequential_from_masks(masks, rng, N_INPUTS, N_CLASSES, init=init, fan=fan, dtype=dtype,
                                      allow_empty=allow_empty)
    for layer in model.weight_layers():
        layer.bias.value[...] = fc_bias
    if relu_logits:
        model.layers.append(ReLU(name="relu_logits"))
    return model


def dead_neurons(layer) -> tuple:
    """(outputs with no inputs, inputs feeding no output) of a weight layer's pattern.

    Read from the row pointers of W and of its transpose: O(n_out + n_in), no dense matrix.
    A dead output passes on only its bias; a dead input's activation is computed and thrown
    away. Both are structural (by the mask), not units that ReLU happens to silence. For a
    convolution, outputs are filters and inputs are the (channel, ky, kx) taps of the filter
    bank. A dense layer has none.
    """
    if not isinstance(layer, SparseLinear):
        return 0, 0
    p = layer.pattern
    return int(np.count_nonzero(np.diff(p.indptr) == 0)), int(np.count_nonzero(np.diff(p.t_indptr) == 0))


def layer_table(model) -> str:
    """Per weight layer: shape, nnz, density, stored bytes (CSR or dense) vs dense bytes, and
    the dead neurons of its pattern (:func:`dead_neurons`: outputs with no inputs / inputs
    feeding nothing), which a model built from masks allows but which waste their layer."""
    rows = [f"{'layer':<6} {'shape (out, in)':>16} {'nnz':>10} {'density':>8} {'stored bytes':>17} "
            f"{'dense bytes':>12} {'dead out/in':>12}"]
    tot_nnz = tot_stored = tot_dense = tot_dead_out = tot_dead_in = 0
    for layer in model.weight_layers():
        n_out, n_in = layer.shape
        dense_bytes = 4 * n_out * n_in
        stored = layer.pattern.nbytes() if isinstance(layer, SparseLinear) else dense_bytes
        kind = "csr" if isinstance(layer, SparseLinear) else "dense"
        dead_out, dead_in = dead_neurons(layer)
        rows.append(f"{layer.name:<6} {f'({n_out}, {n_in})':>16} {layer.nnz:>10,} {layer.nnz / (n_out * n_in):>8.4f} "
                    f"{stored:>11,} {kind:<5} {dense_bytes:>12,} {f'{dead_out}/{dead_in}':>12}")
        tot_nnz += layer.nnz
        tot_stored += stored
        tot_dense += dense_bytes
        tot_dead_out += dead_out
        tot_dead_in += dead_in
    rows.append(f"{'total':<6} {'':>16} {tot_nnz:>10,} {'':>8} {tot_stored:>11,} {'':<5} {tot_dense:>12,} "
                f"{f'{tot_dead_out}/{tot_dead_in}':>12}")
    rows.append("dead out/in: outputs with no inputs / inputs feeding no output, by the mask")
    return "\n".join(rows)


# =============================================================================================
# LeNet-5 (convolutional): the 2019 study's TensorFlow variant and the classic Caffe one
# =============================================================================================
#
# variant="tf" (the 2019 TensorFlow code; image activations are (C, H, W, batch)):
#
#     conv1 5x5, 20 filters, same padding -> ReLU -> max-pool -> LRN
#     conv2 5x5, 50 filters, same padding -> ReLU -> LRN -> max-pool
#     flatten -> fc1 (384) -> ReLU -> fc2 (10 logits)
#
#     MNIST    28x28x1,  2x2/2 pooling:            28 -> 14 -> 7,   fc1 50*7*7 = 2450 -> 384
#     CIFAR-10 24x24x3 crops, 3x3/2 'same' pooling: 24 -> 12 -> 6,   fc1 50*6*6 = 1800 -> 384
#
# variant="caffe" (Caffe's examples/mnist/lenet.prototxt): conv 5x5 (20, no padding) -> max-pool
# 2x2 -> conv 5x5 (50, no padding) -> max-pool 2x2 -> fc1 500 -> ReLU -> fc2 10; no ReLU after
# the convolutions and no LRN, as in that file. MNIST: 28 -> 24 -> 12 -> 8 -> 4, 800 -> 500.
#
# Topologies: "dense"; "random": conv2 and fc1 Bernoulli-sparse at ``density`` (default 0.1, i.e.
# 90% sparse; sparsenn.topology.random_sparse), conv1 and the logits dense, as in the study;
# masks=[conv1, conv2, fc1, fc2]: any four masks (a conv mask is (C_out, C_in*kh*kw)), e.g. a
# pruned LeNet-5; a full mask gives a dense layer. "random" with factor=f: the study's random
# network by factor f (its table (c)): f < 1 keeps the widths at density f; f > 1 gives conv2
# 50f filters (so fc1 50f*7*7 inputs) at density 1/f; f = 1 is dense.
#
# The 2019 recipe's options (sparsenn.recipes): init for the fully connected layers, conv_init
# for the convolutions (a scheme name or init.FixedTruncatedNormal(std)), fc_bias for the fully
# connected biases (convolution biases stay 0), relu_logits, and conv_weight_decay=False to
# exempt the convolution kernels from the optimiser's weight decay (Parameter.decay).

LENET5_TOPOLOGIES = ("dense", "random")
LENET5_VARIANTS = ("tf", "caffe")
LENET5_DATASETS = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 24, 24)}


def lenet5_spec(dataset: str = "mnist", variant: str = "tf", width: float = 1.0) -> dict:
    """The architecture as data: input_shape, conv and pool settings, hidden width, and the
    four weight-layer shapes ``(n_out, n_in)`` (conv ones as filter banks (C_out, C_in*k*k)).
    ``width``: conv2's filters times this (50 -> round(50 width)), and so fc1's inputs."""
    if dataset not in LENET5_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} for LeNet-5; choose one of {', '.join(LENET5_DATASETS)}")
    if variant not in LENET5_VARIANTS:
        raise ValueError(f"unknown LeNet-5 variant {variant!r}; choose one of {', '.join(LENET5_VARIANTS)}")
    from sparsenn.im2col import conv_geometry

    c, h, w = LENET5_DATASETS[dataset]
    if variant == "tf":
        conv_pad, hidden, lrn = "same", 384, True
        pool = (2, 2, "valid") if dataset != "cifar10" else (3, 2, "same")  # (kernel, stride, padding)
    else:
        conv_pad, hidden, lrn, pool = "valid", 500, False, (2, 2, "valid")
    filters, k = (20, round(50 * width)), 5
    shapes, size, channels = [], (h, w), c
    for f in filters:
        oh, ow, _, _ = conv_geometry(*size, k, k, 1, 1, conv_pad)
        size = conv_geometry(oh, ow, pool[0], pool[0], pool[1], pool[1], pool[2])[:2]
        shapes.append((f, channels * k * k))
        channels = f
    flat = channels * size[0] * size[1]
    shapes += [(hidden, flat), (10, hidden)]
    return dict(dataset=dataset, variant=variant, input_shape=(c, h, w), filters=filters, kernel=k,
                conv_padding=conv_pad, pool=pool, lrn=lrn, hidden=hidden, flat=flat, shapes=shapes)


def lenet5_masks(topology_name: str, spec: dict, rng, density: float = 0.1) -> list | None:
    """The four masks of a named topology (None for dense): conv1 and fc2 full, conv2 and fc1
    Bernoulli at ``density`` for "random"."""
    if topology_name == "dense":
        return None
    if topology_name == "random":
        s = spec["shapes"]
        full = lambda shape: np.ones(shape, dtype=bool)  # noqa: E731
        return [full(s[0]), topology.random_sparse(*s[1], density, rng),
                topology.random_sparse(*s[2], density, rng), full(s[3])]
    raise ValueError(f"unknown topology {topology_name!r} for LeNet-5; choose one of "
                     f"{', '.join(LENET5_TOPOLOGIES)} or give masks")


def _is_full(mask) -> bool:
    """mask: a boolean CSR matrix from as_mask."""
    return mask.nnz == mask.shape[0] * mask.shape[1]


def lenet5(dataset: str = "mnist", topology: str = "dense", rng=None, masks=None, variant: str = "tf",
           density: float = 0.1, init="kaiming_normal", fan: str = "actual", dtype=np.float32,
           allow_empty: bool = False, factor=None, conv_init=None, fc_bias=0.0, relu_logits=False,
           conv_weight_decay=True) -> Sequential:
    """LeNet-5 for ``dataset`` ("mnist", "fashion-mnist" or "cifar10" 24x24 crops) as a
    ``Sequential``; input (C*H*W, batch) flat or (C, H, W, batch), output (10, batch) logits.
    See the section comment above for the variants, topologies and the 2019 recipe's options
    (``conv_init=None``: the convolutions use ``init`` too). ``masks``: four masks in
    the order conv1, conv2, fc1, fc2 (conv masks (C_out, C_in*k*k)); a full mask -> dense layer.
    ``allow_empty``: accept masks with no connections (see :class:`~sparsenn.layers.SparseLinear`).
    """
    from sparsenn.conv import Conv2d, Flatten, LocalResponseNorm, MaxPool2d, SparseConv2d

    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    width = 1.0
    if factor is not None:
        if topology != "random" or masks is not None or not 0 < factor:
            raise ValueError(f"factor applies to the 'random' topology (no masks) and must be > 0, got "
                             f"{topology!r} with factor {factor}")
        width, density = (1.0, factor) if factor < 1 else (factor, 1 / factor)
        topology = "dense" if factor == 1 else topology
    spec = lenet5_spec(dataset, variant, width)
    if masks is None:
        masks = lenet5_masks(topology, spec, rng, density)
    if masks is not None:
        masks = list(masks)
        if len(masks) != 4:
            raise ValueError(f"LeNet-5 needs 4 masks (conv1, conv2, fc1, fc2), got {len(masks)}")
        # checked first: a float mask must not pass _is_full below and become a dense layer
        masks = [as_mask(m, name) for name, m in zip(("conv1", "conv2", "fc1", "fc2"), masks)]
        for name, m, want in zip(("conv1", "conv2", "fc1", "fc2"), masks, spec["shapes"]):
            if tuple(m.shape) != tuple(want):
                raise ValueError(f"mask for {name} has shape {tuple(m.shape)}, the {variant} LeNet-5 on {dataset} "
                                 f"needs {tuple(want)} (conv masks are (C_out, C_in*kh*kw))")
    sparse = [masks is not None and not _is_full(m) for m in (masks or [None] * 4)]
    k, (f1, f2), c_in = spec["kernel"], spec["filters"], spec["input_shape"][0]
    pk, ps, pp = spec["pool"]

    def conv(i, c, f, **kw):
        kw.update(padding=spec["conv_padding"], init=init if conv_init is None else conv_init, dtype=dtype,
                  name=f"conv{i + 1}")
        if sparse[i]:
            layer = SparseConv2d(c, f, k, masks[i], rng, fan=fan, allow_empty=allow_empty, **kw)
        else:
            layer = Conv2d(c, f, k, rng, **kw)
        layer.weight.decay = conv_weight_decay
        return layer

    def fc(i):
        n_out, n_in = spec["shapes"][i]
        if sparse[i]:
            layer = SparseLinear(masks[i], rng, init=init, fan=fan, dtype=dtype, name=f"fc{i - 1}",
                                 allow_empty=allow_empty)
        else:
            layer = Linear(n_in, n_out, rng, init=init, dtype=dtype, name=f"fc{i - 1}")
        layer.bias.value[...] = fc_bias
        return layer

    pool = lambda i: MaxPool2d(pk, ps, pp, name=f"pool{i}")  # noqa: E731
    layers = [conv(0, c_in, f1, input_shape=spec["input_shape"])]
    if spec["lrn"]:  # TF: conv -> ReLU -> pool -> LRN, then conv -> ReLU -> LRN -> pool
        layers += [ReLU(), pool(1), LocalResponseNorm(name="norm1"),
                   conv(1, f1, f2), ReLU(), LocalResponseNorm(name="norm2"), pool(2)]
    else:  # Caffe: conv -> pool -> conv -> pool
        layers += [pool(1), conv(1, f1, f2), pool(2)]
    layers += [Flatten(), fc(2), ReLU(), fc(3)]
    if relu_logits:
        layers.append(ReLU(name="relu_logits"))
    return Sequential(*layers)


# =============================================================================================
# Sparse MLPs at scale: n_inputs -> widths[0] -> ... -> widths[-1] -> n_classes
# =============================================================================================
#
# Hidden widths like 262,144 x 4 (a million neurons): a dense layer of that width would need
# 262,144^2 weights (275 GB for four), so every hidden layer is sparse and everything here,
# from drawing the topology to building the layers, costs O(connections), never O(neurons^2).
# The logits layer is dense: widths[-1] x n_classes weights (2.6M at 262,144 x 10, a tenth of
# one hidden layer's connections), and every class sees every neuron of the last hidden layer.
#
#     radix              sparsenn.topology.radix_mlp: one RadiX-Net over the hidden layers, in-degree
#                        fan_in in every hidden layer; the input layer reads the n_inputs pixels
#                        placed evenly on a padded input, so its in-degree is about
#                        n_inputs / (fan_in / B) (24 or 25 for 784 pixels, fan-in 32, 2^k widths)
#     random             fan_in: every neuron of every sparse layer exactly fan_in distinct inputs,
#                        uniform (topology.random_fan_in); density: Bernoulli at that density
#     random-equivalent  the random equivalent of radix: every neuron keeps its RadiX in-degree,
#                        its inputs drawn uniformly: the same connections per layer and per neuron
#     xnet               X-Net expanders (topology.xnet): in-degree fan_in, every input used

MLP_TOPOLOGIES = ("radix", "random", "random-equivalent", "xnet")


def check_sparse_mlp(widths, topology_name: str = "radix", fan_in=None, density=None,
                     n_inputs: int = N_INPUTS) -> None:
    """Raise the ValueError that :func:`sparse_mlp` would raise for these arguments (a RadiX
    structure that cannot be built, a fan-in over a layer's inputs, a model over the memory
    available: :class:`sparsenn.topology.TopologyTooLarge`), without building anything: for
    scripts that check every model of a study before training the first."""
    _check_mlp_args(widths, topology_name, fan_in, density, n_inputs)
    if topology_name in ("radix", "random-equivalent"):
        _radix_structure(topology_name, topology.check_radix_mlp, n_inputs, widths, fan_in)


def _radix_structure(topology_name, build, *args):
    """``build(*args)`` (the RadiX-Net MLP or its check); a "random-equivalent" model's error
    says that its in-degrees come from that RadiX-Net, which is why the widths must fit one."""
    try:
        return build(*args)
    except ValueError as e:
        if topology_name == "radix" or isinstance(e, topology.TopologyTooLarge):
            raise
        raise ValueError(f"random-equivalent takes each neuron's in-degree from the RadiX-Net of the "
                         f"same widths and fan_in, which cannot be built: {e} (sparse_mlp's topology 'random' "
                         f"draws fan_in inputs per neuron uniformly and has no such limit)") from None


def _check_mlp_args(widths, topology_name, fan_in, density, n_inputs) -> None:
    """The argument checks of :func:`sparse_mlp_masks`; the RadiX structure's own are
    :func:`sparsenn.topology.radix_mlp`'s, made when it builds."""
    if topology_name not in MLP_TOPOLOGIES:
        raise ValueError(f"unknown sparse MLP topology {topology_name!r}; choose one of {', '.join(MLP_TOPOLOGIES)}")
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) == 0:
        raise ValueError(f"widths must be a non-empty list of hidden-layer widths, got {widths!r}")
    if (fan_in is None) == (density is None):
        raise ValueError(f"give exactly one of fan_in (a fixed in-degree) and density (Bernoulli), "
                         f"got fan_in={fan_in!r}, density={density!r}")
    if density is not None and topology_name != "random":
        raise ValueError(f"density applies to the 'random' topology; {topology_name!r} takes fan_in")
    if fan_in is not None and (isinstance(fan_in, bool) or not isinstance(fan_in, (int, np.integer))
                               or fan_in < 1):
        raise ValueError(f"fan_in must be an integer >= 1 (the in-degree of every neuron), got {fan_in!r}")
    if topology_name in ("radix", "random-equivalent"):
        return
    n_ins = [n_inputs] + list(widths[:-1])
    if fan_in is not None:
        for i, (n_out, n_in) in enumerate(zip(widths, n_ins)):
            if fan_in > n_in:
                raise ValueError(f"fan_in = {fan_in} exceeds the {n_in} inputs of layer fc{i + 1} "
                                 f"({n_in} -> {n_out}); use fan_in <= {min(n_ins)}")


def sparse_mlp_masks(widths, topology_name: str = "radix", fan_in=None, density=None, rng=None,
                     n_inputs: int = N_INPUTS) -> list:
    """The hidden-layer masks of :func:`sparse_mlp`: ``(widths[0], n_inputs)``,
    ``(widths[1], widths[0])``, ... as boolean CSR; see the section comment for the topologies."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    _check_mlp_args(widths, topology_name, fan_in, density, n_inputs)
    n_ins = [n_inputs] + list(widths[:-1])
    pairs = list(zip(widths, n_ins))  # (n_out, n_in) of each sparse layer
    if topology_name in ("radix", "random-equivalent"):
        masks = _radix_structure(topology_name, topology.radix_mlp, n_inputs, widths, fan_in)
        if topology_name == "radix":
            return masks
        # replace each RadiX layer as soon as its random twin is drawn: one extra layer alive
        for i, m in enumerate(masks):
            masks[i] = topology.random_fan_in(*m.shape, np.diff(m.indptr), rng)
        return masks
    if density is not None:
        return [topology.random_sparse(n_out, n_in, density, rng) for n_out, n_in in pairs]
    if topology_name == "xnet":
        return [topology.xnet(n_out, n_in, fan_in, rng) for n_out, n_in in pairs]
    return [topology.random_fan_in(n_out, n_in, fan_in, rng) for n_out, n_in in pairs]


READOUT_WIDTH = 65536  # sparse_mlp: readouts wider than this get a learning rate scaled by READOUT_WIDTH / width


def sparse_mlp(widths, topology: str = "radix", fan_in=None, density=None, rng=None,
               n_inputs: int = N_INPUTS, n_classes: int = N_CLASSES, init="kaiming_normal",
               fan: str = "actual", dtype=np.float32, readout_lr_scale=None) -> Sequential:
    """A sparse MLP ``n_inputs -> widths[0] -> ... -> widths[-1] -> n_classes`` with ReLUs,
    features-major: input ``(n_inputs, batch)``, output ``(n_classes, batch)`` logits.

    Every hidden layer is a :class:`SparseLinear` on a mask of ``topology`` ("radix", "random",
    "random-equivalent", "xnet"; see the section comment above); the logits layer is a dense
    :class:`Linear`. ``fan_in``: the in-degree of every neuron (radix: of every hidden-to-hidden
    layer); ``density``: Bernoulli density, "random" only; give exactly one. For a RadiX model and
    a random one of the same size, build "radix" and "random-equivalent" with the same fan_in.

    Initialisation as in LeNet (:func:`lenet300`): ``init`` with each sparse weight scaled by its
    neuron's actual fan-in (``fan="actual"``, see ``sparsenn.init``). The topology is drawn first,
    then the weights, layer by layer, from ``rng``. Cost O(connections) time and memory.

    readout_lr_scale: the factor on the learning rate of the dense logits layer's weights
    (``Parameter.lr_scale``); by default ``min(1, READOUT_WIDTH / widths[-1])``: 1 up to 65,536
    hidden neurons, 1/4 at 262,144 (see the comment in the code).
    """
    masks = sparse_mlp_masks(widths, topology, fan_in, density, rng, n_inputs)
    layers = []
    for i in range(len(masks)):
        if i:
            layers.append(ReLU(inplace=True))  # over the layer's output: two activation buffers fewer
        layers.append(SparseLinear(masks[i], rng, init=init, fan=fan, dtype=dtype, name=f"fc{i + 1}"))
        masks[i] = None  # the layer holds its own CSR copy
    readout = Linear(int(widths[-1]), n_classes, rng, init=init, dtype=dtype, name=f"fc{len(widths) + 1}")
    # A step of the dense readout's weights moves each logit by about lr * |h|^2, |h|^2 growing
    # with the width (measured at lr 0.1: a loss of 12 at step 50 in a 4,096-wide model, 167 at
    # 65,536, where the run still recovered and reached 97.18% in one epoch). Wider readouts get
    # a learning rate scaled to keep that step what it is at READOUT_WIDTH, as muP scales a
    # readout (Yang et al., 2021). Scaling from 1,024 up was tried and cost 1-1.7 points of
    # accuracy after one epoch at 16,384 and 65,536 neurons: the readout then learns too slowly.
    readout.weight.lr_scale = min(1.0, READOUT_WIDTH / int(widths[-1])) if readout_lr_scale is None else readout_lr_scale
    layers += [ReLU(inplace=True), readout]
    return Sequential(*layers)
