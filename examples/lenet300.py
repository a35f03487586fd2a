"""Train LeNet-300-100 (784-300-100-10, ReLU) on MNIST on a dense or sparse topology.

    python examples/lenet300.py --topology radix
    python examples/lenet300.py --topology dense --epochs 20 --metrics runs/dense.jsonl
    python examples/lenet300.py --mask pruned.npz --save runs/ckpt.npz
    python examples/lenet300.py --resume runs/ckpt.npz          # continue a stopped run
    python examples/lenet300.py --resume runs/ckpt.npz --epochs 40   # extend a finished one
    python examples/lenet300.py --recipe paper --topology dense    # the 2019 study's training recipe
    mpiexec -n 2 python examples/lenet300.py --topology radix   # data-parallel, same global batch

Reads top to bottom: configuration, data, model, optimiser, training, summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

import sparsenn  # noqa: F401  (configures the thread pools before any kernel runs)
from sparsenn import checkpoint, cli, data, distributed, recipes, schedules
from sparsenn.io import load_masks
from sparsenn.models import TOPOLOGIES, layer_table, lenet300
from sparsenn.optim import SGD, Adam
from sparsenn.device import DEVICES, describe, resolve_device
from sparsenn.train import ArrayData, TrainingDiverged, fit, format_summary

# ---- defaults: each chosen to train well in a few minutes on 2 cores ---------------------------
DEFAULTS = dict(
    topology="radix",      # the study's subject: 90%-sparse RadiX-Net, dense logits
    dataset="mnist",       # or fashion-mnist
    epochs=30,             # ~0.3 s/epoch radix, ~0.8 s/epoch dense here (README, bench_train.py)
    batch_size=100,        # as in the 2019 study
    optimizer="sgd",       # SGD with Nesterov momentum ...
    lr=0.05,               # ... at 0.05, decayed by a cosine to 0 over the run
    momentum=0.9,
    schedule="cosine",     # "step" reproduces the study: 0.2, 0.1 at 10k steps, 0.05 at 20k
    weight_decay=5e-4,     # on weights only, and only on connections that exist
    seed=0,
)
# --recipe paper replaces these (and the defaults of the recipe flags) with the 2019 study's
# values, except where a flag is given: sparsenn.recipes.PAPER


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--topology", choices=TOPOLOGIES, default=DEFAULTS["topology"])
    p.add_argument("--mask", metavar="FILE.npz", help="train on the masks in this file instead of --topology")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default=DEFAULTS["dataset"])
    p.add_argument("--data-dir", help="where the dataset lives (default: $SPARSENN_DATA, then data/, ...)")
    p.add_argument("--epochs", type=cli.positive_int, default=DEFAULTS["epochs"],
                   help="with --resume: extend (or shorten) the run; the schedule is recomputed")
    p.add_argument("--batch-size", type=cli.positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=DEFAULTS["optimizer"])
    p.add_argument("--lr", type=cli.positive_float, default=None, help="learning rate (default 0.05 for sgd, 1e-3 for adam)")
    p.add_argument("--momentum", type=cli.nonneg_float, default=DEFAULTS["momentum"], help="sgd only; 0 for plain SGD")
    p.add_argument("--no-nesterov", action="store_true", help="classical instead of Nesterov momentum")
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default=DEFAULTS["schedule"])
    p.add_argument("--milestones", type=cli.nonneg_int, nargs="*", default=[10000, 20000],
                   help="steps at which the 'step' schedule halves the learning rate")
    p.add_argument("--weight-decay", type=cli.nonneg_float, default=DEFAULTS["weight_decay"])
    p.add_argument("--init-fan", choices=["actual", "dense"], default="actual",
                   help="scale sparse weights by each neuron's actual fan-in, or by the dense one")
    p.add_argument("--seed", type=cli.nonneg_int, default=DEFAULTS["seed"])
    recipes.add_flags(p)
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to train: auto picks an NVIDIA GPU when one is usable (needs the gpu extra)")
    p.add_argument("--eval-every", type=cli.nonneg_int, default=0, help="also evaluate every N steps (0: epoch ends)")
    p.add_argument("--metrics", metavar="PATH", help="append JSON lines of metrics here")
    p.add_argument("--save", metavar="PATH", help="checkpoint (.npz) written at each epoch end")
    p.add_argument("--save-every", type=cli.nonneg_int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", metavar="PATH",
                   help="continue the run saved in this checkpoint, with its flags (its epochs, schedule, "
                        "--save, --save-every and --metrics unless given again)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    cli.check_milestones(p, args.milestones)
    return args, cli.given_flags(p, argv)


# on --resume: flags that belong to this invocation, and flags that may change the run's course
LOCAL = ("device", "resume", "no_progress", "data_dir")
CHANGEABLE = ("epochs", "steps", "save", "save_every", "metrics", "eval_every")


def main(argv=None, comm=None) -> int:
    """comm: the MPI communicator when started by ``mpiexec -n P`` (P > 1), else None."""
    args, given = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if comm is not None:  # data-parallel: rank 0 alone speaks and writes
        threads = distributed.share_cores(comm)
        print(f"data-parallel: {comm.Get_size()} ranks x {threads} thread(s)")
        if args.device == "cuda":
            raise ValueError("data-parallel training runs on the CPU; leave out --device cuda under mpiexec")
        args.device = "cpu"

    # ---- configuration: a resumed run takes its configuration from the checkpoint ----------
    config = recipes.resolve(vars(args), given, args.dataset)  # --recipe's values, except flags given
    # paths absolute, so that a run resumed from another directory writes to the same files
    config.update({k: os.path.abspath(config[k]) for k in ("save", "metrics", "mask") if config[k]})
    if args.resume:
        saved = checkpoint.read_checkpoint(args.resume)["config"]
        config = cli.resume_config(saved, config, given, changeable=CHANGEABLE, local=LOCAL)
        if "epochs" in given and "steps" not in given:
            config["steps"] = None  # --epochs given again: the run's length is now in epochs
    if config["steps"] is None and config["epochs"] is None:
        config["epochs"] = DEFAULTS["epochs"]
    if config["lr"] is None:
        config["lr"] = 0.05 if config["optimizer"] == "sgd" else 1e-3
    cli.check_output_paths(config, files=("save", "metrics"), inputs=("mask",))  # before hours of training, not after
    print("configuration:", json.dumps({k: v for k, v in config.items() if v is not None}, sort_keys=True))
    device = resolve_device(config["device"])  # where to train: "cpu" or "cuda"
    print("device:", describe(device))

    # ---- data ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    ds = data.load(config["dataset"], root=config["data_dir"])
    if config["train_size"]:
        ds = data.hold_out(ds, config["train_size"])
    arrays = ArrayData.from_dataset(ds, standardize=config["standardize"])
    print(f"data: {ds.name} from {ds.source} ({len(arrays.x_train):,} train, {len(arrays.x_test):,} test, "
          f"{time.perf_counter() - t0:.1f} s)")

    # ---- model -----------------------------------------------------------------------------
    rng = np.random.default_rng(config["seed"])  # masks of random topologies and initial weights
    masks = load_masks(config["mask"]) if config["mask"] else None
    model = lenet300(config["topology"], rng, masks=masks, **recipes.model_options(config))
    print(f"model: LeNet-300-100, topology {'mask ' + config['mask'] if masks else config['topology']}")
    print(layer_table(model))
    model.to(device)  # parameters move now; the optimiser's state is created where they are
    parallel = distributed.DataParallel(comm, model) if comm is not None else None

    # ---- optimiser and schedule ------------------------------------------------------------
    steps_per_epoch = -(-len(arrays.x_train) // config["batch_size"])
    total = config["steps"] or config["epochs"] * steps_per_epoch
    if config["optimizer"] == "sgd":
        opt = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                  nesterov=config["momentum"] > 0 and not config["no_nesterov"], weight_decay=config["weight_decay"])
    else:
        opt = Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    schedule = schedules.make(config["schedule"], config["lr"], total, milestones=config["milestones"])

    # ---- train -----------------------------------------------------------------------------
    try:
        summary = fit(model, arrays, opt, schedule, steps=total, batch_size=config["batch_size"],
                      seed=config["seed"], eval_every=config["eval_every"], metrics_path=config["metrics"],
                      save_path=config["save"], save_every=config["save_every"], resume=config["resume"],
                      config=config, progress=not config["no_progress"], parallel=parallel)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1

    # ---- summary ---------------------------------------------------------------------------
    print(format_summary(summary))
    return 0


def run(comm=None) -> int:
    return cli.run_main(main, comm=comm, errors=(RuntimeError,))  # RuntimeError: --device cuda without a GPU


if __name__ == "__main__":
    sys.exit(distributed.launch(run))  # data-parallel when started by mpiexec -n P, P > 1
