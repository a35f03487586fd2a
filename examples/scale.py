"""The scaling study: train sparse MLPs of growing width and show that cost follows connections.

    python examples/scale.py                                   # RadiX and random, 1,024 .. 262,144 wide
    python examples/scale.py --widths 1024 4096 --epochs 1 --json out.json --plot out.png
    python examples/scale.py --steps 100 --steps-from 10000000 # time 100 steps above 10M connections
    python examples/scale.py --quick                           # a tiny version (CI)
    mpiexec -n 2 python examples/scale.py --widths 65536 --steps 60   # data-parallel over MPI

For every (topology, width): a depth-``--depth`` MLP 784 -> width x depth -> 10 built by
``sparsenn.models.sparse_mlp`` with a dense logits layer. ``radix``: a RadiX-Net with in-degree
``--fan-in`` on every hidden-to-hidden layer (the first layer, from 784 inputs, gets what the
RadiX-Net's structure allows: 24-25 inputs per neuron at fan-in 32 and widths 2^k);
``random``: the random equivalent of that RadiX model (``random-equivalent``: every neuron keeps
its in-degree, its inputs drawn uniformly), so both have exactly the same connections.
Trained with SGD + Nesterov, a linear warmup (``--warmup`` steps) then a cosine schedule, on
MNIST (``--dataset fashion-mnist`` too).

Each run is its own process (peak memory is per run, and one run's arrays do not linger into
the next). It records neurons, connections, seconds per epoch (from full epochs, or from
``--steps`` steps extrapolated to an epoch, flagged ``extrapolated``), peak RSS, the bytes of
model + optimiser state, the test accuracy, and the weight bytes a dense network of the same
widths would need. The study then fits the slope of log(seconds per epoch) against
log(connections) from ``--fit-from`` connections up, per topology, and ``--plot`` draws time
and memory against connections (log-log) with the fitted slopes and the dense-equivalent line.
PyTorch dense (if installed; never a dependency) is timed in the same study at the widths
where its weights, gradients and momentum fit in ``--torch-max-bytes``.

Under ``mpiexec -n P`` (P > 1) the runs are data-parallel (global batch ``--batch-size``) and
run in this process, one after the other: peak RSS is then the process's running maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

import sparsenn  # noqa: F401  (configures the thread pools before any kernel runs)
from sparsenn import cli, data, distributed, schedules
from sparsenn.models import check_sparse_mlp, sparse_mlp
from sparsenn.optim import SGD
from sparsenn.runtime import describe_machine, machine_report, user_environ
from sparsenn.topology import TopologyTooLarge
from sparsenn.train import ArrayData, TrainingDiverged, fit

DEFAULTS = dict(
    widths=[1024, 4096, 16384, 65536, 262144],  # 4 x 262,144 = 1,048,576 hidden neurons at the top
    depth=4,             # hidden layers, all of the same width
    fan_in=32,           # inputs per hidden neuron, at every width: connections grow with neurons
    topologies=["radix", "random"],
    epochs=1,            # full epochs per run (the accuracy target asks 3 of the top model)
    batch_size=100,      # as everywhere in this project
    lr=0.1,              # SGD + Nesterov 0.9, cosine to 0 over the run, weight decay 5e-4 ...
    warmup=200,          # ... after a linear warmup: at lr 0.1 from step 0 the 262,144-wide model
                         # diverged at step 11 (the loss over 230 in 10 steps)
    fit_from=1_000_000,  # the slope is fitted from about 1M connections up
    torch_steps=20,      # PyTorch dense: time this many steps and extrapolate
    torch_max_bytes=4 << 30,  # ... at the widths where its weights, gradients and momentum fit here
    seed=0,
)
MLP_TOPOLOGY = {"radix": "radix", "random": "random-equivalent"}  # same in-degrees, same connections
QUICK = dict(widths=[64, 256], depth=2, fan_in=8, train_size=3000, torch_steps=3, fit_from=0)
N_INPUTS, N_CLASSES = 784, 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("--widths", type=cli.positive_int, nargs="+", default=DEFAULTS["widths"],
                   help="hidden width of each model in the study")
    p.add_argument("--depth", type=cli.positive_int, default=DEFAULTS["depth"], help="hidden layers per model")
    p.add_argument("--fan-in", type=cli.positive_int, default=DEFAULTS["fan_in"],
                   help="inputs per hidden neuron (RadiX-Net and random alike)")
    p.add_argument("--topologies", nargs="+", choices=["radix", "random"], default=DEFAULTS["topologies"])
    p.add_argument("--epochs", type=cli.positive_int, default=DEFAULTS["epochs"])
    p.add_argument("--steps", type=cli.positive_int,
                   help="time only the first this many steps of the --epochs run and extrapolate to an epoch "
                        "(only for models with at least --steps-from connections; no accuracy, no blow-up check)")
    p.add_argument("--steps-from", type=cli.nonneg_int, default=0,
                   help="connections from which --steps applies (smaller models train --epochs)")
    p.add_argument("--batch-size", type=cli.positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=cli.positive_float, default=DEFAULTS["lr"])
    p.add_argument("--warmup", type=cli.nonneg_int, default=DEFAULTS["warmup"],
                   help="steps of linear learning-rate warmup (at most half the run)")
    p.add_argument("--seed", type=cli.nonneg_int, default=DEFAULTS["seed"])
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--data-dir", help="where the dataset lives (default: $SPARSENN_DATA, then data/, ...)")
    p.add_argument("--fit-from", type=float, default=DEFAULTS["fit_from"],
                   help="fit the slope on models with at least this many connections")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch dense even if installed")
    p.add_argument("--torch-steps", type=cli.positive_int, default=DEFAULTS["torch_steps"])
    p.add_argument("--torch-max-bytes", type=float, default=DEFAULTS["torch_max_bytes"],
                   help="time PyTorch dense where 3 x its weight bytes (weights, gradients, momentum) fit in this")
    p.add_argument("--json", metavar="PATH", help="write the list of records here")
    p.add_argument("--plot", metavar="PATH", help="draw time and memory against connections here (matplotlib)")
    p.add_argument("--quick", action="store_true", help="a tiny study for tests: " + json.dumps(QUICK))
    p.add_argument("--train-size", type=cli.positive_int, help=argparse.SUPPRESS)  # quick: a subset
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: one run, in a child process
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) in (None, DEFAULTS.get(k), p.get_default(k)):
                setattr(args, k, v)
    if not args.torch_max_bytes >= 0:
        p.error(f"--torch-max-bytes must be >= 0, got {args.torch_max_bytes}")
    cli.check_output_paths(args, files=("json",), figures=("plot",), parser=p)
    return args


# ---------------------------------------------------------------------------------------------
# Sizes that need no model: connections, dense-equivalent bytes
# ---------------------------------------------------------------------------------------------


def connections(width: int, depth: int, fan_in: int) -> int:
    """About the stored weights of the sparse MLP (fan_in per hidden neuron, plus the dense
    logits layer): what decides whether --steps applies. The records hold the exact count."""
    return depth * width * min(fan_in, N_INPUTS, width) + width * N_CLASSES


def dense_weight_bytes(width: int, depth: int) -> int:
    """float32 weight bytes of the dense network with the same widths."""
    return 4 * (N_INPUTS * width + (depth - 1) * width * width + width * N_CLASSES)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def state_bytes(model, opt) -> int:
    """Bytes of everything a training step keeps: weights, gradients, optimiser state and the
    sparse layers' index arrays (pattern and transpose index)."""
    total = 0
    for p in model.parameters():
        total += p.value.nbytes + p.grad.nbytes
    for s in opt.state:
        total += sum(a.nbytes for a in s.values() if hasattr(a, "nbytes"))
    for layer in model.weight_layers():
        if hasattr(layer, "pattern"):
            p = layer.pattern
            total += sum(a.nbytes for a in (p.indptr, p.indices, p.t_indptr, p.t_rows, p.t_perm))
    return total


# ---------------------------------------------------------------------------------------------
# One run (in a child process, or in this one under MPI)
# ---------------------------------------------------------------------------------------------


def load_arrays(cfg) -> ArrayData:
    ds = data.load(cfg["dataset"], root=cfg["data_dir"])
    arrays = ArrayData.from_dataset(ds)
    if cfg.get("train_size"):
        n = cfg["train_size"]
        arrays = ArrayData(arrays.x_train[:n].copy(), arrays.y_train[:n].copy(), arrays.x_test[:n].copy(),
                           arrays.y_test[:n].copy(), arrays.scale, arrays.shift)
    return arrays


def run_sparsenn(cfg, arrays, comm=None) -> dict:
    """Build and train one sparse MLP; the record of the run."""
    widths = [cfg["width"]] * cfg["depth"]
    rng = np.random.default_rng(cfg["seed"])
    t0 = time.perf_counter()
    model = sparse_mlp(widths, topology=MLP_TOPOLOGY[cfg["topology"]], fan_in=cfg["fan_in"], rng=rng,
                       n_inputs=arrays.x_train.shape[1], n_classes=N_CLASSES)
    build_s = time.perf_counter() - t0
    parallel = distributed.DataParallel(comm, model) if comm is not None else None
    opt = SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = -(-len(arrays.x_train) // cfg["batch_size"])
    planned = cfg["epochs"] * steps_per_epoch  # the schedule is the full run's, even when only timed
    schedule = schedules.make("cosine", cfg["lr"], planned, warmup=min(cfg["warmup"], planned // 2))
    # --steps runs time the first steps of that run; their loss is not the point, so the
    # blow-up check (which stops a run whose loss explodes) is off for them
    summary = fit(model, arrays, opt, schedule, steps=cfg["steps"] or planned,
                  blowup_steps=0 if cfg["steps"] else 10,
                  batch_size=cfg["batch_size"], seed=cfg["seed"], progress=cfg["progress"],
                  eval_batch_size=cfg["batch_size"],  # a 1000-image batch would need 1 GB per wide layer
                  parallel=parallel, log=lambda *a: print(*a, file=sys.stderr, flush=True))
    epochs = [r for r in summary["history"] if r["kind"] == "epoch"]
    if cfg["steps"]:  # time per step, over every step timed, times the steps of an epoch
        per_step = sum(r["epoch_seconds"] for r in epochs) / sum(r["steps_timed"] for r in epochs)
        seconds = per_step * steps_per_epoch
    else:
        seconds = float(np.median([r["epoch_seconds"] for r in epochs]))
    nnz = sum(layer.nnz for layer in model.weight_layers())
    return dict(impl="sparsenn", topology=cfg["topology"], widths=widths, neurons=sum(widths), connections=nnz,
                fan_in=cfg["fan_in"], epochs=summary["steps"] / steps_per_epoch, steps=summary["steps"],
                seconds_per_epoch=seconds, extrapolated=bool(cfg["steps"]), build_seconds=build_s,
                peak_rss_bytes=peak_rss_bytes(), state_bytes=state_bytes(model, opt),
                test_acc=None if cfg["steps"] else summary["test_acc"],
                dense_weight_bytes=dense_weight_bytes(cfg["width"], cfg["depth"]),
                batch_size=cfg["batch_size"], lr=cfg["lr"], warmup=cfg["warmup"], dataset=cfg["dataset"],
                train_images=len(arrays.x_train),
                ranks=1 if comm is None else comm.Get_size())


def run_torch(cfg, arrays) -> dict:
    """PyTorch dense of the same widths: ``torch_steps`` timed steps, extrapolated to an epoch."""
    import numba
    import torch

    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(numba.get_num_threads())
    sizes = [arrays.x_train.shape[1]] + [cfg["width"]] * cfg["depth"] + [N_CLASSES]
    layers = []
    for i in range(len(sizes) - 1):
        layers += [torch.nn.Linear(sizes[i], sizes[i + 1])] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.from_numpy(arrays.features("train"))
    y = torch.from_numpy(arrays.y_train)
    loss_fn = torch.nn.CrossEntropyLoss()
    b = cfg["batch_size"]
    perm = torch.from_numpy(np.random.default_rng(cfg["seed"]).permutation(len(y)))

    def step(i):
        idx = perm[(i * b) % (len(y) - b):][:b]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()

    step(0)  # warm-up
    times = []
    for i in range(1, cfg["torch_steps"] + 1):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    steps_per_epoch = -(-len(y) // b)
    n = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    return dict(impl="torch", topology="dense", widths=[cfg["width"]] * cfg["depth"], neurons=cfg["width"] * cfg["depth"],
                connections=n, fan_in=None, epochs=0, steps=cfg["torch_steps"],
                seconds_per_epoch=float(np.median(times)) * steps_per_epoch, extrapolated=True,
                peak_rss_bytes=peak_rss_bytes(), state_bytes=3 * 4 * sum(p.numel() for p in model.parameters()),
                test_acc=None, dense_weight_bytes=dense_weight_bytes(cfg["width"], cfg["depth"]),
                batch_size=b, lr=cfg["lr"], dataset=cfg["dataset"], train_images=len(y),
                torch_version=torch.__version__, ranks=1)


def child(cfg_json: str) -> int:
    """``--run CONFIG``: one run in this (child) process; its record is the last line of stdout."""
    cfg = json.loads(cfg_json)
    try:
        arrays = load_arrays(cfg)
    except (data.DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rec = run_torch(cfg, arrays) if cfg["impl"] == "torch" else run_sparsenn(cfg, arrays)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"error: out of memory building or training width {cfg['width']}", file=sys.stderr)
        return 3
    except TopologyTooLarge as e:  # study() checked every model; the memory free may have changed since
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(json.dumps(rec), flush=True)
    return 0


def run_in_child(cfg) -> dict | None:
    """Run one configuration in a fresh interpreter; None (with the reason printed) if it failed.
    PyTorch's child gets the user's environment and leaves the thread pools alone
    (``SPARSENN_THREAD_CONFIG=0``): its OpenMP runtime then keeps its own defaults, not the spin
    count sparsenn sets for Numba's (``sparsenn.runtime``)."""
    env = {**user_environ(), "SPARSENN_THREAD_CONFIG": "0"} if cfg["impl"] == "torch" else None
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--run", json.dumps(cfg)],
                          stdout=subprocess.PIPE, text=True, env=env)  # stderr (progress, errors) passes through
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  {cfg['impl']} {cfg.get('topology', '')} width {cfg['width']}: failed with exit status "
              f"{proc.returncode}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# The study: runs, slope, table, plot
# ---------------------------------------------------------------------------------------------


def fit_slope(records, topology: str, fit_from: float) -> dict | None:
    """Least-squares slope of log(seconds per epoch) against log(connections)."""
    pts = [(r["connections"], r["seconds_per_epoch"]) for r in records
           if r["impl"] == "sparsenn" and r["topology"] == topology and r["connections"] >= fit_from]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    slope, intercept = np.polyfit(lx, ly, 1)
    return dict(kind="fit", impl="sparsenn", topology=topology, slope=float(slope), intercept=float(intercept),
                points=len(pts), from_connections=int(min(p[0] for p in pts)),
                to_connections=int(max(p[0] for p in pts)))


def _fmt_bytes(n) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000


def table(records) -> str:
    head = (f"{'impl':<9} {'topology':<8} {'hidden neurons':>15} {'connections':>13} {'s/epoch':>9} "
            f"{'img/s':>8} {'peak RSS':>9} {'state':>9} {'test acc':>9} {'dense weights':>14}")
    lines = [head, "-" * len(head)]
    for r in records:
        if r.get("kind") == "fit":
            continue
        sec = f"{r['seconds_per_epoch']:.1f}" + ("*" if r["extrapolated"] else "")
        acc = "-" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%"
        img_s = r["train_images"] / r["seconds_per_epoch"]
        lines.append(f"{r['impl']:<9} {r['topology']:<8} {r['neurons']:>15,} {r['connections']:>13,} {sec:>9} "
                     f"{img_s:>8,.0f} {_fmt_bytes(r['peak_rss_bytes']):>9} {_fmt_bytes(r['state_bytes']):>9} "
                     f"{acc:>9} {_fmt_bytes(r['dense_weight_bytes']):>14}")
    lines.append("* extrapolated from timed steps (--steps); accuracy then not reported")
    for f in (r for r in records if r.get("kind") == "fit"):
        lines.append(f"slope of log(s/epoch) vs log(connections), {f['topology']}: {f['slope']:.3f} "
                     f"({f['points']} models, {f['from_connections']:,} to {f['to_connections']:,} connections)")
    return "\n".join(lines)


def plot(records, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"radix": ("o-", "C0"), "random": ("s--", "C1")}
    for topo, (style, color) in styles.items():
        rs = sorted((r for r in records if r.get("impl") == "sparsenn" and r.get("topology") == topo and "kind" not in r),
                    key=lambda r: r["connections"])
        if not rs:
            continue
        c = np.array([r["connections"] for r in rs], float)
        fit = next((f for f in records if f.get("kind") == "fit" and f["topology"] == topo), None)
        label = f"sparsenn {topo}" + (f" (slope {fit['slope']:.2f})" if fit else "")
        ax_t.plot(c, [r["seconds_per_epoch"] for r in rs], style, color=color, label=label)
        if fit:
            xs = np.array([fit["from_connections"], fit["to_connections"]], float)
            ax_t.plot(xs, np.exp(fit["intercept"]) * xs ** fit["slope"], ":", color=color, lw=1)
        ax_m.plot(c, [r["peak_rss_bytes"] / 1e9 for r in rs], style, color=color, label=f"{topo}: peak RSS")
        ax_m.plot(c, [r["state_bytes"] / 1e9 for r in rs], style, color=color, alpha=0.5,
                  label=f"{topo}: model + optimiser state")
        ax_m.plot(c, [r["dense_weight_bytes"] / 1e9 for r in rs], "k^:", alpha=0.6,
                  label="dense equivalent: weights only" if topo == "radix" else None)
    tr = sorted((r for r in records if r.get("impl") == "torch"), key=lambda r: r["neurons"])
    if tr:
        sp = {r["neurons"]: r["connections"] for r in records if r.get("impl") == "sparsenn" and "kind" not in r}
        pts = [(sp[r["neurons"]], r["seconds_per_epoch"]) for r in tr if r["neurons"] in sp]
        if pts:
            ax_t.plot(*zip(*pts), "kx-", label="PyTorch dense, same neurons (at the sparse model's connections)")
    for ax, ylab in ((ax_t, "seconds per epoch (MNIST, batch 100)"), (ax_m, "GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("connections (stored weights)")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_title("time follows connections")
    ax_m.set_title("memory follows connections; dense follows neurons squared")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def study(args, comm=None) -> int:
    rank0 = comm is None or comm.Get_rank() == 0
    say = (lambda *a: print(*a, flush=True)) if rank0 else (lambda *a: None)
    if comm is not None:  # each rank its share of the cores, for Numba and for BLAS
        say(f"data-parallel: {comm.Get_size()} ranks x {distributed.share_cores(comm)} thread(s)")
    base = dict(depth=args.depth, fan_in=args.fan_in, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                warmup=args.warmup,
                seed=args.seed, dataset=args.dataset, data_dir=args.data_dir, train_size=args.train_size,
                torch_steps=args.torch_steps, progress=not args.no_progress and rank0)
    say(f"scaling study: widths {args.widths} x depth {args.depth}, fan-in {args.fan_in}, topologies "
        f"{args.topologies}, batch {args.batch_size}, lr {args.lr} after {args.warmup} warmup steps, "
        + (f"{args.steps} timed steps from {args.steps_from:,} connections, else " if args.steps else "")
        + f"{args.epochs} epoch(s)" + (f", {comm.Get_size()} MPI ranks" if comm else ""))
    machine = machine_report() if rank0 else None  # kept with every record: hosts of one kind differ 3x
    if rank0:
        say(f"machine: {describe_machine(machine)}")
    for width in sorted(args.widths):  # every model checked before the first one trains
        for topology in args.topologies:
            try:
                check_sparse_mlp([width] * args.depth, MLP_TOPOLOGY[topology], fan_in=args.fan_in)
            except ValueError as e:
                if rank0:
                    print(f"scale.py: error: {topology} model of width {width:,}: {e}", file=sys.stderr)
                return 2
    records = []
    # loaded here even without MPI, where every run loads its own in its own process: a missing
    # or broken dataset is then one error before the runs, not one per run
    arrays = load_arrays(base)
    if comm is None:
        arrays = None  # not kept in this process while the runs take the memory

    def add(rec):
        rec["machine"] = machine  # as read at the study's start
        records.append(rec)
        if rec.get("impl") == "sparsenn":
            say(f"  {rec['topology']:<7} width {rec['widths'][0]:>7,}: {rec['connections']:>12,} connections  "
                f"{rec['seconds_per_epoch']:8.1f} s/epoch{' (extrapolated)' if rec['extrapolated'] else ''}  "
                f"peak RSS {_fmt_bytes(rec['peak_rss_bytes'])}  "
                + ("" if rec["test_acc"] is None else f"test acc {100 * rec['test_acc']:.2f}%"))
        else:
            say(f"  torch   width {rec['widths'][0]:>7,}: dense {rec['connections']:>12,} weights  "
                f"{rec['seconds_per_epoch']:8.1f} s/epoch (extrapolated from {rec['steps']} steps)")
        if args.json and rank0:  # written as the study goes: a stopped study keeps what finished
            try:
                with open(args.json + ".tmp", "w") as f:
                    json.dump(records, f, indent=1)
                os.replace(args.json + ".tmp", args.json)
            except OSError as e:  # checked writable at the start, and yet (a full disk, /proc as root)
                raise OSError(f"--json {args.json}: cannot write the records ({e.strerror or e})") from None

    for width in sorted(args.widths):
        n_conn = connections(width, args.depth, args.fan_in)
        steps = args.steps if args.steps and n_conn >= args.steps_from else None
        for topology in args.topologies:
            cfg = dict(base, impl="sparsenn", topology=topology, width=width, steps=steps)
            rec = run_sparsenn(cfg, arrays, comm) if comm is not None else run_in_child(cfg)
            if rec is not None:
                add(rec)
    have_torch = not args.no_torch and comm is None
    if have_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            say("PyTorch not installed: `pip install torch==2.13.0` to time dense side by side")
            have_torch = False
    if have_torch:
        for width in sorted(args.widths):
            need = 3 * dense_weight_bytes(width, args.depth)
            if need > args.torch_max_bytes:
                say(f"  torch   width {width:>7,}: not run, its weights, gradients and momentum need "
                    f"{_fmt_bytes(need)} (> --torch-max-bytes {_fmt_bytes(args.torch_max_bytes)})")
                continue
            rec = run_in_child(dict(base, impl="torch", width=width))
            if rec is not None:
                add(rec)
    for topology in args.topologies:
        f = fit_slope(records, topology, args.fit_from)
        if f is not None:
            records.append(f)
    if not rank0:
        return 0
    print(f"machine at the end: {describe_machine(machine_report())}")
    print()
    print(table(records))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(records, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
        print(f"wrote {len(records)} records to {args.json}")
    if args.plot:
        plot(records, args.plot)
        print(f"plot: {args.plot}")
    failed = len(args.widths) * len(args.topologies) - sum(r.get("impl") == "sparsenn" and "kind" not in r
                                                            for r in records)
    return 1 if failed else 0


def run(comm=None) -> int:
    if "--run" in sys.argv:
        return child(sys.argv[sys.argv.index("--run") + 1])
    args = parse_args(sys.argv[1:])
    return cli.run_main(study, args, comm)


if __name__ == "__main__":
    sys.exit(distributed.launch(run))  # data-parallel when started by mpiexec -n P, P > 1
