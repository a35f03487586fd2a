"""The Sparse DNN Graph Challenge: RadiX-Net inference with sparsenn, SciPy and GraphBLAS.

    python examples/graph_challenge.py                                   # 1024 neurons x 120 layers
    python examples/graph_challenge.py --neurons 4096 --layers 480 --json r.json
    python examples/graph_challenge.py --neurons 65536 --layers 120 --images 2000
    python examples/graph_challenge.py --data-dir DIR    # the official files, if DIR holds them
    mpiexec -n 2 python examples/graph_challenge.py      # the images split over 2 ranks

Builds the challenge's network (or reads the official ``neuron{N}/n{N}-l{k}.tsv`` files) and
inputs (MNIST resized and binarised, or ``sparse-images-{N}.tsv``), runs inference with
sparsenn and with each peer in the same process, checks every implementation's categories
(against ``neuron{N}-l{L}-categories.tsv`` when present, else against a float64 SciPy run,
explaining any disagreement), and prints seconds and edges/s. See ``sparsenn/challenge.py``.

Peers: ``scipy`` (float32, one thread: ``Y @ W`` on CSR, bias on the nonzeros, ReLU, cap) and
``graphblas`` (python-graphblas on SuiteSparse:GraphBLAS, the ``challenge`` extra; FP32
operators throughout, and the bias through a diagonal matrix and the PLUS_PLUS semiring as
LAGraph does it). Edges/s = images x connections / seconds, whatever the inputs' sparsity.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import sys
import time

import numba
import numpy as np

import sparsenn  # noqa: F401  (configures the thread pools before any kernel runs)
from sparsenn import challenge, cli, data, distributed
from sparsenn.runtime import thread_info

# the rates SuiteSparse:GraphBLAS 3.2 published for the challenge (20-core Xeon E5-2698v4),
# edges/s for N x 120 layers, by threads
PUBLISHED = {1024: {1: 9.4e9, 2: 18.6e9, 40: 1.65e11}, 65536: {1: 3.8e9, 2: 6.9e9, 40: 6.6e10}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("--neurons", type=int, default=1024, choices=challenge.SIZES)
    p.add_argument("--layers", type=cli.positive_int, default=120)
    p.add_argument("--images", type=cli.positive_int, default=60000, help="the first K of the 60,000 inputs")
    p.add_argument("--data-dir", help="a directory with the official files, or with mnist/ "
                                      "(default: $SPARSENN_DATA, then data/, ...)")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="threads for sparsenn and GraphBLAS (default: all cores)")
    p.add_argument("--peers", default="scipy,graphblas",
                   help="comma-separated: scipy, graphblas (skipped with a note if not installed), or none")
    p.add_argument("--block", type=cli.positive_int, default=None, help="images per block (default by size)")
    p.add_argument("--json", metavar="PATH", help="write one record per implementation here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        challenge.check_size(args.neurons, args.layers)
        challenge.check_memory(args.neurons, args.layers)
    except ValueError as e:
        p.error(str(e))
    args.peers = [] if args.peers == "none" else [s.strip() for s in args.peers.split(",") if s.strip()]
    for peer in args.peers:
        if peer not in ("scipy", "graphblas"):
            p.error(f"--peers: unknown peer {peer!r} (choose from scipy, graphblas, none)")
    cli.check_output_paths(args, files=("json",), parser=p)
    return args


def bar(total, desc, args):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="layer", disable=args.no_progress, leave=False, file=sys.stderr,
                mininterval=1.0)


@contextlib.contextmanager
def captured_fd(fd: int):
    """Capture what C code writes to file descriptor ``fd`` (GraphBLAS's burble uses printf)."""
    import tempfile

    sys.stdout.flush()
    saved = os.dup(fd)
    text = io.StringIO()
    with tempfile.TemporaryFile(mode="w+") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield text
        finally:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text.write(tmp.read())


# ---- the implementations -----------------------------------------------------------------------


def run_sparsenn_mpi(net, x, args, comm):
    """The images split over the ranks (contiguous parts), each rank running the engine on its
    own; the time is from a barrier before to a barrier after, so it is the slowest rank's.
    Returns the whole result on rank 0 and None elsewhere.

    (Tried and not kept: the ranks reading one copy of the network in MPI-3 shared memory, and
    blocks of images dealt round-robin. Over two repeats of all four combinations on 1024 x 120
    every one took 1.76-2.20 s, with no consistent order: within the noise.)"""
    rank, size, n = comm.Get_rank(), comm.Get_size(), x.shape[0]
    lo, hi = rank * n // size, (rank + 1) * n // size
    block = args.block or challenge.default_block(net.n_neurons)
    challenge.infer(net, x[lo:lo + 16], block=block)  # compile (or load from cache) first
    comm.Barrier()
    t0 = time.perf_counter()
    res = challenge.infer(net, x[lo:hi], block=block)
    t_rank = time.perf_counter() - t0
    comm.Barrier()
    seconds = time.perf_counter() - t0
    parts = comm.gather((lo, res, t_rank), root=0)
    if rank != 0:
        return None
    cats = np.concatenate([r["categories"] + start for start, r, _ in parts])
    row_sum = np.concatenate([r["row_sum"] for _, r, _ in parts])
    work = sum(r["work"] for _, r, _ in parts)
    rank_seconds = [t for *_, t in parts]
    print("seconds per rank (its own images, before the closing barrier): "
          + ", ".join(f"rank {r} {t:.2f}" for r, t in enumerate(rank_seconds)))
    return seconds, cats, row_sum, {"block": block, "ranks": size, "work_fraction": work / (n * net.n_layers),
                                    "rank_seconds": rank_seconds}


def run_sparsenn(net, x, args):
    """sparsenn's engine, in chunks of whole blocks so that progress can be shown."""
    block = args.block or challenge.default_block(net.n_neurons)
    chunk = block * 2 * (args.threads or numba.get_num_threads())
    challenge.infer(net, x[:min(x.shape[0], 16)], block=block)  # compile (or load from cache) first
    parts = []
    with bar(x.shape[0], "sparsenn", args) as b:
        b.unit = "image"
        t0 = time.perf_counter()
        for start in range(0, x.shape[0], chunk):
            parts.append(challenge.infer(net, x[start:start + chunk], block=block))
            b.update(min(chunk, x.shape[0] - start))
        seconds = time.perf_counter() - t0
    cats = np.concatenate([p["categories"] + i * chunk for i, p in enumerate(parts)])
    row_sum = np.concatenate([p["row_sum"] for p in parts])
    work = sum(p["work"] for p in parts)
    return seconds, cats, row_sum, {"block": block, "work_fraction": work / (x.shape[0] * net.n_layers)}


def run_scipy(net, x, args, dtype=np.float32, desc="scipy"):
    layers = challenge.scipy_layers(net, dtype)  # set-up, not timed (as for every implementation)
    with bar(net.n_layers, desc, args) as b:
        t0 = time.perf_counter()
        cats, row_sum = challenge.infer_scipy(layers, net.bias, x, dtype=dtype, progress=lambda k: b.update(1))
        seconds = time.perf_counter() - t0
    return seconds, cats, row_sum, {"dtype": np.dtype(dtype).name, "threads": 1}


def run_graphblas(net, x, args):
    import graphblas as gb
    from graphblas import binary, select, semiring

    threads = args.threads or os.cpu_count()
    gb.ss.config["nthreads"] = threads
    # Typed FP32 operators: with a Python float the wheel (which cannot JIT-compile) falls back to
    # its generic, uncompiled kernels. The bias through a diagonal matrix and PLUS_PLUS (as
    # LAGraph's dnn does) measured 1.3x faster here than apply(plus, bias) on the nonzeros.
    layers = [gb.io.from_scipy_sparse(w) for w in challenge.scipy_layers(net, np.float32)]
    n = net.n_neurons
    diag = [gb.Matrix.from_coo(np.arange(n), np.arange(n), net.bias[k], nrows=n, ncols=n)
            for k in range(net.n_layers)]
    cap = gb.Scalar.from_value(challenge.YMAX, dtype="FP32")
    y0 = gb.io.from_scipy_sparse(x.astype(np.float32))

    def layer(y, k):
        z = y.mxm(layers[k], semiring.plus_times["FP32"]).new()
        z << z.mxm(diag[k], semiring.plus_plus["FP32"])  # the bias, on the entries present only
        z << select.valuegt(z, 0)  # ReLU: drop what is <= 0
        z << z.apply(binary.min["FP32"], right=cap)
        return z

    with captured_fd(1) as burble, gb.ss.burble:  # which kernels SuiteSparse chose (one small layer)
        layer(y0[:min(x.shape[0], 64), :].new(), 0)
    kernels = [" ".join(line.split()) for line in burble.getvalue().splitlines() if "GrB_" in line]
    with bar(net.n_layers, "graphblas", args) as b:
        t0 = time.perf_counter()
        y = y0
        for k in range(net.n_layers):
            y = layer(y, k)
            gc.collect()  # python-graphblas's objects form cycles: without this a layer's
            b.update(1)   # result (300 MB at 60,000 x 1024) is freed late, 24 GB by layer 80
        sums = y.reduce_rowwise(gb.monoid.plus).new()
        seconds = time.perf_counter() - t0
    idx, vals = sums.to_coo()
    row_sum = np.zeros(x.shape[0])
    row_sum[idx] = vals
    return seconds, np.sort(idx[vals != 0]).astype(np.int64), row_sum, {
        "threads": threads, "version": gb.__version__, "suitesparse": ".".join(map(str, gb.ss.about["library_version"])),
        "burble": kernels}


# ---- checking ----------------------------------------------------------------------------------


def explain(net, x, image: int) -> str:
    """Why float32 and float64 disagree on one image: run it through both, layer by layer, and
    report where the rows start to differ, how fast the difference grows, and where the sets
    of active neurons part."""
    y32 = np.asarray(x[image].todense(), dtype=np.float32).ravel()
    y64 = y32.astype(np.float64)
    diffs = []
    for k in range(net.n_layers):
        w = net.layer(k)
        z32, z64 = w @ y32, w.astype(np.float64) @ y64
        y32 = np.where(z32 != 0, z32 + net.bias[k], 0).clip(0, challenge.YMAX).astype(np.float32)
        y64 = np.where(z64 != 0, z64 + net.bias[k].astype(np.float64), 0).clip(0, challenge.YMAX)
        diffs.append(float(np.abs(y32 - y64).max()))
        if not np.array_equal(y32 > 0, y64 > 0):
            first = next(i for i, d in enumerate(diffs) if d > 0)
            span = diffs[max(first, k - 10):k]
            growth = (span[-1] / span[0]) ** (1 / max(1, len(span) - 1)) if len(span) > 1 and span[0] > 0 else float("nan")
            return (f"image {image}: the float32 and float64 rows first differ after layer {first + 1} "
                    f"(by {diffs[first]:.2g}); the difference grows x{growth:.2f} per layer to {diffs[k - 1]:.2g} at "
                    f"layer {k}, and at layer {k + 1} float32 has {int((y32 > 0).sum())} active neurons, float64 "
                    f"{int((y64 > 0).sum())}: the row is near an unstable fixed point of the network (32 inputs of "
                    f"weight 1/16 double a uniform row), where rounding decides")
    return (f"image {image}: float32 and float64 (in this layer-by-layer order) agree on every active set; "
            f"the implementation's own summation order decides")


def main(argv=None, comm=None) -> int:
    """comm: the MPI communicator when started by ``mpiexec -n P`` (P > 1), else None."""
    args = parse_args(argv)
    if comm is not None:
        threads = distributed.share_cores(comm)
        args.threads = args.threads or threads
    if args.threads:
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print("configuration:", json.dumps({k: v for k, v in vars(args).items() if v is not None}, sort_keys=True))
    thread_info()
    if "graphblas" in args.peers:
        try:
            import graphblas  # noqa: F401
        except ImportError:
            print("note: python-graphblas is not installed, so that peer is skipped "
                  "(pip install -e '.[challenge]')")
            args.peers.remove("graphblas")

    # ---- network, inputs, truth ------------------------------------------------------------
    t0 = time.perf_counter()
    official = args.data_dir and os.path.exists(challenge.official_paths(args.data_dir, args.neurons, args.layers)["images"])
    truth = None
    if official:
        with bar(args.layers, "reading layers", args) as b:
            net, x, truth = challenge.read_official(args.data_dir, args.neurons, args.layers,
                                                    progress=lambda k: b.update(1))
        source = f"official files in {args.data_dir}"
    else:
        net = challenge.network(args.neurons, args.layers)
        ds = data.load("mnist", root=args.data_dir)
        x = challenge.mnist_inputs(ds.train_images[:args.images], args.neurons)
        source = f"MNIST training images from {ds.source}, resized to {int(args.neurons ** 0.5)}^2 and binarised"
    x = x[:args.images]
    if truth is not None:
        truth = truth[truth < x.shape[0]]
    n_images = x.shape[0]
    edges = n_images * net.nnz
    print(f"network: {net.n_neurons} neurons x {net.n_layers} layers, {net.nnz:,} connections "
          f"({net.nbytes / 2**20:,.0f} MiB); inputs: {n_images:,} images, {x.nnz / n_images:.1f} active neurons "
          f"per image on average ({source}); {time.perf_counter() - t0:.1f} s")

    # ---- run ---------------------------------------------------------------------------------
    if comm is None:
        results = {"sparsenn": run_sparsenn(net, x, args)}
    else:  # the check and the peers run on rank 0 afterwards, alone
        ours = run_sparsenn_mpi(net, x, args, comm)
        if ours is None:
            return 0
        results = {"sparsenn": ours}
    threads = args.threads or numba.get_num_threads()
    print(f"sparsenn: {results['sparsenn'][0]:.2f} s")
    if truth is None:
        print("checking against a float64 SciPy run (no categories file) ...", flush=True)
        t_check, truth, truth_sum, _ = run_scipy(net, x, args, np.float64, "scipy float64 (check)")
        print(f"float64 check: {t_check:.2f} s, {len(truth):,} categories")
    else:
        truth_sum = None
        print(f"truth: {len(truth):,} categories from the official file")
    records, notes = [], []

    def report(impl, seconds, cats, row_sum, extra):
        """Check one implementation and keep its record (written at once: a later peer that runs
        out of memory must not lose the earlier results)."""
        c = challenge.compare(cats, row_sum, truth, truth_sum)
        t = extra.get("threads", threads) if impl != "sparsenn" else threads
        for image in (c["missing"] + c["extra"])[:5]:
            notes.append(f"{impl}: " + explain(net, x, image))
        if c["sum_mismatch"]:
            notes.append(f"{impl}: {len(c['sum_mismatch'])} images' final row sums differ from the check by more "
                         f"than 1e-3 (relative)")
        records.append({"impl": impl, "neurons": net.n_neurons, "layers": net.n_layers, "images": n_images,
                        "threads": t, "seconds": seconds, "edges_per_second": edges / seconds,
                        "categories": len(cats), "categories_match": c["match"], "missing": len(c["missing"]),
                        "extra": len(c["extra"]), "truth": "official" if official else "scipy float64", **extra})
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(records, f, indent=1)

    report("sparsenn", *results["sparsenn"])
    for peer in args.peers:
        result = (run_scipy if peer == "scipy" else run_graphblas)(net, x, args)
        print(f"{peer}: {result[0]:.2f} s")
        report(peer, *result)

    # ---- report ------------------------------------------------------------------------------
    t_ours = records[0]["seconds"]
    print()
    print(f"{'implementation':<16}{'threads':>8}{'seconds':>10}{'edges/s':>11}{'categories':>12}"
          f"{'match':>7}{'time / sparsenn':>17}")
    for r in records:
        shown = f"{r['ranks']}x{r['threads']}" if "ranks" in r else r["threads"]
        print(f"{r['impl']:<16}{shown:>8}{r['seconds']:>10.2f}{r['edges_per_second']:>11.3g}{r['categories']:>12,}"
              f"{'yes' if r['categories_match'] else 'NO':>7}{r['seconds'] / t_ours:>16.1f}x")
    for note in notes:
        print("note:", note)
    if net.n_neurons in PUBLISHED and net.n_layers == 120:
        pub = ", ".join(f"{v:.3g} ({t} thread{'s' if t > 1 else ''})" for t, v in PUBLISHED[net.n_neurons].items())
        print(f"published, SuiteSparse:GraphBLAS 3.2 on a 20-core Xeon E5-2698v4 (official inputs): {pub}")
    if args.json:
        print(f"records: {args.json}")
    # the exit status is sparsenn's check; a peer's float32 disagreement is reported and explained above
    return 0 if records[0]["categories_match"] else 1


def run(comm=None) -> int:
    return cli.run_main(main, comm=comm)


if __name__ == "__main__":
    sys.exit(distributed.launch(run))  # data-parallel when started by mpiexec -n P, P > 1
