"""The training loop: seeded mini-batches, SGD/Adam, evaluation, metrics, checkpoints, resume.

    for each epoch:                                    perm = permutation of the training set,
        for each mini-batch of ``batch_size``:             drawn from (seed, epoch) alone
            x = gather(train_x, perm[batch])           x: (n_features, batch), features-major
            loss = xent(model.forward(x), labels)      forward
            model.backward(dloss)                      backward (hand-written, layer by layer)
            optimizer.step()                           update stored weights only
        evaluate on the test set, write a metrics line, save a checkpoint

The data order depends only on (seed, epoch), so a run resumed from a checkpoint at step s
sees exactly the batches it would have seen had it never stopped.

On a GPU (``model.to("cuda")``) the same loop runs with every array on the device: the
training and test sets are copied there once, each epoch's permutation once, and the
mini-batch is gathered there; the loss of each step and the test logits come back.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from sparsenn import checkpoint as ckpt_io
from sparsenn.io import check_output_path
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.runtime import denormals_flushed


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last checkpoint."""


@dataclass
class ArrayData:
    """Training and test sets, ready for the loop.

    x_train: (n_train, n_features) *batch-major*, C-contiguous: one sample per row, so a
    mini-batch gather reads whole rows; the batch itself is built features-major. Either
    uint8 pixels, normalised while a batch is gathered (feature f of a sample becomes
    ``pixel * scale[f] + shift[f]``: a quarter of the memory and of the memory traffic of
    float32), or float32 features used as they are (scale 1, shift 0).
    y_train: int64 (n_train,); x_test, y_test likewise.
    scale, shift: float32 (n_features,); required for uint8 data, 1 and 0 when not given.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None

    @classmethod
    def from_dataset(cls, ds, standardize: bool = True) -> "ArrayData":
        """From a ``sparsenn.data.Dataset``: its uint8 images as rows, with the scale and shift
        that take pixels to [0, 1] and then standardise them with the dataset's mean/std
        (unless ``standardize=False``): ``sparsenn.data.normalisation``."""
        from sparsenn.data import normalisation

        mean, std = (ds.mean, ds.std) if standardize else (0.0, 1.0)
        scale, shift = normalisation(ds.train_images.shape[1:], mean, std)

        def rows(images):  # (n, ...) uint8 -> (n, n_features), no copy
            return np.ascontiguousarray(images.reshape(len(images), -1))

        return cls(rows(ds.train_images), ds.train_labels.astype(np.int64),
                   rows(ds.test_images), ds.test_labels.astype(np.int64), scale, shift)

    def __post_init__(self):
        n_features = self.x_train.shape[1] if self.x_train.ndim == 2 else None
        for name in ("x_train", "x_test"):
            x = getattr(self, name)
            if x.dtype not in (np.float32, np.uint8) or x.ndim != 2 or not x.flags.c_contiguous:
                raise ValueError(f"{name} must be float32 or uint8 (n, n_features) C-contiguous, "
                                 f"got {x.dtype} {x.shape}")
            if x.shape[1] != n_features:
                raise ValueError(f"x_train and x_test must have the same features, got {n_features} and {x.shape[1]}")
            if x.dtype == np.float32 and not np.all(np.isfinite(x)):
                raise ValueError(f"{name} contains NaN or infinite values")
        if self.x_train.dtype != self.x_test.dtype:
            raise ValueError(f"x_train and x_test must have one dtype, got {self.x_train.dtype} and {self.x_test.dtype}")
        if self.scale is None and self.shift is None:
            if self.x_train.dtype == np.uint8:
                raise ValueError("uint8 pixels need scale and shift (sparsenn.data.normalisation)")
            self.scale, self.shift = np.ones(n_features, np.float32), np.zeros(n_features, np.float32)
        for name in ("scale", "shift"):
            v = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            if v.shape != (n_features,) or not np.all(np.isfinite(v)):
                raise ValueError(f"{name} must be {n_features} finite float32 values, got shape {v.shape}")
            setattr(self, name, v)
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("each x must have one label per row")

    def features(self, which: str = "train") -> np.ndarray:
        """The float32 (n, n_features) features of the training or test set (a new array)."""
        x = self.x_train if which == "train" else self.x_test
        return (x.astype(np.float32) * self.scale + self.shift).astype(np.float32)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of one epoch, a function of (seed, epoch) only (so resuming repeats it)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def evaluate(model, x, y, batch_size: int = 1000, parallel=None, scale=None, shift=None):
    """(accuracy, mean loss) of ``model`` on batch-major ``x`` (n, n_features), labels ``y``
    (NumPy). On a GPU, ``x`` may already be a device array (else it is copied there).
    ``x`` is float32 features, or uint8 pixels with their ``scale`` and ``shift``
    (:class:`ArrayData`). parallel: a :class:`sparsenn.distributed.DataParallel`; each rank
    then evaluates its own contiguous part of the set and the counts are summed."""
    ops = model.ops
    x = ops.asarray(x)
    if scale is None:
        if x.dtype != np.float32:
            raise ValueError(f"evaluate: x of dtype {x.dtype} needs its scale and shift (ArrayData.scale, .shift)")
        scale, shift = np.ones(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)
    scale, shift = ops.asarray(scale, np.float32), ops.asarray(shift, np.float32)
    y = np.asarray(y)
    loss_fn = SoftmaxCrossEntropy()
    n = len(y)
    correct, total_loss = 0, 0.0
    buf = None
    lo, hi = (0, n) if parallel is None else (parallel.rank * n // parallel.size, (parallel.rank + 1) * n // parallel.size)
    for start in range(lo, hi, batch_size):
        idx = np.arange(start, min(hi, start + batch_size))
        if buf is None or buf.shape[1] != len(idx):
            buf = ops.empty((x.shape[1], len(idx)), np.float32)
        ops.gather_batch(x, ops.asarray(idx), scale, shift, buf)
        logits = model.forward(buf)  # (n_classes, batch)
        total_loss += loss_fn.forward(logits, y[idx]) * len(idx)
        correct += int(np.sum(np.argmax(ops.to_host(logits), axis=0) == y[idx]))
    if parallel is not None:
        correct, total_loss = parallel.sum(correct, total_loss)
    return float(correct) / n, float(total_loss) / n


def model_nnz(model) -> tuple[int, int]:
    """(stored connections, connections of the dense equivalent) over all weight layers."""
    nnz = sum(l.nnz for l in model.weight_layers())
    full = sum(l.shape[0] * l.shape[1] for l in model.weight_layers())
    return nnz, full


def fit(model, data: ArrayData, optimizer, schedule, *, epochs: int | None = None, batch_size: int, seed: int,
        steps: int | None = None, eval_every: int = 0, metrics_path=None, save_path=None, save_every: int = 0, resume=None,
        config: dict | None = None, callbacks=(), progress: bool = True, log=print,
        eval_batch_size: int = 1000, blowup_factor: float = 100.0, blowup_steps: int = 10,
        blowup_window: int = 100, parallel=None) -> dict:
    """Train ``model`` and return a summary dict.

    Run length: ``epochs`` passes over the training set, or ``steps`` optimiser steps when
    given (the last epoch then stops part-way; the 2019 study counted steps: 10,000 batches
    of 100 from 55,000 images, 18.2 epochs).

    schedule: step -> learning rate (``sparsenn.schedules``). eval_every: also evaluate on the
    test set every that many steps (0: only at epoch ends). save_path: checkpoint written
    atomically at each epoch end and every ``save_every`` steps. resume: a checkpoint path to
    continue from. callbacks: objects with ``on_step_end(step, model, optimizer)`` (e.g.
    gradual pruning). eval_batch_size: samples per forward pass when evaluating (memory: a
    convolution's patch matrix grows with it).

    Divergence: raises :class:`TrainingDiverged` on a NaN or infinite loss, and when the loss
    exceeds ``blowup_factor`` times the loss of guessing (ln of the number of classes: 230 for
    10 classes at the default 100) in ``blowup_steps`` of the last ``blowup_window`` steps
    (``blowup_steps=0`` turns this off). A learning rate far too high gives finite losses of
    1e10-1e23 for a few steps, then a network whose ReLUs are all dead and whose loss sits at
    ln(10): finite, but no longer training; a healthy run never reaches 100x ln(10). The
    message names the step and the last checkpoint written before it.

    Resuming with ``metrics_path``: lines of that file written after the checkpoint's step (by
    the run that was stopped) are removed, because the resumed run writes them again.

    parallel: a :class:`sparsenn.distributed.DataParallel` to train data-parallel over MPI
    (``batch_size`` stays the global batch; rank 0 alone logs, writes metrics and saves).
    """
    if (epochs is None) == (steps is None):
        raise ValueError(f"give the run length as epochs or as steps, not both or neither (got {epochs}, {steps})")
    if (steps if epochs is None else epochs) < 1 or batch_size < 1:
        raise ValueError(f"epochs (or steps) and batch_size must be >= 1, got {epochs or steps}, {batch_size}")
    if parallel is not None:
        if batch_size < parallel.size:
            raise ValueError(f"the global batch ({batch_size}) must be at least the number of ranks ({parallel.size})")
        if parallel.rank != 0:  # one voice, one set of files
            metrics_path = save_path = None
            progress, log = False, (lambda *a, **k: None)
    check_output_path(save_path, "save_path")  # fail now, not after the first epoch
    check_output_path(metrics_path, "metrics_path")
    n = len(data.x_train)
    if batch_size > n:  # its buffers would be sized for images that are not there
        raise ValueError(f"the batch ({batch_size:,} images) is larger than the training set ({n:,} images)")
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch if steps is None else int(steps)
    epochs = math.ceil(total_steps / steps_per_epoch)  # the last one may stop part-way
    config = dict(config or {})
    step = 0
    if resume is not None:
        ck = ckpt_io.read_checkpoint(resume)
        ckpt_io.restore(ck, model, optimizer, source=os.fspath(resume))
        step = int(ck["step"])
        log(f"resumed from {resume} at step {step} (epoch {step // steps_per_epoch + 1})")
        if metrics_path:
            dropped = _drop_metrics_after(metrics_path, step)
            if dropped:
                log(f"{metrics_path}: removed {dropped} line(s) written after step {step} by the stopped run")
    if parallel is not None:
        parallel.check_same("at the start of training" if resume is None else f"after resuming from {resume}")
        parallel.start(optimizer, callbacks)  # the ranks may share the weights from the first step
        log(f"data-parallel over {parallel.size} ranks: each takes {batch_size // parallel.size}-"
            f"{-(-batch_size // parallel.size)} images of every batch of {batch_size}; {parallel.exchange()}")
        note = parallel.batch_note(batch_size)
        if note:
            log(f"note: {note}")
    if metrics_path:
        os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), exist_ok=True)
    metrics_file = open(metrics_path, "a") if metrics_path else None
    loss_fn = SoftmaxCrossEntropy()
    # the data where the model is: on a GPU, copied there once (MNIST's training set: 188 MB)
    ops = model.ops
    x_train, y_train = ops.asarray(data.x_train), ops.asarray(data.y_train)
    x_test = ops.asarray(data.x_test)
    scale, shift = ops.asarray(data.scale), ops.asarray(data.shift)  # pixels -> features, while gathering
    local_batch = batch_size if parallel is None else len(parallel.shard(np.arange(batch_size)))
    x_buf = ops.empty((data.x_train.shape[1], local_batch), np.float32)
    y_buf = ops.empty((local_batch,), data.y_train.dtype)
    last_good = resume
    epoch_times, history = [], []
    blown = []  # recent steps whose loss exceeded blowup_factor x the loss of guessing

    def diverged(why):
        where = (f"the last checkpoint written before it is {last_good} (it may itself be close to "
                 f"diverging: resume from it with a lower learning rate)") if last_good else \
            "no checkpoint was written; try a lower learning rate"
        return TrainingDiverged(f"{why} at step {step + 1} (epoch {epoch + 1}, lr {optimizer.lr:g}); {where}")

    def write(record):
        history.append(record)
        if metrics_file:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    def save(epoch):
        nonlocal last_good
        if save_path:
            ckpt_io.save_checkpoint(save_path, model, optimizer, step=step, epoch=epoch,
                                    config=config, meta={"seed": seed})
            last_good = save_path

    flushed = denormals_flushed()  # denormal floats read and written as 0 while training: runtime.py says why
    flushed.__enter__()
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            perm = ops.asarray(epoch_permutation(seed, epoch, n))
            first = step - epoch * steps_per_epoch
            last = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)  # a step-count run ends part-way
            losses, images = [], 0
            bar = tqdm(total=last, initial=first, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                       disable=not progress, leave=False, file=sys.stderr, mininterval=0.5)
            t_epoch = t_bar = time.perf_counter()
            bar_images = 0
            t_eval = 0.0
            for b in range(first, last):
                idx = perm[b * batch_size:(b + 1) * batch_size]  # the global batch
                n_global = len(idx)
                if parallel is not None:
                    idx = parallel.shard(idx)  # this rank's part of it
                if len(idx) == x_buf.shape[1]:
                    x, y = x_buf, y_buf
                else:  # the last, shorter batch of an epoch
                    x, y = ops.empty((x_buf.shape[0], len(idx)), np.float32), ops.empty((len(idx),), y_buf.dtype)
                ops.gather_batch(x_train, idx, scale, shift, x)  # x: (n_features, batch), float32
                ops.take(y_train, idx, y)  # y: (batch,)
                if b + 1 < last:  # the next batch's rows start on their way to the cache now
                    nxt = perm[(b + 1) * batch_size:(b + 2) * batch_size]
                    ops.prefetch_rows(x_train, nxt if parallel is None else parallel.shard(nxt))
                optimizer.lr = schedule(step)
                logits = model.forward(x)  # (n_classes, batch)
                loss = loss_fn.forward(logits, y)
                model.backward(loss_fn.backward())
                if parallel is not None:  # one Allreduce: the global batch's mean gradients and loss
                    loss = parallel.average_gradients(len(idx), n_global, loss)
                if not math.isfinite(loss):  # checked before the step: the weights stay as they were
                    raise diverged(f"the loss became {loss}")
                guess = math.log(logits.shape[0])  # the loss of uniform predictions
                if blowup_steps and loss > blowup_factor * guess:
                    blown = [s for s in blown if s > step - blowup_window] + [step]
                    if len(blown) >= blowup_steps:
                        raise diverged(f"the loss exceeded {blowup_factor:g} x the loss of guessing ({guess:.3g}) "
                                       f"in {len(blown)} of the last {blowup_window} steps (now {loss:.3g})")
                if parallel is None:
                    optimizer.step()
                else:  # every rank's step, or its part of one step on weights the ranks share
                    parallel.step()
                step += 1
                losses.append(loss)
                images += n_global
                for cb in callbacks:
                    cb.on_step_end(step, model, optimizer)
                if progress and (b + 1 - first) % 25 == 0:
                    now = time.perf_counter()
                    bar.update(25)
                    bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}",
                                    img_s=f"{(images - bar_images) / (now - t_bar):,.0f}", refresh=False)
                    t_bar, bar_images = now, images
                epoch_end = step % steps_per_epoch == 0 or step == total_steps  # evaluated and saved below
                if eval_every and step % eval_every == 0 and not epoch_end:
                    t0 = time.perf_counter()
                    acc, test_loss = evaluate(model, x_test, data.y_test, eval_batch_size, parallel, scale, shift)
                    nnz, full = model_nnz(model)
                    write({"kind": "eval", "epoch": epoch + 1, "step": step,
                           "train_loss": float(np.mean(losses[-eval_every:])), "test_acc": acc,
                           "test_loss": test_loss, "lr": optimizer.lr, "nnz": nnz, "density": nnz / full})
                    t_eval += time.perf_counter() - t0
                if save_every and step % save_every == 0 and not epoch_end:
                    t0 = time.perf_counter()
                    save(epoch)
                    t_eval += time.perf_counter() - t0
            bar.close()
            seconds = time.perf_counter() - t_epoch - t_eval
            epoch_times.append(seconds)
            acc, test_loss = evaluate(model, x_test, data.y_test, eval_batch_size, parallel, scale, shift)
            nnz, full = model_nnz(model)
            rec = {"kind": "epoch", "epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                   "test_acc": acc, "test_loss": test_loss, "lr": optimizer.lr,
                   "epoch_seconds": seconds, "steps_timed": len(losses), "images_timed": images,
                   "nnz": nnz, "density": nnz / full}
            write(rec)
            log(f"epoch {epoch + 1:>3}/{epochs}  step {step:>6}  loss {rec['train_loss']:.4f}  "
                f"test_acc {100 * acc:6.2f}%  lr {optimizer.lr:.4g}  {seconds:6.2f} s "
                f"({images / max(seconds, 1e-9):,.0f} img/s)")
            save(epoch + 1)
            if parallel is not None:  # the ranks' weights must still be equal (pruning included)
                parallel.check_same(f"after epoch {epoch + 1}")
    finally:
        flushed.__exit__(None, None, None)
        if metrics_file:
            metrics_file.close()
    if not history:  # resumed a finished run: just report where it stands
        acc, test_loss = evaluate(model, x_test, data.y_test, eval_batch_size, parallel, scale, shift)
    else:
        acc = history[-1]["test_acc"]
    if parallel is not None:
        parallel.close()  # the gradients move back to the model's own memory; the window is freed
    epoch_recs = [r for r in history if r["kind"] == "epoch"]
    nnz, full = model_nnz(model)
    return {
        "test_acc": acc,
        "best_test_acc": max([r["test_acc"] for r in epoch_recs], default=acc),
        "epochs": epochs,
        "steps": step,
        "epoch_seconds_median": float(np.median(epoch_times)) if epoch_times else None,
        "epoch_seconds": epoch_times,
        "nnz": nnz,
        "density": nnz / full,
        "history": history,
    }


def _drop_metrics_after(path, step: int) -> int:
    """Remove the trailing lines of a metrics file whose ``step`` is past ``step`` (written by
    a run after its last checkpoint); returns how many. Earlier lines, and lines of other
    runs before them, are kept as they are. The file is rewritten atomically."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    keep = len(lines)
    while keep > 0:
        try:
            record = json.loads(lines[keep - 1])
        except ValueError:  # a line cut short by the kill
            keep -= 1
            continue
        if not isinstance(record, dict) or record.get("step", -1) <= step:
            break
        keep -= 1
    if keep == len(lines):
        return 0
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(lines[:keep])
    os.replace(tmp, path)
    return len(lines) - keep


def format_summary(summary: dict) -> str:
    """The closing lines of a training script: final accuracy, connections, time per epoch."""
    lines = [f"final test accuracy {100 * summary['test_acc']:.2f}% (best {100 * summary['best_test_acc']:.2f}%), "
             f"{summary['nnz']:,} connections (density {summary['density']:.4f})"]
    times = summary["epoch_seconds"]
    if times:
        lines.append(f"time per epoch: median {np.median(times):.2f} s, min {min(times):.2f} s over "
                     f"{len(times)} epochs (training steps only; evaluation excluded)")
    return "\n".join(lines)
