"""Train LeNet-5 (two convolutions, two fully connected layers) on MNIST or CIFAR-10, dense or sparse.

    python examples/lenet5.py --dataset mnist --topology dense
    python examples/lenet5.py --dataset mnist --topology random --density 0.1   # conv2, fc1 90% sparse
    python examples/lenet5.py --dataset cifar10 --topology random --metrics runs/c.jsonl --save runs/c.npz
    python examples/lenet5.py --mask pruned.npz                  # 4 masks: conv1, conv2, fc1, fc2
    python examples/lenet5.py --resume runs/c.npz                # continue a stopped run
    python examples/lenet5.py --resume runs/c.npz --epochs 60    # ... or extend a finished one
    python examples/lenet5.py --recipe paper --topology random   # the 2019 study's training recipe

The TensorFlow variant of the 2019 study by default (``--variant caffe`` for Caffe's LeNet-5);
see ``sparsenn.models.lenet5``. CIFAR-10 images go through TensorFlow's tutorial pipeline:
random 24x24 crops and flips, redrawn every epoch, for training; centre crops for testing;
per-image standardisation (``sparsenn.augment``).

Reads top to bottom: configuration, data, model, optimiser, training, summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

import numpy as np

from sparsenn import augment, checkpoint, cli, data, recipes, schedules
from sparsenn.io import load_masks
from sparsenn.models import LENET5_TOPOLOGIES, LENET5_VARIANTS, layer_table, lenet5
from sparsenn.optim import SGD, Adam
from sparsenn.device import DEVICES, describe, resolve_device
from sparsenn.train import ArrayData, TrainingDiverged, fit, format_summary

# ---- defaults: each chosen to train well in minutes on 2 cores ---------------------------------
DEFAULTS = dict(
    dataset="mnist",
    topology="dense",      # or "random": conv2 and fc1 at --density, conv1 and logits dense
    density=0.1,           # 90% sparse, as in the 2019 study
    variant="tf",          # the study's TensorFlow LeNet-5 (20/50 filters, LRN, fc 384)
    epochs={"mnist": 5, "fashion-mnist": 5, "cifar10": 40},  # MNIST: >= 99.0% dense in 5
    batch_size=100,        # as in the 2019 study
    optimizer="sgd",       # SGD with Nesterov momentum ...
    lr=0.05,               # ... at 0.05, decayed by a cosine to 0 over the run
    momentum=0.9,
    schedule="cosine",
    warmup=200,            # steps of linear warm-up: at 0.05 from the start, the first steps blow up
                           # (initial loss ~4.8: max-pooling raises the activations' scale)
    weight_decay=5e-4,     # on weights only, and only on connections that exist
    seed=0,
)
# --recipe paper replaces these (and the defaults of the recipe flags) with the 2019 study's
# values, except where a flag is given: sparsenn.recipes.PAPER


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist", "cifar10"], default=DEFAULTS["dataset"])
    p.add_argument("--topology", choices=LENET5_TOPOLOGIES, default=DEFAULTS["topology"])
    p.add_argument("--density", type=float, default=DEFAULTS["density"],
                   help="density of conv2 and fc1 for --topology random")
    p.add_argument("--mask", metavar="FILE.npz", help="train on the 4 masks in this file instead of --topology")
    p.add_argument("--variant", choices=LENET5_VARIANTS, default=DEFAULTS["variant"])
    p.add_argument("--data-dir", help="where the dataset lives (default: $SPARSENN_DATA, then data/, ...)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the dataset checksums (for the tests' tiny files only; never for real data)")
    p.add_argument("--limit", type=cli.nonneg_int, default=0, metavar="N",
                   help="use only the first N training and N test images (quick checks)")
    p.add_argument("--epochs", type=cli.positive_int, default=None,
                   help="default: 5 for MNIST, 40 for CIFAR-10; with --resume: extend (or shorten) the run")
    p.add_argument("--batch-size", type=cli.positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=DEFAULTS["optimizer"])
    p.add_argument("--lr", type=cli.positive_float, default=None, help="learning rate (default 0.05 for sgd, 1e-3 for adam)")
    p.add_argument("--momentum", type=cli.nonneg_float, default=DEFAULTS["momentum"], help="sgd only; 0 for plain SGD")
    p.add_argument("--no-nesterov", action="store_true", help="classical instead of Nesterov momentum")
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default=DEFAULTS["schedule"])
    p.add_argument("--warmup", type=cli.nonneg_int, default=DEFAULTS["warmup"],
                   help="steps of linear learning-rate warm-up (cosine schedule)")
    p.add_argument("--milestones", type=cli.nonneg_int, nargs="*", default=[10000, 20000],
                   help="steps at which the 'step' schedule halves the learning rate")
    p.add_argument("--weight-decay", type=cli.nonneg_float, default=DEFAULTS["weight_decay"])
    p.add_argument("--init-fan", choices=["actual", "dense"], default="actual",
                   help="scale sparse weights by each neuron's actual fan-in, or by the dense one")
    p.add_argument("--seed", type=cli.nonneg_int, default=DEFAULTS["seed"])
    recipes.add_flags(p, convolutional=True)
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
    if not 0 < args.density <= 1:
        p.error(f"--density must be in (0, 1], got {args.density}")
    return args, cli.given_flags(p, argv)


# on --resume: flags that belong to this invocation, and flags that may change the run's course
LOCAL = ("device", "resume", "no_progress", "data_dir", "no_verify")
CHANGEABLE = ("epochs", "steps", "save", "save_every", "metrics", "eval_every")


def main(argv=None) -> int:
    args, given = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # ---- configuration: a resumed run takes its configuration from the checkpoint ----------
    config = recipes.resolve(vars(args), given, args.dataset)  # --recipe's values, except flags given
    # paths absolute, so that a run resumed from another directory writes to the same files
    config.update({k: os.path.abspath(config[k]) for k in ("save", "metrics", "mask") if config[k]})
    start_step = 0
    if args.resume:
        ck = checkpoint.read_checkpoint(args.resume)
        start_step = int(ck["step"])
        config = cli.resume_config(ck["config"], config, given, changeable=CHANGEABLE, local=LOCAL)
        if "epochs" in given and "steps" not in given:
            config["steps"] = None  # --epochs given again: the run's length is now in epochs
    if config["epochs"] is None and config["steps"] is None:
        config["epochs"] = DEFAULTS["epochs"][config["dataset"]]
    if config["lr"] is None:
        config["lr"] = 0.05 if config["optimizer"] == "sgd" else 1e-3
    cli.check_output_paths(config, files=("save", "metrics"))  # before hours of training, not after
    print("configuration:", json.dumps({k: v for k, v in config.items() if v is not None}, sort_keys=True))
    device = resolve_device(config["device"])  # where to train: "cpu" or "cuda"
    print("device:", describe(device))

    # ---- data ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    ds = data.load(config["dataset"], root=config["data_dir"], verify=not config["no_verify"])
    if config["train_size"]:
        ds = data.hold_out(ds, config["train_size"])
    if config["limit"]:
        n = config["limit"]
        ds = dataclasses.replace(ds, train_images=ds.train_images[:n], train_labels=ds.train_labels[:n],
                                 test_images=ds.test_images[:n], test_labels=ds.test_labels[:n])
    n_train = len(ds.train_images)
    steps_per_epoch = -(-n_train // config["batch_size"])
    callbacks = []
    if config["dataset"] == "cifar10":
        # random crops + flips, redrawn at each epoch from (seed, epoch); centre crops to test
        x_train = np.empty((n_train, 3 * augment.CROP * augment.CROP), dtype=np.float32)
        crops = augment.EpochCrops(ds.train_images, x_train, config["seed"], steps_per_epoch)
        crops.fill(start_step // steps_per_epoch)  # the epoch this run starts (or resumes) in
        callbacks.append(crops)
        arrays = ArrayData(x_train, ds.train_labels.astype(np.int64),
                           augment.center_crops(ds.test_images), ds.test_labels.astype(np.int64))
    else:
        arrays = ArrayData.from_dataset(ds, standardize=config["standardize"])
    print(f"data: {ds.name} from {ds.source} ({len(arrays.x_train):,} train, {len(arrays.x_test):,} test, "
          f"{time.perf_counter() - t0:.1f} s)")

    # ---- model -----------------------------------------------------------------------------
    rng = np.random.default_rng(config["seed"])  # masks of random topologies and initial weights
    masks = load_masks(config["mask"]) if config["mask"] else None
    model = lenet5(config["dataset"], config["topology"], rng, masks=masks, variant=config["variant"],
                   density=config["density"], **recipes.model_options(config, convolutional=True))
    what = f"mask {config['mask']}" if masks else config["topology"] + (
        f" (density {config['density']:g})" if config["topology"] == "random" else "")
    print(f"model: LeNet-5 ({config['variant']} variant) on {config['dataset']}, topology {what}")
    print(model)
    print(layer_table(model))
    model.to(device)  # parameters move now; the optimiser's state is created where they are

    # ---- optimiser and schedule ------------------------------------------------------------
    total = config["steps"] or config["epochs"] * steps_per_epoch
    if config["optimizer"] == "sgd":
        opt = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                  nesterov=config["momentum"] > 0 and not config["no_nesterov"], weight_decay=config["weight_decay"])
    else:
        opt = Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    schedule = schedules.make(config["schedule"], config["lr"], total, milestones=config["milestones"],
                              warmup=min(config["warmup"], total - 1))

    # ---- train -----------------------------------------------------------------------------
    try:
        summary = fit(model, arrays, opt, schedule, steps=total, batch_size=config["batch_size"],
                      seed=config["seed"], eval_every=config["eval_every"], metrics_path=config["metrics"],
                      save_path=config["save"], save_every=config["save_every"], resume=config["resume"],
                      config=config, callbacks=callbacks, progress=not config["no_progress"])
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1

    # ---- summary ---------------------------------------------------------------------------
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main, errors=(RuntimeError,)))  # RuntimeError: --device cuda without a GPU
