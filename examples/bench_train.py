"""Time one LeNet-300-100 training epoch (60,000 MNIST images, batch 100) per topology.

    python examples/bench_train.py                 # sparsenn dense/radix/random, + PyTorch if installed
    python examples/bench_train.py --json out.json
    python examples/bench_train.py --device cuda --topologies radix dense   # on an NVIDIA GPU

Each topology: build the model, run warm-up steps (compiles/loads the Numba kernels), then time
``--epochs`` full epochs of real training steps (gather batch, forward, loss, backward, SGD
with Nesterov momentum and weight decay) and report the median. Evaluation is not timed.
When PyTorch is installed (``pip install torch==2.13.0``; never a dependency), the same model
and optimiser are timed in the same process (PyTorch imported first, so that its OpenMP threads
keep their own defaults: see the imports), dense and with a 90% mask applied the usual way
(weights multiplied by the mask after every step), which saves nothing. With ``--device cuda``
both run on the GPU: sparsenn with its numba.cuda kernels, the training set copied to the
GPU once and each mini-batch gathered there; the loss comes back every step, so each step
has finished when the next starts and the epoch time needs no extra synchronisation.
"""

from __future__ import annotations

import argparse
import json
import os
import time

# PyTorch, when installed, is imported before sparsenn: its OpenMP runtime (a copy of libgomp of
# its own) reads GOMP_SPINCOUNT once, as it loads, and sparsenn sets that variable for Numba's
# (sparsenn/runtime.py). Imported first, PyTorch runs as its users run it, with libgomp's default.
_TORCH_GOMP_SPINCOUNT = os.environ.get("GOMP_SPINCOUNT")
try:
    import torch as _torch  # noqa: F401
except ImportError:
    _torch = None

import numba  # noqa: E402
import numpy as np  # noqa: E402

import sparsenn  # noqa: E402,F401  (configures BLAS threads)
from sparsenn import cli, data
from sparsenn.device import describe, resolve_device
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.models import lenet300
from sparsenn.optim import SGD
from sparsenn.runtime import denormals_flushed, describe_machine, machine_report, thread_info
from sparsenn.train import ArrayData, epoch_permutation

# seconds per epoch, from the project's issues (#4 on the CPU, #7 on a GPU)
TARGETS = {"cpu": {"radix": 0.5, "dense": 1.2}, "cuda": {"radix": 1.0}}
# epoch time as a fraction of PyTorch dense's in the same run (#12), when PyTorch is installed
RATIO_TARGETS = {"radix": 0.2, "dense": 1.0}


def time_sparsenn(topology, arrays, epochs, batch, device="cpu", seed=0):
    rng = np.random.default_rng(seed)
    model = lenet300(topology, rng).to(device)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = SoftmaxCrossEntropy()
    ops = model.ops  # the device's operations: gather and labels where the model is
    x_train, y_train = ops.asarray(arrays.x_train), ops.asarray(arrays.y_train)  # uint8 pixels
    scale, shift = ops.asarray(arrays.scale), ops.asarray(arrays.shift)  # normalised while gathered
    x, y = ops.empty((784, batch), np.float32), ops.empty((batch,), arrays.y_train.dtype)
    n = len(arrays.x_train)
    steps = n // batch

    def one_epoch(e, limit=None):
        perm = ops.asarray(epoch_permutation(seed, e, n))
        ops.synchronize()
        t = time.perf_counter()
        for b in range(limit or steps):
            idx = perm[b * batch:(b + 1) * batch]
            ops.gather_batch(x_train, idx, scale, shift, x)
            ops.take(y_train, idx, y)
            ops.prefetch_rows(x_train, perm[(b + 1) * batch:(b + 2) * batch])  # as fit does
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        ops.synchronize()
        return time.perf_counter() - t

    with denormals_flushed():  # as fit trains
        one_epoch(0, limit=50)  # warm-up
        times = [one_epoch(e) for e in range(epochs)]
    nnz = sum(l.nnz for l in model.weight_layers())
    return times, nnz


def time_torch(arrays, epochs, batch, masked, device="cpu", seed=0):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(numba.get_num_threads())
    model = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(), torch.nn.Linear(300, 100),
                                torch.nn.ReLU(), torch.nn.Linear(100, 10)).to(device)
    masks = []
    if masked:  # 90% masks on the two hidden layers, as a PyTorch user would prune
        g = torch.Generator().manual_seed(seed)
        masks = [(model[i].weight, (torch.rand(model[i].weight.shape, generator=g) < 0.1).float().to(device))
                 for i in (0, 2)]
        with torch.no_grad():
            for w, m in masks:
                w.mul_(m)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt = torch.from_numpy(arrays.features("train")).to(device)  # float32, as PyTorch users keep them
    yt = torch.from_numpy(arrays.y_train).to(device)
    n = len(xt)
    steps = n // batch

    def one_epoch(e, limit=None):
        perm = torch.from_numpy(epoch_permutation(seed, e, n)).to(device)
        t = time.perf_counter()
        for b in range(limit or steps):
            idx = perm[b * batch:(b + 1) * batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for w, m in masks:
                        w.mul_(m)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    one_epoch(0, limit=50)
    nnz = sum(int(m.sum()) for _, m in masks) + (1000 if masks else 266_200)  # fc3 (10x100) unmasked
    return [one_epoch(e) for e in range(epochs)], nnz, torch.__version__


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topologies", nargs="+", choices=["dense", "radix", "random", "radix-wide"],
                   default=["dense", "radix", "random", "radix-wide"])
    p.add_argument("--epochs", type=cli.positive_int, default=3, help="timed epochs per topology (median reported)")
    p.add_argument("--batch-size", type=cli.positive_int, default=100)
    p.add_argument("--data-dir")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="where both sparsenn and PyTorch train (cpu by default: the timings in the README)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    cli.check_output_paths(args, files=("json",), parser=p)

    device = resolve_device(args.device)
    print("device:", describe(device))
    machine = machine_report()
    print(f"machine: {describe_machine(machine)}")
    if device == "cpu":
        info = thread_info()
        print(f"threads: numba {info['numba_threading_layer']} x{info['numba_num_threads']}; BLAS {info['blas_thread_config']}")
    arrays = ArrayData.from_dataset(data.load("mnist", root=args.data_dir))
    records = []

    def report(impl, topology, times, nnz):
        med = float(np.median(times))
        records.append({"impl": impl, "device": describe(device), "topology": topology, "epoch_seconds_median": med,
                        "epoch_seconds": [float(t) for t in times], "nnz": nnz, "batch": args.batch_size,
                        "machine": machine})
        target = TARGETS[device].get(topology) if impl == "sparsenn" else None
        verdict = "" if target is None else f"  target < {target} s: {'PASS' if med < target else 'FAIL'}"
        print(f"{impl:<10} {topology:<12} {nnz:>9,} connections  {med:7.3f} s/epoch "
              f"({args.batch_size * (60000 // args.batch_size) / med:>9,.0f} img/s){verdict}", flush=True)

    for topology in args.topologies:
        times, nnz = time_sparsenn(topology, arrays, args.epochs, args.batch_size, device)
        report("sparsenn", topology, times, nnz)
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch not installed: `pip install torch==2.13.0` to time it side by side")
        else:
            spin = _TORCH_GOMP_SPINCOUNT
            print(f"PyTorch's OpenMP threads: GOMP_SPINCOUNT {'unset (libgomp default)' if spin is None else spin}, "
                  f"{torch.get_num_threads()} threads")
            for masked in (False, True):
                times, nnz, version = time_torch(arrays, args.epochs, args.batch_size, masked, device)
                report(f"torch {version.split('+')[0]}", "dense" + ("+mask" if masked else ""), times, nnz)
    torch_dense = next((r for r in records if r["impl"].startswith("torch") and r["topology"] == "dense"), None)
    if torch_dense is not None:  # issue #12: ratios to PyTorch dense, measured in this run
        base = torch_dense["epoch_seconds_median"]
        print(f"\nAgainst {torch_dense['impl']} dense ({base:.3f} s/epoch), this run:")
        for r in records:
            if r["impl"] != "sparsenn":
                continue
            ratio = r["epoch_seconds_median"] / base
            r["vs_torch_dense"] = ratio
            need = RATIO_TARGETS.get(r["topology"])
            verdict = "" if need is None else f"  target <= {need}x: {'PASS' if ratio <= need else 'FAIL'}"
            print(f"  sparsenn {r['topology']:<12} {ratio:.2f}x the PyTorch dense epoch{verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
