"""Dead logits at initialisation in the 2019 recipe's LeNet-5 (#16's ablation).

The study put a ReLU on the logits. A logit below zero for an image passes no gradient back for
that image, so a class whose logit starts below zero for nearly every image ("dead": above zero
on under 5% of the test images) learns only if the layers below, trained through the other
classes, happen to lift it. For the dense LeNet-5 and the 1%-dense random one (f = 0.01) of
`--recipe paper`, seeds 0-2, this prints per class the share of the 10,000 test images whose
logit before that ReLU is above zero, with the paper's initialisation (truncated normal,
fully connected biases 0.1) and with the ablation's "init" factor (He by actual fan-in,
biases 0). Initialisation only: nothing is trained.

    SPARSENN_DATA=../shared/datasets python examples/results/paper/dead_logits.py > examples/results/paper/dead_logits.log
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # examples/
import reproduce  # noqa: E402
from sparsenn import recipes  # noqa: E402
from sparsenn.models import lenet5  # noqa: E402


def logits_before_relu(model, x):
    """(10, n): the model without its last layer, the ReLU on the logits."""
    assert type(model.layers[-1]).__name__ == "ReLU", "the paper recipe's LeNet-5 ends with a ReLU"
    out = []
    for i in range(0, x.shape[1], 1000):  # 1,000 images at a time: the convolutions' buffers
        h = np.ascontiguousarray(x[:, i:i + 1000])
        for layer in model.layers[:-1]:
            h = layer.forward(h)
        out.append(h.copy())
    return np.concatenate(out, axis=1)


def main():
    args = reproduce.parse_args(["--table", "a", "--models", "lenet5", "--report-only"])
    study = reproduce.Study(args)
    cfg = study.cfg("lenet5", "paper")  # the data exactly as the study's runs see it
    arrays = study.arrays(cfg)
    x = np.ascontiguousarray(arrays.features("test").T, dtype=np.float32)  # (784, 10,000), pixels in [0, 1]
    print("share of test images with a logit above zero, per class 0-9 (%); dead: under 5%")
    for name, kw in (("dense", dict(topology="dense")), ("random f=0.01", dict(topology="random", factor=0.01))):
        for seed in range(3):
            for init in ("paper", "kaiming"):
                opts = recipes.model_options({**cfg, "init": init, "init_fan": "actual"}, convolutional=True)
                z = logits_before_relu(lenet5("mnist", rng=np.random.default_rng(seed), **kw, **opts), x)
                share = (z > 0).mean(axis=1)
                dead = np.flatnonzero(share < 0.05).tolist()
                print(f"{name:13s} seed {seed} {init:7s}: {len(dead)} dead {str(dead):14s} "
                      f"per class {np.round(100 * share).astype(int).tolist()}")


if __name__ == "__main__":
    main()
