"""Prune and retrain: the first approach of Alford et al. (HPEC 2019), end to end.

    python examples/prune_retrain.py                                   # 1 seed, 5 sparsities
    python examples/prune_retrain.py --seeds 3 --json examples/results/prune_retrain_lenet300.json \\
        --csv examples/results/prune_retrain_lenet300.csv --speed examples/results/prune_speed.md \\
        --gradual-log examples/results/prune_retrain_gradual_log.json
    python examples/prune_retrain.py --quick --json /tmp/r.json        # smoke test, seconds
    python examples/prune_retrain.py --plot acc.png                    # needs matplotlib
    python examples/prune_retrain.py --recipe paper                    # the 2019 study's training recipe
    mpiexec -n 2 python examples/prune_retrain.py --quick              # data-parallel (not --speed)

For each seed:

  1. dense      train the dense model from initial weights W0           dense     / trained
  2. one-time   for each sparsity s: prune the trained model once       one-time  / pruned
                (|w| < t removed, t chosen to reach s), then train a
                fresh network on that mask from new random weights      one-time  / retrained
                and from W0 at the surviving connections (rewound)      one-time  / rewound
  3. gradual    for each s, a *separate* run from W0 that prunes on     gradual   / pruned
                Zhu & Gupta's cubic schedule from epoch 1 to 2/3 of
                training and fine-tunes for the rest; then retrain on
                its mask, fresh and rewound                             gradual   / retrained, rewound

Why separate gradual runs rather than one run to the highest sparsity with snapshots: a
snapshot taken while passing 50% on the way to 99% is mid-schedule, at a high learning rate
and without fine-tuning, so it would understate what gradual pruning to 50% achieves. One run
per target gives every sparsity the full prune-then-fine-tune schedule (at 5x the cost of one
dense-then-sparse run, which is cheap here: most of each run is sparse).

Prints the study's table (rows: sparsity; columns: dense, one-time pruned/retrained/rewound,
gradual pruned/retrained/rewound; mean +- standard deviation over seeds) and writes:
  --json   a list of records: sparsity, method, stage, seed, test_acc (fraction), nnz, and more
  --csv    the table, one row per sparsity, <column>_mean / _std / _n
  --speed  seconds per training epoch against sparsity, dense + mask and CSR, measured after
           the study on its masks; and epoch by epoch through one gradual run (Markdown + .json)
  --gradual-log  per gradual run: each pruning step's target and achieved sparsity per layer,
           and each epoch's stored nnz and time
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

import sparsenn
from sparsenn import augment, cli, data, distributed, pruning, recipes, schedules
from sparsenn.io import save_masks
from sparsenn.models import lenet300, lenet5
from sparsenn.optim import SGD
from sparsenn.runtime import thread_info
from sparsenn.train import ArrayData, evaluate, fit


# ---- models: each entry builds a network on given masks (None: dense) ---------------------
def build_lenet300(rng, masks=None, **options):
    return lenet300("dense", rng, masks=masks, **options)


def build_lenet5(rng, masks=None, **options):
    return lenet5("mnist", "dense", rng, masks=masks, **options)


def build_lenet5_cifar10(rng, masks=None, **options):
    return lenet5("cifar10", "dense", rng, masks=masks, **options)


# epochs: each run's length; warmup: steps of linear learning-rate warm-up (LeNet-5's first
# steps blow up at lr 0.05 without it, see examples/lenet5.py); conv: takes convolution options
MODELS = {
    "lenet300": dict(build=build_lenet300, dataset="mnist", about="LeNet-300-100, 784-300-100-10, ReLU",
                     epochs=20, warmup=0, conv=False),
    "lenet5": dict(build=build_lenet5, dataset="mnist", epochs=5, warmup=200, conv=True,
                   about="LeNet-5 (TensorFlow variant: conv 20, conv 50, LRN, 2450-384-10)"),
    "lenet5-cifar10": dict(build=build_lenet5_cifar10, dataset="cifar10", epochs=40, warmup=200, conv=True,
                           about="LeNet-5 on CIFAR-10 (TensorFlow variant, 24x24 crops, 1800-384-10)"),
}


def build(cfg, rng, masks=None):
    """A fresh network of ``cfg['model']`` on ``masks`` (None: dense), initialised (and its
    logits, biases and weight decay set) as cfg's recipe says (``sparsenn.recipes``).

    A mask may be empty: one global magnitude threshold can take every weight of a layer (a
    99%-pruned model whose training had collapsed, its largest layer's weights decayed toward
    zero, loses all of fc1). That is a result of the pruning, not a mistake in the input, so
    the network is built as it is (``allow_empty``) and trains to chance; :func:`retrain` names
    the empty layers in its log line and its record."""
    spec = MODELS[cfg["model"]]
    return spec["build"](rng, masks=masks, allow_empty=masks is not None,
                         **recipes.model_options(cfg, convolutional=spec["conv"]))


def empty_layers(model) -> list:
    """Names of the weight layers with no connections left."""
    return [l.name for l in model.weight_layers() if l.nnz == 0]


# ---- defaults: the whole study takes ~6 minutes per seed on 2 cores (~30 training runs) ----
DEFAULTS = dict(
    model="lenet300",
    sparsities=[0.5, 0.75, 0.9, 0.95, 0.99],
    seeds=1,
    epochs=None,           # per model (MODELS): dense, gradual and every retraining run
    batch_size=100,        # as in the 2019 study
    lr=0.05,               # SGD, Nesterov momentum 0.9, cosine decay to 0 over each run
    momentum=0.9,
    schedule="cosine",
    weight_decay=5e-4,     # on existing weights only
    scope="global",        # one threshold over all layers: the 100->10 logits layer, whose
                           # weights are large, keeps more (a uniform 99% would leave it 10)
    prune_begin=1.0,       # gradual: start pruning after this many epochs ...
    prune_end=2 / 3,       # ... reach the target at this fraction of training, then fine-tune
    prune_every=200,       # steps between pruning steps (fewer in --quick runs)
    exponent=3.0,          # Zhu & Gupta's cubic
    crossover=0.3,         # a dense layer turns CSR when its density first drops below this
    init_fan="actual",     # fresh weights scaled by each neuron's real fan-in
    quick_train=2000,      # --quick: this many training images ...
    quick_test=1000,       # ... and test images,
    quick_epochs=2,        # ... this many epochs,
    quick_sparsities=[0.5, 0.9],  # ... and these sparsities
)
# --recipe paper replaces these (and the defaults of the recipe flags) with the 2019 study's
# values, except where a flag is given: sparsenn.recipes.PAPER
METHODS = ("one-time", "gradual")
COLUMNS = [("dense", "trained"), ("one-time", "pruned"), ("one-time", "retrained"), ("one-time", "rewound"),
           ("gradual", "pruned"), ("gradual", "retrained"), ("gradual", "rewound")]
REFERENCE_2019 = {  # Alford et al. 2019, LeNet-300-100 on MNIST, percent
    0.9: {"dense": 97.03, "one-time retrained": 96.19, "gradual pruned": 97.40, "gradual retrained": 97.02},
    0.99: {"one-time retrained": 56.08, "gradual pruned": 96.83, "gradual retrained": 96.08},
}


def parse_args(argv=None):
    """The flags, resolved under --recipe (a Namespace)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default=DEFAULTS["model"])
    p.add_argument("--sparsities", type=float, nargs="+", default=None,
                   help=f"target sparsities in [0, 1) (default {DEFAULTS['sparsities']}, "
                        f"with --quick {DEFAULTS['quick_sparsities']})")
    p.add_argument("--seeds", type=cli.positive_int, default=DEFAULTS["seeds"], help="run seeds 0 .. N-1")
    p.add_argument("--first-seed", type=cli.nonneg_int, default=0)
    p.add_argument("--epochs", type=cli.positive_int, default=None,
                   help="epochs per run (default: 20 for lenet300, 5 for lenet5, 40 for lenet5-cifar10; quick 2)")
    p.add_argument("--batch-size", type=cli.positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=cli.positive_float, default=DEFAULTS["lr"])
    p.add_argument("--momentum", type=cli.nonneg_float, default=DEFAULTS["momentum"], help="0: plain SGD, else Nesterov")
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default=DEFAULTS["schedule"])
    p.add_argument("--milestones", type=cli.nonneg_int, nargs="*", default=[10000, 20000],
                   help="steps at which the 'step' schedule halves the learning rate")
    p.add_argument("--warmup", type=cli.nonneg_int, default=None,
                   help="steps of linear warm-up of the cosine schedule (default: 200 for lenet5, 0 for lenet300)")
    p.add_argument("--weight-decay", type=cli.nonneg_float, default=DEFAULTS["weight_decay"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--no-rewind", action="store_true", help="skip the rewound (lottery-ticket) retraining")
    p.add_argument("--scope", choices=pruning.SCOPES, default=DEFAULTS["scope"],
                   help="one magnitude threshold over all pruned layers, or one sparsity per layer")
    p.add_argument("--keep-first-dense", action="store_true", help="do not prune the first weight layer")
    p.add_argument("--keep-last-dense", action="store_true", help="do not prune the last (logits) layer")
    p.add_argument("--prune-begin", type=cli.nonneg_float, default=DEFAULTS["prune_begin"], help="gradual: first epoch")
    p.add_argument("--prune-end", type=cli.positive_float, default=DEFAULTS["prune_end"], help="gradual: fraction of training")
    p.add_argument("--prune-every", type=cli.positive_int, default=DEFAULTS["prune_every"], help="gradual: steps between prunings")
    p.add_argument("--exponent", type=cli.positive_float, default=DEFAULTS["exponent"])
    p.add_argument("--crossover", type=cli.nonneg_float, default=DEFAULTS["crossover"])
    p.add_argument("--init-fan", choices=["actual", "dense"], default=DEFAULTS["init_fan"],
                   help="fresh retraining weights scaled by each neuron's actual fan-in, or the dense one (2019)")
    recipes.add_flags(p, convolutional=True)
    p.add_argument("--data-dir", help="where the dataset lives (default: $SPARSENN_DATA, then data/, ...)")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test run: data subset, 2 epochs")
    p.add_argument("--json", metavar="PATH", help="write the list of records here")
    p.add_argument("--csv", metavar="PATH", help="write the table here")
    p.add_argument("--speed", metavar="PATH", help="write the time-per-epoch table (Markdown) here")
    p.add_argument("--gradual-log", metavar="PATH", help="write each gradual run's pruning and epoch log (JSON)")
    p.add_argument("--save-dir", metavar="DIR", help="save every mask and pruned model (.npz) here")
    p.add_argument("--plot", metavar="PATH", help="draw accuracy against sparsity to this image (matplotlib)")
    p.add_argument("--verbose", action="store_true", help="print every epoch and pruning step")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    cli.check_milestones(p, args.milestones)
    given = cli.given_flags(p, argv)
    vars(args).update(recipes.resolve(vars(args), given, MODELS[args.model]["dataset"]))
    if args.sparsities is None:
        args.sparsities = DEFAULTS["quick_sparsities" if args.quick else "sparsities"]
    if args.quick and not given & {"epochs", "steps"}:  # a smoke test, whatever the recipe's length
        args.steps = None
    if args.epochs is None and args.steps is None:
        args.epochs = DEFAULTS["quick_epochs"] if args.quick else MODELS[args.model]["epochs"]
    if args.warmup is None:
        args.warmup = MODELS[args.model]["warmup"]
    for s in args.sparsities:
        if not 0 <= s < 1:
            p.error(f"--sparsities must be in [0, 1), got {s}")
    args.sparsities = sorted(set(args.sparsities))
    if not 0 < args.prune_end <= 1 or args.prune_begin < 0:
        p.error("--prune-end must be in (0, 1] and --prune-begin >= 0")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib, which is not installed: pip install 'sparsenn[plot]' "
                    "(or pip install matplotlib)")
    # every output path now, before hours of training, not after
    cli.check_output_paths(args, files=("json", "csv", "speed", "gradual_log"), figures=("plot",), dirs=("save_dir",),
                           parser=p)
    if args.speed:  # --speed writes its records beside the table, as STEM.json
        speed_json = os.path.splitext(args.speed)[0] + ".json"
        if args.speed.lower().endswith(".json"):
            p.error(f"--speed {args.speed}: the table is Markdown and its records go beside it as {speed_json}; "
                    "give a .md path")
        cli.check_output_paths({"speed": speed_json}, files=("speed",), parser=p)
        others = {os.path.realpath(v) for v in (args.json, args.csv, args.gradual_log, args.plot) if v}
        if os.path.realpath(speed_json) in others:
            p.error(f"--speed {args.speed} writes its records to {speed_json}, which another output names too")
    return args


# ---- one training run ---------------------------------------------------------------------
COMM = None  # the MPI communicator under mpiexec -n P (P > 1): every fit is then data-parallel


class CroppedData(ArrayData):
    """CIFAR-10's training set as TensorFlow's tutorial feeds it: ``x_train`` (n, 3*24*24)
    refilled with fresh random crops and flips of ``images`` (uint8 (n, 3, 32, 32)) at every
    epoch, drawn from (seed, epoch) (``sparsenn.augment.EpochCrops``); test: centre crops."""

    def __init__(self, images, labels, x_test, y_test):
        super().__init__(np.zeros((len(images), 3 * augment.CROP ** 2), np.float32), labels, x_test, y_test)
        self.images = images


def load_arrays(cfg) -> tuple:
    """(ArrayData, dataset name and source) of cfg's model, prepared as cfg's recipe says
    (held-back training images, [0, 1] or standardised pixels); ``cfg['quick']``: the first
    images of each set only (a smoke test, not a measurement)."""
    ds = data.load(MODELS[cfg["model"]]["dataset"], root=cfg["data_dir"])
    if cfg["train_size"]:
        ds = data.hold_out(ds, cfg["train_size"])
    if cfg["quick"]:
        n, m = DEFAULTS["quick_train"], DEFAULTS["quick_test"]
        ds = dataclasses.replace(ds, train_images=ds.train_images[:n], train_labels=ds.train_labels[:n],
                                 test_images=ds.test_images[:m], test_labels=ds.test_labels[:m])
    if ds.name == "cifar10":
        arrays = CroppedData(ds.train_images, ds.train_labels.astype(np.int64),
                             augment.center_crops(ds.test_images), ds.test_labels.astype(np.int64))
    else:
        arrays = ArrayData.from_dataset(ds, standardize=cfg["standardize"])
    return arrays, f"{ds.name} from {ds.source}"


def study_config(args: dict, n_train: int) -> dict:
    """The study's configuration: the flags, plus the run length and the gradual pruning
    schedule in steps (from epochs, for ``n_train`` training images)."""
    cfg = dict(args)
    cfg["steps_per_epoch"] = spe = math.ceil(n_train / cfg["batch_size"])
    cfg["total_steps"] = total = cfg["steps"] or cfg["epochs"] * spe
    cfg["prune_end_step"] = end = max(2, round(cfg["prune_end"] * total))
    cfg["prune_begin_step"] = begin = min(round(cfg["prune_begin"] * spe), end // 2)
    cfg["prune_every_steps"] = min(cfg["prune_every"], max(1, (end - begin) // 10))  # >= 10 pruning steps
    return cfg


def train(model, arrays, cfg, seed, callbacks=(), eval_every=0):
    """SGD (Nesterov when momentum > 0) over cfg['total_steps'] on cfg's schedule (cosine:
    with cfg['warmup'] steps of warm-up, at most a tenth of the run). Returns (fit's summary,
    optimiser). Under MPI, data-parallel: the pruning callbacks see the same weights on every
    rank. eval_every: also evaluate every that many steps (the summary's history).

    cfg['checkpoint'] (optional, set by reproduce.py for one run): a path stem. The n-th
    training of the run without callbacks or eval_every (which a checkpoint would not carry:
    a pruning schedule's state, the history of evaluations) writes a checkpoint at every epoch
    end to ``<stem>-<n>.npz``, resumes from it if a killed run left one, and removes it once
    done. The n-th training of a re-run is the n-th of the killed run: a run is deterministic.
    A resumed training's summary counts the resumed part only (epoch_seconds)."""
    ckpt = None
    if cfg.get("checkpoint") and not callbacks and not eval_every:
        cfg["checkpoint_calls"] = cfg.get("checkpoint_calls", 0) + 1
        ckpt = f"{cfg['checkpoint']}-{cfg['checkpoint_calls']}.npz"
    opt = SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["momentum"] > 0,
              weight_decay=cfg["weight_decay"])
    total = cfg["total_steps"]
    schedule = schedules.make(cfg["schedule"], cfg["lr"], total, milestones=cfg["milestones"],
                              warmup=min(cfg["warmup"], total // 10))
    if isinstance(arrays, CroppedData):  # this run's crops, from epoch 0
        crops = augment.EpochCrops(arrays.images, arrays.x_train, seed, cfg["steps_per_epoch"])
        crops.fill(0)
        callbacks = [crops, *callbacks]
    summary = fit(model, arrays, opt, schedule, steps=total, batch_size=cfg["batch_size"], seed=seed,
                  callbacks=callbacks, progress=cfg["progress"], eval_every=eval_every,
                  log=print if cfg["verbose"] else (lambda *a: None), save_path=ckpt,
                  resume=ckpt if ckpt and os.path.exists(ckpt) else None,
                  parallel=distributed.DataParallel(COMM, model) if COMM is not None else None)
    if ckpt and os.path.exists(ckpt) and (COMM is None or COMM.Get_rank() == 0):
        os.remove(ckpt)  # this training is done: a re-run of the run must not resume it
    return summary, opt


def record(sparsity, method, stage, seed, model, acc, **extra):
    masks = pruning.model_masks(model)
    nnz = sum(m.nnz for m in masks)
    full = sum(m.shape[0] * m.shape[1] for m in masks)
    # bytes to store the structure in CSR (indptr int32, indices int32, data float32)
    csr = sum(4 * (m.shape[0] + 1) + 8 * m.nnz for m in masks)
    return {"sparsity": float(sparsity), "method": method, "stage": stage, "seed": int(seed), "test_acc": float(acc),
            "nnz": int(nnz), "achieved_sparsity": 1 - nnz / full, "dense_bytes": 4 * full, "csr_bytes": int(csr),
            **extra}


def retrain(masks, sparsity, method, seed, arrays, cfg, w0, say):
    """Train a fresh network on ``masks``: new random weights, and (unless --no-rewind) W0."""
    out = []
    variants = [("retrained", None)] + ([] if cfg["no_rewind"] else [("rewound", w0)])
    for stage, initial in variants:
        t0 = time.perf_counter()
        # retraining draws its weights from its own stream, so they are not W0
        model = build(cfg, np.random.default_rng([seed, 1]), masks=masks)
        if initial is not None:
            pruning.rewind(model, initial)
        empty = empty_layers(model)
        if empty:
            say(f"{method} {100 * sparsity:g}%: pruning left {', '.join(empty)} with no connections: "
                f"the {stage} network passes on only their biases, so it can learn nothing")
        summary, _ = train(model, arrays, cfg, seed)
        out.append(record(sparsity, method, stage, seed, model, summary["test_acc"],
                          seconds=time.perf_counter() - t0, epoch_seconds=summary["epoch_seconds"],
                          **({"empty_layers": empty} if empty else {})))
        say(f"{method} {100 * sparsity:g}%: {stage} {100 * summary['test_acc']:.2f}% "
            f"(nnz {out[-1]['nnz']:,}, {out[-1]['seconds']:.1f} s)")
    return out


def save_structure(cfg, method, sparsity, seed, model, say):
    if not cfg["save_dir"] or (COMM is not None and COMM.Get_rank() != 0):  # rank 0 writes
        return
    stem = os.path.join(cfg["save_dir"], f"{cfg['model']}_{method}_s{sparsity:g}_seed{seed}")
    save_masks(stem + "_mask.npz", pruning.model_masks(model), sparsity=sparsity, seed=seed)
    size = pruning.save_sparse_model(stem + "_model.npz", model)
    b = pruning.storage_bytes(model)
    say(f"saved {stem}_mask.npz and _model.npz: weights {b['dense_bytes']:,} B dense -> "
        f"{b['stored_bytes']:,} B stored ({size:,} B on disk)")


# ---- the study, one seed --------------------------------------------------------------------
def train_dense(seed, arrays, cfg, say):
    """1. The dense model trained from its initial weights W0: (model, W0, record)."""
    t0 = time.perf_counter()
    dense = build(cfg, np.random.default_rng(seed))
    w0 = pruning.initial_weights(dense)
    summary, _ = train(dense, arrays, cfg, seed)
    rec = record(0.0, "dense", "trained", seed, dense, summary["test_acc"], seconds=time.perf_counter() - t0,
                 epoch_seconds=summary["epoch_seconds"])
    say(f"dense: trained {100 * summary['test_acc']:.2f}% ({rec['seconds']:.1f} s)")
    return dense, w0, rec


def one_time(dense, s, seed, arrays, cfg, w0, say, retrain_too=True):
    """2. Prune a copy of the trained dense model once to sparsity ``s`` and, if
    ``retrain_too``, retrain on its mask: (records, masks)."""
    pruned = copy.deepcopy(dense)
    pruning.prune_once(pruned, s, scope=cfg["scope"], keep_first_dense=cfg["keep_first_dense"],
                       keep_last_dense=cfg["keep_last_dense"])
    acc, _ = evaluate(pruned, arrays.x_test, arrays.y_test, scale=arrays.scale, shift=arrays.shift)
    records = [record(s, "one-time", "pruned", seed, pruned, acc)]
    say(f"one-time {100 * s:g}%: pruned {100 * acc:.2f}% (nnz {records[-1]['nnz']:,})")
    save_structure(cfg, "one-time", s, seed, pruned, say)
    masks = pruning.model_masks(pruned)
    if retrain_too:
        records += retrain(masks, s, "one-time", seed, arrays, cfg, w0, say)
    return records, masks


def gradual(s, seed, arrays, cfg, w0, say, gradual_log):
    """3. A separate run from W0 that prunes gradually to ``s``, then retraining on its mask:
    (records, masks); the run's pruning and epoch log is appended to ``gradual_log``."""
    t0 = time.perf_counter()
    model = build(cfg, np.random.default_rng(seed))  # the same W0 as the dense run
    pruner = pruning.GradualPruner(
        model, s, begin=cfg["prune_begin_step"], end=cfg["prune_end_step"], frequency=cfg["prune_every_steps"],
        exponent=cfg["exponent"], scope=cfg["scope"], keep_first_dense=cfg["keep_first_dense"],
        keep_last_dense=cfg["keep_last_dense"], crossover=cfg["crossover"],
        log=(lambda m: say("  " + m)) if cfg["verbose"] else None)
    summary, opt = train(model, arrays, cfg, seed, callbacks=[pruner])
    pruner.finalize(model, opt, convert=True)  # final masks once more; every pruned layer CSR
    acc, _ = evaluate(model, arrays.x_test, arrays.y_test, scale=arrays.scale, shift=arrays.shift)
    epochs = [r for r in summary["history"] if r["kind"] == "epoch"]
    records = [record(s, "gradual", "pruned", seed, model, acc, seconds=time.perf_counter() - t0,
                      epoch_seconds=summary["epoch_seconds"])]
    say(f"gradual {100 * s:g}%: pruned {100 * acc:.2f}% (nnz {records[-1]['nnz']:,}, {records[-1]['seconds']:.1f} s)")
    gradual_log.append({"seed": seed, "sparsity": s, "pruning": pruner.history,
                        "epochs": [{k: r[k] for k in ("epoch", "step", "nnz", "density", "epoch_seconds",
                                                      "test_acc", "train_loss")} for r in epochs]})
    save_structure(cfg, "gradual", s, seed, model, say)
    masks = pruning.model_masks(model)
    records += retrain(masks, s, "gradual", seed, arrays, cfg, w0, say)
    return records, masks


def run_seed(seed, arrays, cfg, gradual_log):
    """The study for one seed: (records, {(method, sparsity): masks})."""
    def say(msg):
        print(f"[seed {seed}] {msg}", flush=True)

    dense, w0, rec = train_dense(seed, arrays, cfg, say)
    records, structures = [rec], {}
    for s in cfg["sparsities"]:
        for method in (m for m in METHODS if m in cfg["methods"]):
            if method == "one-time":
                recs, structures[(method, s)] = one_time(dense, s, seed, arrays, cfg, w0, say)
            else:
                recs, structures[(method, s)] = gradual(s, seed, arrays, cfg, w0, say, gradual_log)
            records += recs
    return records, structures


# ---- tables ---------------------------------------------------------------------------------
def table_rows(records, sparsities):
    """[(sparsity, {column: (mean, std, n)})], accuracies in percent; dense fills every row."""
    def stats(accs):
        a = 100 * np.asarray(accs)
        return (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)) if len(a) else None

    rows = []
    dense = stats([r["test_acc"] for r in records if r["method"] == "dense"])
    for s in sparsities:
        cols = {"dense trained": dense}
        for method, stage in COLUMNS[1:]:
            accs = [r["test_acc"] for r in records
                    if r["method"] == method and r["stage"] == stage and r["sparsity"] == s]
            cols[f"{method} {stage}"] = stats(accs)
        rows.append((s, cols))
    return rows


def format_table(rows) -> str:
    names = [f"{m} {st}" for m, st in COLUMNS]
    names = [n for n in names if any(cols.get(n) for _, cols in rows)]
    head = f"{'sparsity':>8} " + " ".join(f"{n:>18}" for n in names)
    lines = [head, "-" * len(head)]
    for s, cols in rows:
        cells = [f"{cols[n][0]:6.2f} +- {cols[n][1]:4.2f} " if cols[n] else f"{'-':>17} " for n in names]
        lines.append(f"{100 * s:7.1f}% " + " ".join(f"{c:>18}" for c in cells))
    n = max((c[2] for _, cols in rows for c in cols.values() if c), default=0)
    lines.append(f"test accuracy in %, mean +- standard deviation over {n} seed(s)")
    return "\n".join(lines)


def write_csv(path, rows) -> None:
    names = [f"{m} {st}" for m, st in COLUMNS]
    keys = [k.replace(" ", "_") for k in names]
    with open(path, "w") as f:
        f.write("sparsity," + ",".join(f"{k}_mean,{k}_std,{k}_n" for k in keys) + "\n")
        for s, cols in rows:
            cells = [f"{c[0]:.4f},{c[1]:.4f},{c[2]}" if c else ",,0" for c in (cols[n] for n in names)]
            f.write(f"{s}," + ",".join(cells) + "\n")


def measure_speed(arrays, cfg, masks_by_sparsity, n_images=10_000, repeats=3):
    """Seconds per training epoch (all of arrays.x_train) at each sparsity, in both forms a
    pruned layer can take: dense BLAS with a mask re-applied after every step (what a
    GradualPruner does above the crossover) and CSR (below it). Each is one ``fit`` epoch on
    ``n_images`` images, repeated and interleaved; the minimum is kept, as the time least
    disturbed by other work on the machine, then scaled to the full training set."""
    subset = dataclasses.replace(arrays, x_train=arrays.x_train[:n_images].copy(),
                                 y_train=arrays.y_train[:n_images].copy(), x_test=arrays.x_test[:100].copy(),
                                 y_test=arrays.y_test[:100].copy())
    scale = len(arrays.x_train) / len(subset.x_train)
    never = 10**9  # a pruner that never prunes again, only re-applies its masks

    def one_epoch(sparsity, form):
        model = build(cfg, np.random.default_rng(0), masks=masks_by_sparsity[sparsity] if form == "csr" else None)
        callbacks = []
        if form == "dense" and sparsity > 0:
            pruner = pruning.GradualPruner(model, sparsity, begin=never, end=never + 1, scope=cfg["scope"],
                                           crossover=0.0)
            pruner.prune_to(model, None, pruner.targets(never + 1))
            callbacks = [pruner]
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"])
        s = fit(model, subset, opt, schedules.Constant(0.01), epochs=1, batch_size=cfg["batch_size"], seed=0,
                callbacks=callbacks, progress=False, log=lambda *a: None)
        return scale * s["epoch_seconds"][0]

    runs = [(0.0, "dense")] + [(s, form) for s in sorted(masks_by_sparsity) for form in ("dense", "csr")]
    best = {run: math.inf for run in runs}
    for _ in range(repeats):
        for run in runs:
            best[run] = min(best[run], one_epoch(*run))
    return [{"sparsity": s, "form": form, "epoch_seconds": best[(s, form)],
             "nnz": sum(m.nnz for m in masks_by_sparsity[s]) if s else None} for s, form in runs]


def speed_markdown(speed, gradual_log, cfg, n_train) -> str:
    """Two Markdown tables: time per epoch against sparsity, and through one gradual run."""
    dense = next(r["epoch_seconds"] for r in speed if r["sparsity"] == 0)
    repeats = "a single run (--quick)" if cfg["quick"] else "best of 3 interleaved runs"
    full = {name: n_out * n_in for name, (n_out, n_in) in cfg["layer_shapes"].items()}
    total = sum(full.values())
    lines = [f"Seconds per training epoch of {MODELS[cfg['model']]['about']} ({n_train:,} images, batch "
             f"{cfg['batch_size']}, evaluation excluded; {repeats}). A gradual pruner keeps a "
             f"layer dense (BLAS + mask) until its density drops below {cfg['crossover']}, then turns it CSR.", "",
             "| sparsity | nnz | dense + mask (s/epoch) | CSR (s/epoch) | CSR vs dense |", "|---:|---:|---:|---:|---:|",
             f"| 0 | {total:,} | {dense:.2f} | - | - |"]
    for s in sorted({r["sparsity"] for r in speed if r["sparsity"]}):
        d = next(r for r in speed if r["sparsity"] == s and r["form"] == "dense")
        c = next(r for r in speed if r["sparsity"] == s and r["form"] == "csr")
        lines.append(f"| {s:g} | {c['nnz']:,} | {d['epoch_seconds']:.2f} | {c['epoch_seconds']:.2f} | "
                     f"{d['epoch_seconds'] / c['epoch_seconds']:.1f}x |")
    if gradual_log:
        run = max(gradual_log, key=lambda r: (r["sparsity"], -r["seed"]))
        lines += ["", f"Through one gradual run to {100 * run['sparsity']:g}% sparsity (seed {run['seed']}): "
                  "stored weights (a masked dense layer stores all) and seconds per epoch.", "",
                  "| epoch | sparsity reached | stored nnz | layers | s/epoch |", "|---:|---:|---:|:---|---:|"]
        for e in run["epochs"]:
            recs = [h for h in run["pruning"] if h["step"] is not None and h["step"] <= e["step"]]
            latest = {h["layer"]: h for h in recs}
            reached = 1 - sum(latest[n]["nnz"] if n in latest else full[n] for n in full) / total
            kinds = ", ".join(f"{k}:{h['kind']}" for k, h in latest.items()) or "all dense"
            lines.append(f"| {e['epoch']} | {100 * reached:.1f}% | {e['nnz']:,} | {kinds} | {e['epoch_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(path, rows) -> None:
    """Accuracy against sparsity. Both axes are stretched by -log(1 - value), so 90%, 99% and
    99.9% are evenly spaced on each: the differences that matter (98.5% against 97.5%) stay
    visible beside a collapse to 14%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def stretch(v):  # v in percent
        return -np.log10(np.clip(100.0 - np.asarray(v, dtype=float), 1e-3, None) / 100.0)

    def unstretch(u):
        return 100.0 - 100.0 * 10.0 ** (-np.asarray(u, dtype=float))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [100 * s for s, _ in rows]
    for method, stage in COLUMNS:
        name = f"{method} {stage}"
        pts = [(x, cols[name]) for x, (_, cols) in zip(xs, rows) if cols.get(name)]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts],
                        marker="o", capsize=3, label=name, linestyle="--" if method == "dense" else "-")
    ax.set_xscale("function", functions=(stretch, unstretch))
    ax.set_yscale("function", functions=(stretch, unstretch))
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}" for x in xs])
    ticks = [t for t in (10, 50, 80, 90, 95, 97, 98, 99, 99.5) if t >= min(ax.get_ylim()[0], 99)]
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _write_json(path, obj, indent=1) -> None:
    """Atomically (a temporary file renamed over it): a kill never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)


# ---- main ---------------------------------------------------------------------------------
def main(argv=None, comm=None) -> int:
    """comm: the MPI communicator when started by ``mpiexec -n P`` (P > 1), else None."""
    global COMM
    args = parse_args(argv)
    if comm is not None:
        if args.speed:
            raise ValueError("--speed times one process: run it without mpiexec")
        print(f"data-parallel: {comm.Get_size()} ranks x {distributed.share_cores(comm)} thread(s)")
        if comm.Get_rank() != 0:  # rank 0 alone writes the results
            args.json = args.csv = args.gradual_log = args.plot = None
    COMM = comm
    t_start = time.perf_counter()
    spec = MODELS[args.model]

    # ---- data ----------------------------------------------------------------------------
    arrays, source = load_arrays(vars(args))
    print(f"data: {source} ({len(arrays.x_train):,} train, {len(arrays.x_test):,} test)")

    # ---- configuration: run length and gradual pruning steps resolved from epochs -----------
    cfg = study_config(vars(args), len(arrays.x_train))
    cfg["seed_list"] = list(range(args.first_seed, args.first_seed + args.seeds))
    cfg["layer_shapes"] = {l.name: list(l.shape) for l in build(cfg, np.random.default_rng(0)).weight_layers()}
    cfg["sparsenn_version"] = sparsenn.__version__
    print("configuration:", json.dumps(cfg, sort_keys=True))
    print(f"model: {spec['about']}; gradual pruning from step {cfg['prune_begin_step']} to {cfg['prune_end_step']} "
          f"every {cfg['prune_every_steps']} steps, then fine-tuning to step {cfg['total_steps']}")
    thread_info()

    # ---- the study ---------------------------------------------------------------------
    records, gradual_log, first_masks = [], [], {}
    for seed in cfg["seed_list"]:
        recs, structures = run_seed(seed, arrays, cfg, gradual_log)
        records += recs
        for (method, s), masks in structures.items():  # the first seed's, gradual ones preferred
            if s not in first_masks or method == "gradual" and seed == cfg["seed_list"][0]:
                first_masks[s] = masks
        if args.json:  # after each seed, so a long run that stops keeps what it has
            _write_json(args.json, records)

    # ---- results -------------------------------------------------------------------------
    rows = table_rows(records, args.sparsities)
    print()
    print(f"{spec['about']} on {spec['dataset']}: prune, then retrain on the pruned structure")
    print(format_table(rows))
    print("Alford et al. 2019 (%):", json.dumps({str(k): v for k, v in REFERENCE_2019.items()}))
    elapsed = time.perf_counter() - t_start
    print(f"elapsed {elapsed / 60:.1f} min")
    if args.json:
        _write_json(args.json, records)
        print(f"records: {args.json}")
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        write_csv(args.csv, rows)
        print(f"table: {args.csv}")
    if args.speed:
        print("measuring time per epoch against sparsity (dense + mask vs CSR) ...", flush=True)
        speed = measure_speed(arrays, cfg, first_masks, repeats=1 if args.quick else 3)
        text = speed_markdown(speed, gradual_log, cfg, len(arrays.x_train))
        os.makedirs(os.path.dirname(os.path.abspath(args.speed)), exist_ok=True)
        with open(args.speed, "w") as f:
            f.write(text)
        _write_json(os.path.splitext(args.speed)[0] + ".json", speed)
        print(text)
    if args.gradual_log:
        _write_json(args.gradual_log, {"config": cfg, "runs": gradual_log}, indent=None)
    if args.plot:
        plot(args.plot, rows)
        print(f"plot: {args.plot}")
    return 0


def run(comm=None) -> int:
    return cli.run_main(main, comm=comm, errors=(RuntimeError,))  # RuntimeError: --device cuda without a GPU


if __name__ == "__main__":
    sys.exit(distributed.launch(run))  # data-parallel when started by mpiexec -n P, P > 1
