"""Where a training step of a large sparse MLP goes: forward, backward, the gradient exchange
and the optimiser, timed separately (median over warm steps), in one process or under MPI.

    python examples/profile_step.py --width 65536                 # 1 rank, all threads, batch 100
    mpiexec -n 2 python examples/profile_step.py --width 65536    # 2 ranks x 1 thread, 50 each

The model is the scaling study's (``examples/scale.py``): 784 -> depth x width RadiX-Net layers
(fan-in 32) -> 10, SGD with Nesterov momentum. The batch is synthetic (random pixels and labels:
the time of a step does not depend on them); under MPI each rank takes its share of the global
batch, as in training, and the ranks meet at a barrier before each step so that one rank's
phases are not charged to another's.

Under MPI, "exchange" is the whole gradient sum (in shared memory when every rank is on one
machine) and "optimiser" the whole step. With ``SPARSENN_SHARE_WEIGHTS=1`` the ranks on one
machine share one copy of the weights (:meth:`sparsenn.distributed.DataParallel.start`):
"exchange" is then the barrier after the backward, and "optimiser" is this rank's part of the
gradient sum and of the update, and the barrier after it.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import sparsenn  # noqa: F401  (configures the thread pools before any kernel runs)
from sparsenn import cli, distributed
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.models import check_sparse_mlp, sparse_mlp
from sparsenn.optim import SGD
from sparsenn.runtime import denormals_flushed, describe_machine, machine_report

from bench_lenet5 import Timer  # the per-step timer of the LeNet-5 benchmark (examples/ is on sys.path)

PHASES = ("forward", "backward", "exchange", "optimiser", "step")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=cli.positive_int, default=65536, help="neurons per hidden layer")
    p.add_argument("--depth", type=cli.positive_int, default=4, help="hidden layers")
    p.add_argument("--fan-in", type=cli.positive_int, default=32)
    p.add_argument("--topology", choices=["radix", "random"], default="radix")
    p.add_argument("--batch-size", type=cli.positive_int, default=100, help="the global batch")
    p.add_argument("--steps", type=cli.positive_int, default=20, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--layers", action="store_true",
                   help="also each layer's forward and backward, and each kind of kernel call summed over the "
                        "layers (the medians, taken apart, need not add up to the phases')")
    args = p.parse_args(argv)
    try:  # a model that cannot be built: one line, before anything is allocated
        check_sparse_mlp([args.width] * args.depth, _topology(args), fan_in=args.fan_in)
    except ValueError as e:
        p.error(f"--width {args.width} --depth {args.depth} --fan-in {args.fan_in}: {e}")
    return args


def _topology(args) -> str:
    """The sparse_mlp topology: the RadiX-Net, or its random equivalent (the same connections)."""
    return "radix" if args.topology == "radix" else "random-equivalent"


def main(argv=None, comm=None) -> int:
    args = parse_args(argv)
    if comm is not None:
        threads = distributed.share_cores(comm)
    else:
        import numba

        threads = numba.get_num_threads()
    model = sparse_mlp([args.width] * args.depth, topology=_topology(args), fan_in=args.fan_in,
                       rng=np.random.default_rng(0))
    parallel = distributed.DataParallel(comm, model) if comm is not None else None
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if parallel is not None:
        parallel.start(opt)  # as fit does: the step is the ranks'
    local = args.batch_size if parallel is None else len(parallel.shard(np.arange(args.batch_size)))
    rng = np.random.default_rng(1)
    x = rng.random((784, local), dtype=np.float32)
    y = rng.integers(0, 10, local)
    loss_fn = SoftmaxCrossEntropy()
    times = {k: [] for k in PHASES}
    parts = _time_parts(model) if args.layers else None
    with denormals_flushed():  # as fit trains
        for it in range(3 + args.steps):
            if comm is not None:
                comm.Barrier()
            t0 = time.perf_counter()
            loss = loss_fn.forward(model.forward(x), y)
            t1 = time.perf_counter()
            model.backward(loss_fn.backward())
            t2 = time.perf_counter()
            if parallel is not None:
                parallel.average_gradients(local, args.batch_size, loss)
            t3 = time.perf_counter()
            if parallel is None:
                opt.step()
            else:
                parallel.step()
            t4 = time.perf_counter()
            if it >= 3:
                for k, v in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                    times[k].append(v)
            if parts is not None and it >= 3:  # the step's totals per layer and call, warm steps only
                parts.end_step()
            elif parts is not None:
                parts.current.clear()
    ranks = 1 if comm is None else comm.Get_size()
    if comm is None or comm.Get_rank() == 0:
        print(f"machine: {describe_machine(machine_report())}", flush=True)
    if parallel is not None:
        print(f"exchange: {parallel.exchange()}", flush=True)
    print(f"{args.topology} {args.depth} x {args.width:,}, fan-in {args.fan_in}: {ranks} rank(s) x {threads} "
          f"thread(s), {local} images per rank; median ms over {args.steps} steps: "
          + "  ".join(f"{k} {1e3 * np.median(v):.1f}" for k, v in times.items()), flush=True)
    if parts is not None and (comm is None or comm.Get_rank() == 0):
        print(_parts_table(parts), flush=True)
    return 0


def _parts_table(parts: Timer) -> str:
    """The layers in order (forward, then backward), then the kernel calls, slowest first."""
    lines = ["median ms per step, each layer's forward and backward, then each kind of kernel call "
             "summed over the layers:"]
    layers = sorted((k for k in parts.steps if "calls:" not in k), key=lambda k: (int(k[:2]), "backward" in k))
    calls = sorted((k for k in parts.steps if "calls:" in k), key=lambda k: -parts.median_ms(k))
    for k in layers + calls:
        lines.append(f"  {k:<32} {parts.median_ms(k):8.2f}")
    return "\n".join(lines)


def _time_parts(model) -> Timer:
    """Time each layer's forward and backward, and each backend call the layers make."""
    parts = Timer()
    for i, layer in enumerate(model.layers):
        parts.wrap(layer, "forward", f"{i:2d} {layer.name} forward")
        parts.wrap(layer, "backward", f"{i:2d} {layer.name} backward")
    ops = model.layers[0].ops  # the backend module: every layer looks its calls up there
    for name in ("spmm", "spmm_t", "sddmm", "sum_batch", "relu", "relu_backward", "matmul", "add_bias"):
        if hasattr(ops, name):
            parts.wrap(ops, name, f"   calls: {name}")
    return parts


def run(comm=None) -> int:
    return cli.run_main(main, comm=comm)


if __name__ == "__main__":
    sys.exit(distributed.launch(run))
