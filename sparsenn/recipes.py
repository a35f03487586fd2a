"""Training recipes: the 2019 study's, as data, and how a script's configuration takes one.

    default   each example script's own DEFAULTS block: SGD with Nesterov momentum 0.9, cosine
              decay, He-normal weights scaled by each neuron's actual fan-in, biases 0, logits
              left linear, standardised pixels, all 60,000 training images.
    paper     Alford et al., "Training Behavior of Sparse Neural Network Topologies" (HPEC 2019),
              as their TensorFlow code trained: the values in PAPER below.

``--recipe paper`` on examples/lenet300.py, lenet5.py and prune_retrain.py fills in every value
of PAPER that the command line did not give (:func:`resolve`): ``--recipe paper --lr 0.1`` is
their recipe at another learning rate. The resolved configuration is what the scripts print and
save, so a checkpoint resumes under the recipe it was started with.

Where each setting acts: ``steps`` in ``sparsenn.train.fit``; ``init``, ``relu_logits`` and
``conv_weight_decay`` in the model builders (:func:`model_options`); ``standardize`` in
``ArrayData.from_dataset``; ``train_size`` in ``sparsenn.data.hold_out``.
"""

from __future__ import annotations

import argparse

from sparsenn import cli
from sparsenn.init import FixedTruncatedNormal

# Alford et al. 2019, from their TensorFlow code (the issue that added this: #16)
PAPER = dict(
    optimizer="sgd",
    momentum=0.0,              # plain SGD
    lr=0.2,                    # 0.2, then 0.1 and 0.05 at steps 10k and 20k: so 0.2 throughout 10k steps
    schedule="step",
    milestones=[10_000, 20_000],
    warmup=0,
    batch_size=100,
    steps=10_000,              # the run length is a step count ...
    epochs=None,               # ... not epochs (10,000 x 100 / 55,000 = 18.2 epochs)
    weight_decay=0.004,        # tf.nn.l2_loss(w) * 0.004 on fully connected weights: gradient += 0.004 w
    conv_weight_decay=False,   # ... and none on convolution kernels (nor on any bias)
    init="paper",              # truncated normal std 0.04 (fc) / 0.05 (conv), fc biases 0.1 (PAPER_INIT)
    relu_logits=True,          # their logits layer had a ReLU too
    standardize=False,         # pixels in [0, 1]
    train_size={"mnist": 55_000, "fashion-mnist": 55_000, "cifar10": None},  # 5,000 held back (MNIST)
)
PAPER_INIT = dict(fc_std=0.04, conv_std=0.05, fc_bias=0.1)  # conv biases 0
RECIPES = {"default": {}, "paper": PAPER}
INITS = ("kaiming", "paper")


def add_flags(p: argparse.ArgumentParser, convolutional: bool = False) -> None:
    """The recipe's flags that the scripts did not have before it (``--recipe`` and the settings
    only the paper recipe changes). Their defaults are the default recipe's."""
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                   help="paper: the 2019 study's training (sparsenn.recipes.PAPER); flags given override single values")
    p.add_argument("--steps", type=cli.positive_int, default=None,
                   help="run length in optimiser steps, instead of --epochs")
    p.add_argument("--init", choices=INITS, default="kaiming",
                   help="kaiming: He normal (fan by --init-fan), biases 0; paper: truncated normal std 0.04 fc / "
                        "0.05 conv, fc biases 0.1")
    p.add_argument("--relu-logits", action=argparse.BooleanOptionalAction, default=False,
                   help="a ReLU after the logits layer (the 2019 code)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=True,
                   help="standardise pixels with the dataset's mean/std (else [0, 1])")
    p.add_argument("--train-size", type=cli.positive_int, default=None,
                   help="train on the last N training images (the first ones held back); default all")
    if convolutional:
        p.add_argument("--conv-weight-decay", action=argparse.BooleanOptionalAction, default=True,
                       help="apply --weight-decay to convolution kernels too")


def resolve(config: dict, given: set, dataset: str) -> dict:
    """``config`` (a script's flags, defaults filled in) under the recipe ``config["recipe"]``:
    each recipe value replaces the script's default unless its flag is in ``given``
    (:func:`sparsenn.cli.given_flags`). A value may depend on the dataset (a dict keyed by it).
    An explicit ``--epochs`` without ``--steps`` sets the run length in epochs."""
    if config["recipe"] not in RECIPES:
        raise ValueError(f"unknown recipe {config['recipe']!r}; choose one of {', '.join(sorted(RECIPES))}")
    out = dict(config)
    for key, value in RECIPES[config["recipe"]].items():
        if key in out and key not in given:
            out[key] = value.get(dataset) if isinstance(value, dict) else value
    if "epochs" in given and "steps" not in given:
        out["steps"] = None
    return out


def model_options(config: dict, convolutional: bool = False) -> dict:
    """Keyword arguments for ``sparsenn.models.lenet300`` (or ``lenet5``, ``convolutional=True``)
    from a resolved configuration: initialisation, biases, ReLU on the logits, conv decay."""
    if config["init"] == "paper":
        opts = dict(init=FixedTruncatedNormal(PAPER_INIT["fc_std"]), fc_bias=PAPER_INIT["fc_bias"])
        if convolutional:
            opts["conv_init"] = FixedTruncatedNormal(PAPER_INIT["conv_std"])
    elif config["init"] == "kaiming":
        opts = dict(init="kaiming_normal", fan=config["init_fan"])
    else:
        raise ValueError(f"unknown init {config['init']!r}; choose one of {', '.join(INITS)}")
    opts["relu_logits"] = bool(config["relu_logits"])
    if convolutional:
        opts["conv_weight_decay"] = bool(config["conv_weight_decay"])
    return opts
