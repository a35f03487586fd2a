"""Benchmark: how long one MNIST epoch of LeNet-5 takes, dense against sparse, and where the time goes.

    python examples/bench_lenet5.py                   # quick: median warm step x steps per epoch
    python examples/bench_lenet5.py --full            # also time one real epoch of real MNIST (fit)
    python examples/bench_lenet5.py --topologies random --density 0.05 --steps 50

Quick mode times ``--steps`` warm training steps (forward, loss, backward, optimiser) on random
batches of MNIST's shape and reports the median step times the steps per epoch (60000 / batch),
with a per-layer forward/backward breakdown; for the convolutions it splits each pass into its
parts (im2col, the product W @ cols, the weight gradient, W^T dy, col2im) so the reader sees
whether the patch matrix or the arithmetic dominates. Full mode trains one epoch with
``sparsenn.train.fit`` (evaluation excluded), which is what ``examples/lenet5.py`` reports.

Timings depend on what else runs on the machine: the load average is printed and saved with the
results (``examples/results/lenet5_bench.json``); re-run on an idle machine for numbers to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import numba
import numpy as np

import sparsenn  # noqa: F401 - configures the BLAS thread pool on import
from sparsenn import backend_cpu, cli, data, schedules
from sparsenn.conv import _Im2colConv
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.models import layer_table, lenet5
from sparsenn.optim import SGD
from sparsenn.runtime import denormals_flushed, describe_machine, machine_report
from sparsenn.train import ArrayData, fit

# a convolution's parts: two calls into the CPU backend, three methods of its own, and (a sparse
# convolution on the CPU, batch 16-143) the two that replace all five, one window position at a time
CONV_OPS = ("im2col", "col2im")
CONV_PARTS = ("im2col", "_product", "_weight_grad", "_input_grad", "col2im", "_patchwise_forward",
              "_patchwise_backward")
PART_NAMES = {"im2col": "im2col", "_product": "W@cols", "_weight_grad": "dW", "_input_grad": "W^T dy",
              "col2im": "col2im", "_patchwise_forward": "by patch", "_patchwise_backward": "bwd patch"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--topologies", nargs="+", default=["dense", "random"], choices=["dense", "random"])
    p.add_argument("--density", type=float, default=0.1, help="conv2 and fc1 density for 'random'")
    p.add_argument("--variant", choices=["tf", "caffe"], default="tf")
    p.add_argument("--batch-size", type=cli.positive_int, default=100)
    p.add_argument("--steps", type=cli.positive_int, default=30, help="timed warm steps per topology (quick mode)")
    p.add_argument("--warmup", type=cli.nonneg_int, default=5, help="untimed steps first (compilation, buffers)")
    p.add_argument("--full", action="store_true", help="also time one real epoch of real MNIST with fit")
    p.add_argument("--data-dir", help="where MNIST lives for --full (default: $SPARSENN_DATA, then data/, ...)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "lenet5_bench.json"))
    p.add_argument("--seed", type=cli.nonneg_int, default=0)
    args = p.parse_args(argv)
    if not 0 < args.density < 1:
        p.error(f"--density must be in (0, 1) (a density of 1 is the dense topology), got {args.density}")
    cli.check_output_paths(args, files=("json",), parser=p)
    return args


def load_average() -> str:
    """The machine's 1-minute load average (of its own busy processes)."""
    return f"{machine_report(probe=False)['load_average']:.2f}"


class Timer:
    """Accumulates wall time per key within a step; ``end_step`` files the step's totals."""

    def __init__(self):
        self.current = defaultdict(float)
        self.steps = defaultdict(list)
        self.layer = None  # the index of the convolution running now (wrap_ops)

    def wrap(self, obj, method: str, key: str):
        inner = getattr(obj, method)

        def timed(*a, **k):
            t0 = time.perf_counter()
            out = inner(*a, **k)
            self.current[key] += time.perf_counter() - t0
            return out

        setattr(obj, method, timed)  # an instance attribute: the class is untouched

    def wrap_ops(self, names):
        """Time the calls to the CPU backend's functions ``names`` (``sparsenn.backend_cpu``,
        replaced in the module for this process: layers look them up at each call), each filed
        under ``(layer, name)`` for the layer running at the time (``self.layer``, which the
        wrapped forward and backward of each convolution set). The layers keep the backend
        module itself, so what they do on it (``ops is backend_cpu``) is what they do in training."""
        for name in names:
            inner = getattr(backend_cpu, name)

            def timed(*a, _inner=inner, _name=name, **k):
                t0 = time.perf_counter()
                out = _inner(*a, **k)
                self.current[self.layer, _name] += time.perf_counter() - t0
                return out

            setattr(backend_cpu, name, timed)

    def within(self, obj, method: str, index):
        """While ``obj.method`` runs, ``self.layer`` is ``index``."""
        inner = getattr(obj, method)

        def marked(*a, **k):
            self.layer = index
            try:
                return inner(*a, **k)
            finally:
                self.layer = None

        setattr(obj, method, marked)

    def end_step(self):
        for k, v in self.current.items():
            self.steps[k].append(v)
        self.current.clear()

    def median_ms(self, key: str) -> float:
        return 1e3 * float(np.median(self.steps[key])) if key in self.steps else 0.0


def bench_steps(model, args) -> dict:
    """Median step time and per-layer / per-part medians over ``args.steps`` warm steps."""
    rng = np.random.default_rng(args.seed)
    n_features = int(np.prod(model.layers[0].input_shape))  # the flat (C*H*W, batch) batch fit feeds
    x = rng.standard_normal((n_features, args.batch_size)).astype(np.float32)
    y = rng.integers(0, 10, args.batch_size)
    opt = SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss = SoftmaxCrossEntropy()
    timer = Timer()
    timer.wrap_ops(CONV_OPS)
    for i, layer in enumerate(model.layers):
        timer.wrap(layer, "forward", (i, "forward"))
        timer.wrap(layer, "backward", (i, "backward"))
        if isinstance(layer, _Im2colConv):
            timer.within(layer, "forward", i)
            timer.within(layer, "backward", i)
            for part in CONV_PARTS:
                if part not in CONV_OPS and hasattr(layer, part):
                    timer.wrap(layer, part, (i, part))
    timer.wrap(opt, "step", "optimizer")
    step_times = []
    with denormals_flushed():  # as fit trains
        for s in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            opt.step()
            dt = time.perf_counter() - t0
            if s >= args.warmup:
                step_times.append(dt)
                timer.end_step()
            else:
                timer.current.clear()
    layers = []
    for i, layer in enumerate(model.layers):
        row = {"layer": getattr(layer, "name", type(layer).__name__), "repr": repr(layer),
               "forward_ms": timer.median_ms((i, "forward")), "backward_ms": timer.median_ms((i, "backward"))}
        if isinstance(layer, _Im2colConv):
            row["parts_ms"] = {PART_NAMES[p]: timer.median_ms((i, p)) for p in CONV_PARTS}
        layers.append(row)
    return {"step_ms_median": 1e3 * float(np.median(step_times)), "step_ms_min": 1e3 * float(np.min(step_times)),
            "optimizer_ms": timer.median_ms("optimizer"), "layers": layers}


def print_breakdown(name: str, r: dict, steps_per_epoch: int) -> None:
    print(f"\n{name}: step median {r['step_ms_median']:.1f} ms (min {r['step_ms_min']:.1f}), "
          f"epoch estimate {r['epoch_s_estimate']:.1f} s ({steps_per_epoch} steps)")
    print(f"  {'layer':<10} {'forward ms':>10} {'backward ms':>11}   conv parts (ms): "
          f"{'  '.join(f'{v:>9}' for v in PART_NAMES.values())}")
    for row in r["layers"]:
        parts = row.get("parts_ms")
        extra = "  ".join(f"{v:9.2f}" for v in parts.values()) if parts else ""
        kind = row["repr"].split("(")[0]
        print(f"  {row['layer']:<10} {row['forward_ms']:10.2f} {row['backward_ms']:11.2f}   "
              f"{kind:<16}{extra}")
    tot_f = sum(l["forward_ms"] for l in r["layers"])
    tot_b = sum(l["backward_ms"] for l in r["layers"])
    print(f"  {'total':<10} {tot_f:10.2f} {tot_b:11.2f}   optimizer step {r['optimizer_ms']:.2f} ms")


def main(argv=None) -> int:
    args = parse_args(argv)
    steps_per_epoch = -(-60000 // args.batch_size)
    machine = machine_report()
    meta = {"load_average_start": machine["load_average"], "numba_threads": numba.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": machine,
            "batch_size": args.batch_size, "variant": args.variant, "density": args.density,
            "steps_timed": args.steps, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"LeNet-5 ({args.variant}) on MNIST, batch {args.batch_size}; numba threads {meta['numba_threads']}\n"
          f"machine: {describe_machine(machine)} (timings are only comparable on an idle machine)")
    results = {"meta": meta, "quick": {}, "full": {}}
    for top in args.topologies:
        model = lenet5("mnist", top, np.random.default_rng(args.seed), variant=args.variant, density=args.density)
        r = bench_steps(model, args)
        r["epoch_s_estimate"] = r["step_ms_median"] * steps_per_epoch / 1e3
        results["quick"][top] = r
        print_breakdown(top, r, steps_per_epoch)
        if top == "random":
            print(layer_table(model))
    if args.full:
        ds = data.load("mnist", root=args.data_dir)
        arrays = ArrayData.from_dataset(ds)
        for top in args.topologies:
            model = lenet5("mnist", top, np.random.default_rng(args.seed), variant=args.variant, density=args.density)
            opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
            schedule = schedules.Cosine(0.05, steps_per_epoch, warmup=200)
            summary = fit(model, arrays, opt, schedule, epochs=1, batch_size=args.batch_size, seed=args.seed,
                          progress=False, log=lambda *a: None)
            results["full"][top] = {"epoch_s": summary["epoch_seconds"][0], "test_acc": summary["test_acc"]}
            print(f"\nfull epoch, {top}: {summary['epoch_seconds'][0]:.1f} s of training steps "
                  f"(first epoch, includes compilation if the Numba cache is cold), "
                  f"test accuracy {100 * summary['test_acc']:.2f}%")
    meta["load_average_end"] = load_average()
    print(f"\nload average at the end: {meta['load_average_end']}")
    if "dense" in results["quick"] and "random" in results["quick"]:
        d, s = results["quick"]["dense"]["step_ms_median"], results["quick"]["random"]["step_ms_median"]
        print(f"random (density {args.density:g}) vs dense: {d / s:.2f}x faster per step")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
