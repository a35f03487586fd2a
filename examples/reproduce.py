"""Reproduce Alford et al., "Training Behavior of Sparse Neural Network Topologies" (HPEC 2019), cell by cell.

    python examples/reproduce.py --table a --seeds 3      # one-time pruning, no retraining
    python examples/reproduce.py --table b --seeds 3      # training on pruned structures
    python examples/reproduce.py --table c --seeds 3      # random (and RadiX) networks by factor f
    python examples/reproduce.py --curves --seeds 3       # test accuracy against step
    python examples/reproduce.py --ablation --seeds 3     # which factor makes the collapses
    python examples/reproduce.py --table b --quick --out /tmp/paper   # smoke test, seconds
    python examples/reproduce.py --table a b c --report-only   # tables from the finished runs only

Every cell of a 2019 table gets our mean +- std over the seeds, under the study's own training
recipe (``--recipe paper``, ``sparsenn.recipes.PAPER``), ours (``default``: prune_retrain.py's
defaults), or both. The training is examples/prune_retrain.py's (its functions are imported:
``train``, ``train_dense``, ``one_time``, ``gradual``), the models sparsenn.models'.

    (a)  the trained dense model pruned once by magnitude (one global threshold), not retrained
    (b)  orig (dense); one-time pruned, then retrained (fresh random weights on the mask);
         iterative (gradual) pruned; iterative retrained
    (c)  random networks by factor f: f < 1 keeps the widths at density f, f > 1 widens
         (LeNet-300-100: hidden-1 to 300f; LeNet-5: conv2 to 50f filters) at density 1/f;
         RadiX-Nets at f = 0.1 and 10 (the radix and radix-wide presets); f = 1 is dense
    curves      test accuracy every few hundred steps: dense, RadiX (LeNet-300-100), random
    ablation    each collapse of the 2019 tables, under the paper recipe with one factor at a
                time changed to ours (ABLATION_FACTORS: prune_retrain.py flags); the factor holds
                for the whole pipeline (dense training, pruning, retraining), seeds as above

Writes under --out (default examples/results/paper/): runs.jsonl, one line per record, appended
as each run finishes (the store: a killed run keeps what finished, and a rerun skips every run
whose full configuration is already there, so a long table can be run in pieces, and several
invocations can fill it at once: one per recipe, say, both with --ablation, whose runs they
share: each run is claimed while it trains (models/<key>.checkpoint.claim, with the process id)
and another invocation leaves it to its holder); models/, the dense
models the pruning runs start from, and each running run's checkpoint at its last epoch end
(a run killed part-way resumes from it, not from step 0; ``prune_retrain.train``); then per
table, table_X.md (ours beside the 2019 value for every cell), table_X.json (the records, each
with table, model, dataset, recipe, method/topology, stage, sparsity/f, seed, test_acc as a
fraction), table_X.csv (the cells) and table_X.png (needs matplotlib); ablation.*; curves.*.
A run is shared between tables: (a)'s sparsity 0, (b)'s orig and (c)'s f = 1 are one dense run.
CIFAR-10 cells run when the data is present (else they say so).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import json
import math
import os
import socket
import sys
import time
from collections import namedtuple

import numpy as np

import sparsenn  # noqa: F401  (configures the thread pools before any kernel runs)
from sparsenn import checkpoint, cli, data, recipes
from sparsenn.models import lenet300, lenet5
from sparsenn.train import TrainingDiverged, model_nnz

_spec = importlib.util.spec_from_file_location("prune_retrain", os.path.join(os.path.dirname(__file__),
                                                                              "prune_retrain.py"))
prune_retrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prune_retrain)

# ---- the 2019 numbers: Alford et al., HPEC 2019, test accuracy in % (MNIST unless stated) ---
# Table (a), one-time pruning without retraining (their Caffe models), by sparsity.
PAPER_A = {
    "lenet5": {0.0: 99.05, 0.5: 98.91, 0.75: 98.54, 0.8: 98.34, 0.85: 98.19, 0.9: 98.11, 0.92: 97.93,
               0.95: 97.02, 0.992: 28.19},
    "lenet300": {0.0: 97.38, 0.5: 97.19, 0.75: 96.95, 0.8: 96.86, 0.85: 96.64, 0.9: 95.32, 0.92: 94.36,
                 0.95: 89.32, 0.974: 72.53},
}
# Table (b), training on pruned structures: orig, then per sparsity 0.5, 0.75, 0.9, 0.95, 0.99.
B_SPARSITIES = (0.5, 0.75, 0.9, 0.95, 0.99)
PAPER_B = {
    "lenet5": {"orig": 99.25, "one-time retrained": (98.95, 79.94, 89.92, 98.32, 11.35),
               "iterative pruned": (99.17, 98.91, 98.84, 98.80, 98.48),
               "iterative retrained": (98.78, 69.92, 88.67, 98.54, 77.96)},
    "lenet300": {"orig": 97.03, "one-time retrained": (96.88, 96.82, 96.19, 95.65, 56.08),
                 "iterative pruned": (97.50, 97.44, 97.40, 97.30, 96.83),
                 "iterative retrained": (97.03, 97.05, 97.02, 96.34, 96.08)},
}
PAPER_B_CIFAR = {0.0: 80.14, 0.5: 79.59, 0.75: 79.08, 0.9: 74.90}  # LeNet-5 CIFAR-10, iterative pruned
# Table (c), random networks by factor f (and RadiX-Nets at f = 0.1 and 10).
PAPER_C = {
    ("lenet300", "random"): {0.01: 74.10, 0.05: 91.49, 0.1: 93.42, 0.5: 96.28, 1: 97.03, 2: 96.65, 10: 94.45,
                             100: 94.30},
    ("lenet300", "radix"): {0.1: 93.57, 10: 93.98},
    ("lenet5", "random"): {0.01: 49.36, 0.05: 98.38, 0.1: 98.77, 0.5: 99.20, 1: 99.20, 2: 99.14, 10: 98.91},
    ("lenet5-cifar10", "random"): {0.01: 9.99, 0.05: 71.34, 0.1: 74.61, 0.5: 79.22, 1: 80.14, 2: 80.40,
                                   10: 79.35},
}
# The collapses of (b) and (c), for the ablation: (model, run, sparsity or f, stage, 2019 value).
COLLAPSES = [("lenet5", "one-time", 0.75, "retrained", 79.94), ("lenet5", "one-time", 0.99, "retrained", 11.35),
             ("lenet5", "gradual", 0.99, "retrained", 77.96), ("lenet300", "one-time", 0.99, "retrained", 56.08),
             ("lenet300", "random", 0.01, "trained", 74.10), ("lenet5", "random", 0.01, "trained", 49.36)]
# One factor at a time from the paper recipe toward ours, as prune_retrain.py flags.
ABLATION_FACTORS = {
    "none (paper recipe)": [],
    "init: He by actual fan-in, biases 0": ["--init", "kaiming", "--init-fan", "actual"],
    "no ReLU on the logits": ["--no-relu-logits"],
    "Nesterov momentum 0.9": ["--momentum", "0.9"],
    "lr 0.05, cosine decay": ["--lr", "0.05", "--schedule", "cosine"],
    "weight decay 5e-4, conv too": ["--weight-decay", "5e-4", "--conv-weight-decay"],
    "our run length (epochs)": ["--epochs", "{epochs}"],  # prune_retrain.py's per model: 20, 5
}
MODEL_NAMES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5", "lenet5-cifar10": "LeNet-5"}
CIFAR_ABSENT = "CIFAR-10 not present"

# ---- defaults ------------------------------------------------------------------------------
DEFAULTS = dict(
    seeds=3,               # as the issue asks: mean +- std over 3 seeds (1 with --quick)
    out="examples/results/paper",
    eval_every=500,        # --curves: steps between evaluations (20 points over 10,000 steps)
    quick_eval_every=5,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("--table", nargs="+", choices=["a", "b", "c"], default=[], help="the 2019 tables to reproduce")
    p.add_argument("--curves", action="store_true", help="test accuracy against step, dense/RadiX/random")
    p.add_argument("--ablation", action="store_true", help="the collapses, one recipe factor at a time")
    p.add_argument("--recipe", choices=["paper", "default", "both"], default="both")
    p.add_argument("--seeds", type=cli.positive_int, default=None, help="seeds 0 .. N-1 (default 3; 1 with --quick)")
    p.add_argument("--models", nargs="+", choices=["lenet300", "lenet5"], default=["lenet300", "lenet5"],
                   help="lenet5 includes its CIFAR-10 cells")
    p.add_argument("--quick", action="store_true", help="smoke test: prune_retrain.py --quick (data subset, 2 epochs)")
    p.add_argument("--out", default=DEFAULTS["out"], metavar="DIR", help="results and the store of finished runs")
    p.add_argument("--json", metavar="PATH", help="also write this invocation's records here (a JSON list)")
    p.add_argument("--data-dir", help="where the datasets live (default: $SPARSENN_DATA, then data/, ...)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the tables from the runs already in the store (cells "
                        "without runs say so), e.g. while other invocations are still filling it")
    args = p.parse_args(argv)
    if not (args.table or args.curves or args.ablation):
        p.error("nothing to do: give --table a|b|c, --curves or --ablation")
    if args.seeds is None:
        args.seeds = 1 if args.quick else DEFAULTS["seeds"]
    cli.check_output_paths(args, files=("json",), dirs=("out",), parser=p)
    return args


# ---- the store of finished runs ------------------------------------------------------------
# keys of prune_retrain's configuration that do not change what a run computes
NOT_RUN_KEYS = {"json", "csv", "speed", "gradual_log", "save_dir", "plot", "verbose", "progress", "data_dir",
                "seeds", "first_seed", "sparsities", "methods", "no_rewind", "checkpoint", "checkpoint_calls"}


def left_checkpoints(stem: str) -> list:
    """(path, step) of each checkpoint a killed run left under ``stem`` (``prune_retrain.train``)."""
    return [(path, int(checkpoint.read_checkpoint(path)["step"])) for path in sorted(glob.glob(stem + "-*.npz"))]


def run_key(kind: str, cfg: dict, seed: int, **params) -> str:
    """A run's identity: what it is (kind, seed, sparsity or f, ...) and its full configuration."""
    ident = {"run": kind, "seed": seed, **params, "cfg": {k: v for k, v in cfg.items() if k not in NOT_RUN_KEYS}}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class Store:
    """runs.jsonl under the out dir: one JSON record per line, each with its run's key.
    Appended and flushed as each run finishes, so a killed invocation keeps what finished."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, "runs.jsonl")
        self.by_key = {}
        self.refresh()

    def refresh(self):
        """Read the runs stored since the last read: another invocation filling the same store
        (one per recipe, both with --ablation) may have finished a run this one has yet to do."""
        if not os.path.exists(self.path):
            return
        if not os.path.isfile(self.path):
            raise ValueError(f"{self.path}: the store of runs is not a file")
        found, foreign = {}, 0
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                if not (isinstance(rec, dict) and isinstance(rec.get("key"), str)):
                    foreign += 1  # not written by a Store: someone else's line
                    continue
                found.setdefault(rec["key"], []).append(rec)
        if foreign and not getattr(self, "_warned", False):
            print(f"warning: {self.path}: skipped {foreign} line(s) that are not records of runs", file=sys.stderr)
            self._warned = True
        for key, recs in found.items():
            self.by_key.setdefault(key, recs)

    def __contains__(self, key):
        return key in self.by_key

    def add(self, key, records):
        """Append a run's records with one write to a file opened for appending, so that two
        invocations filling the store at once (say one per recipe) never interleave lines."""
        lines = "".join(json.dumps({**rec, "key": key}) + "\n" for rec in records).encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":  # a line cut short by a kill: end it
                lines = b"\n" + lines
            written = 0
            while written < len(lines):
                written += os.write(fd, lines[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self.by_key[key] = [{**rec, "key": key} for rec in records]


def claim(path: str) -> int | None:
    """Take a run for this invocation: create ``path`` holding this process's id, start time and
    host, atomically (written to a temporary file, then linked: the link fails when the claim
    exists, and a claim is never seen empty). Returns None when taken, else the id of the live
    process on this machine that holds it (0: unknown). Two invocations sharing runs (both
    recipes with --ablation) then never train the same run at once. A claim whose process is
    gone (killed; or its id now another process's, told apart by the start time) is taken over;
    one made on another machine (a shared disk) is respected, its process unknowable."""
    host = socket.gethostname()
    me = f"{os.getpid()} {_start_time(os.getpid())} {host}"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(me)
    try:
        for _ in range(3):
            try:
                os.link(tmp, path)
                return None
            except FileExistsError:
                pass
            try:
                with open(path) as f:
                    held = f.read()
            except OSError:  # removed meanwhile: try again
                continue
            if held == me:
                return None
            try:
                pid, start, their_host = held.split(maxsplit=2)
                pid = int(pid)
            except ValueError:  # not a claim this code writes (an older format): stale
                pid = None
            if pid is not None and (their_host != host or _alive(pid, start)):
                return pid
            try:  # its process is gone: a stale claim
                os.remove(path)
            except FileNotFoundError:
                pass
        return 0  # claimed and released three times over while we looked: leave it to them
    finally:
        os.remove(tmp)


def release(path: str) -> None:
    """Remove this invocation's claim (``claim``)."""
    try:
        with open(path) as f:
            mine = f.read().split()[:1] == [str(os.getpid())]
        if mine:
            os.remove(path)
    except (OSError, ValueError):
        pass


def _start_time(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat), or "?" where
    that cannot be read (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces
    except (OSError, IndexError):
        return "?"


def _alive(pid: int, start: str) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``start`` (``_start_time``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    now = _start_time(pid)
    return start == "?" or now == "?" or now == start


# ---- configurations, data and runs -----------------------------------------------------------
class Study:
    """The configurations (prune_retrain.py's, under a recipe and ablation flags), their data,
    the dense models they train (kept on disk for the pruning runs), and the runs' store."""

    def __init__(self, args):
        self.args, self.store = args, Store(args.out)
        self.models_dir = os.path.join(args.out, "models")
        self._cfgs, self._arrays, self._dense, self._cifar = {}, {}, {}, None

    def cfg(self, model: str, recipe: str, flags=()) -> dict:
        """prune_retrain.py's resolved configuration for ``--model model --recipe recipe flags``."""
        ck = (model, recipe, tuple(flags))
        if ck not in self._cfgs:
            argv = ["--model", model, "--recipe", recipe, "--no-rewind", *flags]
            argv += (["--quick"] if self.args.quick else []) + (["--data-dir", self.args.data_dir]
                                                                if self.args.data_dir else [])
            base = vars(prune_retrain.parse_args(argv))
            arrays = self.arrays(base)
            self._cfgs[ck] = prune_retrain.study_config(base, len(arrays.x_train))
        return self._cfgs[ck]

    def arrays(self, cfg):
        dk = (cfg["model"], cfg["train_size"], cfg["standardize"], cfg["quick"])
        if dk not in self._arrays:
            self._arrays[dk], _ = prune_retrain.load_arrays(cfg)
        return self._arrays[dk]

    def present(self, model: str) -> bool:
        """Whether the model's dataset is here (CIFAR-10 may not be; MNIST must)."""
        if prune_retrain.MODELS[model]["dataset"] != "cifar10":
            return True
        if self._cifar is None:
            try:
                data.load("cifar10", root=self.args.data_dir, download=False)
                self._cifar = True
            except data.DatasetNotFoundError:
                self._cifar = False
        return self._cifar

    def dense(self, cfg, seed):
        """The trained dense model of (cfg, seed): from memory, from disk, or trained now (and its
        record stored, if it was not)."""
        key = run_key("dense", cfg, seed)
        if key in self._dense:
            return self._dense[key]
        path = os.path.join(self.models_dir, key + ".npz")
        diverged = next((r for r in self.store.by_key.get(key, []) if r.get("diverged")), None)
        if diverged:
            raise TrainingDiverged(f"the dense run diverged: {diverged['error']}")
        if os.path.exists(path) and key in self.store:
            model = prune_retrain.build(cfg, np.random.default_rng(seed))
            with np.load(path) as saved:
                for i, p in enumerate(model.parameters()):
                    p.value[...] = saved[f"arr_{i}"]
        else:
            if "checkpoint" in cfg:  # under the dense run's own key, whichever run trains it
                cfg = {**cfg, "checkpoint": self.checkpoints(key), "checkpoint_calls": 0}
            resumed = left_checkpoints(cfg["checkpoint"]) if "checkpoint" in cfg else []
            model, _, rec = prune_retrain.train_dense(seed, self.arrays(cfg), cfg, say=lambda m: None)
            if resumed:  # its seconds count the resumed part only
                rec["resumed_from_steps"] = [step for _, step in resumed]
            os.makedirs(self.models_dir, exist_ok=True)
            tmp = os.path.join(self.models_dir, f"{key}.tmp-{os.getpid()}.npz")
            np.savez(tmp, *[p.host() for p in model.parameters()])
            os.replace(tmp, path)
            if key not in self.store:
                self.store.add(key, [self.describe(rec, "dense", cfg)])
        self._dense = {key: model}  # one kept: a table walks the runs of one dense model at a time
        return model

    @staticmethod
    def describe(rec, kind, cfg, **extra):
        model = cfg["model"]
        return {"model": model, "dataset": prune_retrain.MODELS[model]["dataset"], "recipe": cfg["recipe"],
                "run": kind, **rec, **extra}

    def checkpoints(self, key) -> str:
        """The path stem of a run's checkpoints (``prune_retrain.train``, cfg['checkpoint'])."""
        return os.path.join(self.models_dir, f"{key}.checkpoint")

    def execute(self, kind, cfg, seed, params, key=None):
        """Run one thing and return its records (a diverged run: one record saying so).
        key: the run's key; its trainings then checkpoint at every epoch end, and a run killed
        part-way resumes from its last checkpoint (``prune_retrain.train``)."""
        resumed = []
        if key is not None:
            os.makedirs(self.models_dir, exist_ok=True)
            cfg = {**cfg, "checkpoint": self.checkpoints(key)}  # this run's own copy
            resumed = [step for _, step in left_checkpoints(cfg["checkpoint"])]
        arrays, say = self.arrays(cfg), (lambda m: None)
        try:
            if kind == "dense":
                self.dense(cfg, seed)
                return None  # stored by dense()
            if kind == "prune":  # table (a): the dense model pruned once at each sparsity
                dense = self.dense(cfg, seed)
                return [self.describe(prune_retrain.one_time(dense, s, seed, arrays, cfg, None, say,
                                                             retrain_too=False)[0][0], kind, cfg)
                        for s in params["sparsities"]]
            if kind == "one-time":
                dense = self.dense(cfg, seed)
                recs, _ = prune_retrain.one_time(dense, params["sparsity"], seed, arrays, cfg, None, say)
            elif kind == "gradual":
                recs, _ = prune_retrain.gradual(params["sparsity"], seed, arrays, cfg, None, say, [])
            elif kind in ("random", "radix", "curve"):
                recs = [self.train_topology(kind, cfg, seed, params)]
            else:
                raise ValueError(f"unknown run kind {kind!r}")
        except TrainingDiverged as e:
            return [self.describe({"seed": seed, "stage": "diverged", "test_acc": None, "error": str(e)}, kind, cfg,
                                  diverged=True, **params)]
        extra = {"resumed_from_steps": resumed} if resumed else {}  # its seconds count the resumed part only
        return [self.describe(r, kind, cfg, **params, **extra) for r in recs]

    def train_topology(self, kind, cfg, seed, params):
        """Table (c) and the curves: one network trained from scratch on a named topology."""
        rng = np.random.default_rng(seed)
        opts = recipes.model_options(cfg, convolutional=prune_retrain.MODELS[cfg["model"]]["conv"])
        topology, f = params.get("topology", kind), params.get("f")
        if cfg["model"] == "lenet300":
            name = {"radix": "radix" if f in (None, 0.1) else "radix-wide"}.get(topology, topology)
            model = lenet300(name, rng, factor=f if topology == "random" else None, **opts)
        else:
            dataset = prune_retrain.MODELS[cfg["model"]]["dataset"]
            model = lenet5(dataset, "dense" if topology == "dense" else "random", rng,
                           factor=f if topology == "random" else None, **opts)
        t0 = time.perf_counter()
        every = (DEFAULTS["quick_eval_every"] if self.args.quick else DEFAULTS["eval_every"]) if kind == "curve" else 0
        summary, _ = prune_retrain.train(model, self.arrays(cfg), cfg, seed, eval_every=every)
        nnz, full = model_nnz(model)
        rec = prune_retrain.record(1 - nnz / full, topology, "trained", seed, model, summary["test_acc"],
                                   topology=topology, seconds=time.perf_counter() - t0,
                                   epoch_seconds=summary["epoch_seconds"])
        if kind == "curve":
            rec["curve"] = [[r["step"], r["test_acc"]] for r in summary["history"]]
        return rec


# ---- what each table needs: runs, and the cells made from them --------------------------------
def recipes_of(args):
    return ["paper", "default"] if args.recipe == "both" else [args.recipe]


def models_of(args):
    return [m for m in ("lenet300", "lenet5", "lenet5-cifar10") if m.split("-")[0] in args.models]


def a_sparsities(model):
    return sorted(s for s in PAPER_A[model] if s > 0)


# One cell of ours: the run behind it (kind, model, recipe, prune_retrain.py flags, params such as
# the sparsity or f; one run per seed) and which of its records (stage, and sparsity for table (a)).
Cell = namedtuple("Cell", "kind model recipe flags params stage sparsity")


def table_rows(study, table):
    """[(labels, 2019 value, {recipe: Cell})]: each row of a table and, per column of ours, the
    cell behind it."""
    args, rows = study.args, []

    def runs(model, kind, params, stage, s=None):
        return {r: Cell(kind, model, r, (), params, stage, s) for r in recipes_of(args)}

    for model in models_of(args):
        if table == "a" and model in PAPER_A:
            for s in [0.0] + a_sparsities(model):
                kind, stage = ("dense", "trained") if s == 0 else ("prune", "pruned")
                params = {} if s == 0 else {"sparsities": a_sparsities(model)}
                rows.append(((MODEL_NAMES[model], f"{s:g}"), PAPER_A[model][s], runs(model, kind, params, stage, s)))
        if table == "b" and model in PAPER_B:
            ref = PAPER_B[model]
            rows.append(((MODEL_NAMES[model], "orig", "0"), ref["orig"], runs(model, "dense", {}, "trained")))
            for column, kind, stage in (("one-time retrained", "one-time", "retrained"),
                                        ("iterative pruned", "gradual", "pruned"),
                                        ("iterative retrained", "gradual", "retrained")):
                for s, value in zip(B_SPARSITIES, ref[column]):
                    rows.append(((MODEL_NAMES[model], column, f"{s:g}"), value,
                                 runs(model, kind, {"sparsity": s}, stage, s)))
        if table == "b" and model == "lenet5-cifar10":
            for s, value in PAPER_B_CIFAR.items():
                kind, stage = ("dense", "trained") if s == 0 else ("gradual", "pruned")
                rows.append((("LeNet-5 (CIFAR-10)", "iterative pruned", f"{s:g}"), value,
                             runs(model, kind, {} if s == 0 else {"sparsity": s}, stage, s)))
        if table == "c":
            for (m, topology), values in PAPER_C.items():
                if m != model:
                    continue
                for f, value in values.items():
                    label = (MODEL_NAMES[m] + (" (CIFAR-10)" if "cifar" in m else ""), topology, f"{f:g}")
                    if f == 1:  # density 1: the dense network
                        rows.append((label, value, runs(m, "dense", {}, "trained")))
                    else:
                        rows.append((label, value, runs(m, topology, {"topology": topology, "f": f}, "trained")))
    if table == "curves":
        for model in models_of(args):
            if model == "lenet5-cifar10":
                continue
            for topology in ("dense", "radix", "random") if model == "lenet300" else ("dense", "random"):
                rows.append(((MODEL_NAMES[model], topology), None, runs(model, "curve", {"topology": topology},
                                                                     "trained")))
    if table == "ablation":
        # first the dense model that the one-time cells prune: under the paper recipe one of its
        # seeds collapses too (LeNet-5), so the factors are shown on it as well
        for model in ("lenet300", "lenet5"):
            if model not in args.models:
                continue
            case = f"{MODEL_NAMES[model]} dense (the one-time runs' start)"
            for factor, flags in ABLATION_FACTORS.items():
                flags = [f.format(epochs=prune_retrain.MODELS[model]["epochs"]) for f in flags]
                rows.append(((case, factor), PAPER_B[model]["orig"],
                             {"paper": Cell("dense", model, "paper", tuple(flags), {}, "trained", None)}))
        for model, kind, v, stage, value in COLLAPSES:
            if model not in args.models:
                continue
            params = {"topology": "random", "f": v} if kind == "random" else {"sparsity": v}
            case = f"{MODEL_NAMES[model]} {'random f=' if kind == 'random' else kind + ' ' + stage + ' at '}{v:g}"
            for factor, flags in ABLATION_FACTORS.items():
                flags = [f.format(epochs=prune_retrain.MODELS[model]["epochs"]) for f in flags]
                rows.append(((case, factor), value,
                             {"paper": Cell(kind, model, "paper", tuple(flags), params, stage,
                                            v if kind != "random" else None)}))
    return rows


def needed_runs(study, rows, seeds):
    """The distinct runs behind ``rows``, seed by seed (so one seed of every cell comes first),
    each with its key and a rough cost in training runs (for the ETA); dense runs first."""
    out, seen = [], set()
    for seed in seeds:
        for _, _, cols in rows:
            for kind, model, recipe, flags, params, _, _ in cols.values():  # each a Cell
                if not study.present(model):
                    continue
                cfg = study.cfg(model, recipe, flags)
                deps = [("dense", {})] if kind in ("prune", "one-time") else []
                for k, p in deps + [(kind, params)]:
                    key = run_key(k, cfg, seed, **p)
                    if key not in seen:
                        seen.add(key)
                        cost = {"prune": 0.1, "gradual": 2.0}.get(k, 1.0) * cfg["total_steps"]
                        if model != "lenet300":
                            cost *= 25  # a LeNet-5 step is ~25x a LeNet-300-100 step here
                        out.append((key, k, cfg, seed, p, cost, flags))
    return out


def cell_records(study, cell: Cell, seeds) -> list:
    """Per seed, the record behind one cell: a dict, a diverged run's record, or None (not run)."""
    cfg = study.cfg(cell.model, cell.recipe, cell.flags)
    out = []
    for seed in seeds:
        recs = study.store.by_key.get(run_key(cell.kind, cfg, seed, **cell.params), [])
        hit = [r for r in recs if r["stage"] == cell.stage
               and (cell.sparsity is None or cell.kind == "dense" or r["sparsity"] == cell.sparsity)]
        out.append(hit[0] if hit else next((r for r in recs if r.get("diverged")), None))
    return out


def cell_text(recs) -> tuple:
    """(markdown text, mean %, std %, n) of one cell's records over the seeds."""
    accs = [100 * r["test_acc"] for r in recs if r and not r.get("diverged")]
    diverged = sum(1 for r in recs if r and r.get("diverged"))
    if not accs:
        return ("diverged" if diverged else "–"), None, None, 0
    mean, std = float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
    text = f"{mean:.2f} ± {std:.2f}" if len(accs) > 1 else f"{mean:.2f}"
    if len(accs) < len(recs):
        text += f" ({len(accs)}/{len(recs)}" + (f", {diverged} diverged)" if diverged else ")")
    return text, mean, std, len(accs)


TITLES = {
    "a": ("Table (a): one-time magnitude pruning of the trained dense model, no retraining",
          ("model", "sparsity")),
    "b": ("Table (b): training on pruned structures (retrained: fresh random weights on the mask; "
          "iterative: gradual pruning)", ("model", "column", "sparsity")),
    "c": ("Table (c): random networks by factor f (f < 1: density f; f > 1: widened by f at density 1/f), "
          "RadiX-Nets at f = 0.1 and 10", ("model", "topology", "f")),
    "ablation": ("Ablation: each 2019 collapse under the paper recipe, one factor changed to ours",
                 ("case", "factor changed")),
    "curves": ("Curves: test accuracy at the end of each run (the figure: against step)", ("model", "topology")),
}
RECIPE_NOTE = ("Recipes: paper = `sparsenn.recipes.PAPER` (plain SGD, lr 0.2, batch 100, 10,000 steps, 0.004 L2 "
               "on fully connected weights, truncated-normal init std 0.04 fc / 0.05 conv, fc biases 0.1, ReLU on "
               "the logits, pixels in [0, 1], 55,000 training images); default = examples/prune_retrain.py's "
               "defaults (SGD Nesterov 0.9, lr 0.05 with cosine decay, weight decay 5e-4, He init by actual fan-in, "
               "20 epochs for LeNet-300-100, 5 for LeNet-5). Both: one global magnitude threshold, LeNet-5 is the "
               "TensorFlow variant (the study's table (a) used Caffe models).")


def write_table(study, table, seeds) -> list:
    """<name>.md, .csv, .json and .png for one table, from the store; returns its records."""
    args, rows = study.args, table_rows(study, table)
    title, labels = TITLES[table]
    here = ["paper"] if table == "ablation" else recipes_of(args)
    name = table if table in ("ablation", "curves") else f"table_{table}"
    base = os.path.join(args.out, name)
    what = f"--{table}" if table in ("ablation", "curves") else f"--table {table}"
    recipe_flag = "" if table == "ablation" else f" --recipe {args.recipe}"
    command = (f"python examples/reproduce.py {what}{recipe_flag} --seeds {len(seeds)} "
               f"--models {' '.join(args.models)}{' --quick' if args.quick else ''}")
    ref_head = [] if table == "curves" else ["2019 (%)"]
    head = list(labels) + ref_head + [f"ours, {r} recipe (%)" for r in here]
    md = [f"# {title}", "", f"`{command}`: test accuracy, mean ± std over {len(seeds)} seed(s) "
          "((k/n): only k of the n seeds have finished)."
          + (" **--quick: a smoke test on 2,000 images, not a measurement.**" if args.quick else ""), "",
          "| " + " | ".join(head) + " |", "|" + "|".join("---" if i < len(labels) else "---:" for i in range(len(head))) + "|"]
    csv = [",".join(list(labels) + ["paper_2019"] + [f"{r}_{x}" for r in here for x in ("mean", "std", "n")])]
    records, plotted = [], []
    for label, ref, cols in rows:
        texts, csv_cells, stats = [], [], {}
        for r in here:
            cell = cols[r]
            if not study.present(cell.model):
                texts.append(CIFAR_ABSENT)
                csv_cells += ["", "", "0"]
                continue
            recs = cell_records(study, cell, seeds)
            text, mean, std, n = cell_text(recs)
            texts.append(text)
            csv_cells += ["" if mean is None else f"{mean:.4f}", "" if std is None else f"{std:.4f}", str(n)]
            stats[r] = (mean, std, [100 * rec["test_acc"] for rec in recs if rec and not rec.get("diverged")])
            extra = {"case": label[0], "factor": label[1], "flags": list(cell.flags)} if table == "ablation" else {}
            records += [{**rec, "table": table, "cell": " | ".join(label), **extra} for rec in recs if rec]
        md.append("| " + " | ".join(list(label) + ([] if table == "curves" else [f"{ref:.2f}"]) + texts) + " |")
        csv.append(",".join(list(label) + ["" if ref is None else f"{ref}"] + csv_cells))
        plotted.append((label, ref, stats))
    md += ["", RECIPE_NOTE]
    if table == "ablation":
        md += ["", "The factors, as examples/prune_retrain.py flags on top of `--recipe paper`: "
               + "; ".join(f"{k}: `{' '.join(v) or '(none)'}`" for k, v in ABLATION_FACTORS.items())
               .replace("{epochs}", "E") + " (E: prune_retrain.py's epochs, 20 for LeNet-300-100, 5 for LeNet-5)"
               + ". A diverged run stopped on a non-finite or exploding loss (sparsenn.train.fit)."]
    md += ["", f"Records: `{name}.json` (every run: `runs.jsonl`); cells: `{name}.csv`."]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    with open(base + ".csv", "w") as f:
        f.write("\n".join(csv) + "\n")
    prune_retrain._write_json(base + ".json", records)
    if plot_lib() is not None:
        if table == "curves":
            plot_curves(base + ".png", records)
        elif table != "ablation":
            plot_table(base + ".png", table, plotted, here)
    return records


# ---- figures -------------------------------------------------------------------------------
def plot_lib():
    """matplotlib.pyplot (Agg), or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STYLE = {"2019": dict(linestyle="--", marker="s"), "paper": dict(linestyle="-", marker="o"),
         "default": dict(linestyle=":", marker="^")}


def plot_table(path, table, plotted, here) -> None:
    """One panel per model: accuracy against sparsity ((a), (b); evenly spaced, as the 2019
    tables list them) or against f ((c), log scale). 2019 dashed, ours solid (paper recipe)
    and dotted (default recipe): the mean over the seeds with +- std bars, and each seed as
    a small point, so that a cell where one seed collapsed (a bimodal cell, whose std bar
    says little) shows as what it is. One colour per column of the table."""
    plt = plot_lib()
    panels = {}
    for label, ref, stats in plotted:
        series = label[1] if table in ("b", "c") else "one-time pruned"
        x = float(label[-1])
        panels.setdefault(label[0], {}).setdefault(series, []).append((x, ref, stats))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        xs = sorted({x for pts in series.values() for x, _, _ in pts})

        def pos(x, shift=0.0):  # (c): f on a log axis; (a), (b): the sparsities evenly spaced
            return x * 10 ** (shift / 2) if table == "c" else xs.index(x) + shift

        ours = False
        for i, (name, pts) in enumerate(series.items()):
            colour = f"C{i}"
            ax.plot([pos(x) for x, _, _ in pts], [ref for _, ref, _ in pts], color=colour, label=f"{name}, 2019",
                    **STYLE["2019"])
            for j, r in enumerate(here):
                got = [(x, st[r]) for x, _, st in pts if st.get(r) and st[r][0] is not None]
                if not got:
                    continue
                ax.errorbar([pos(x) for x, _ in got], [g[0] for _, g in got], yerr=[g[1] for _, g in got],
                            color=colour, capsize=3, label=f"{name}, ours ({r}): mean ± std", **STYLE[r])
                shift = 0.08 * (1 if j else -1)  # each recipe's seeds beside its mean, not on it
                seeds = [(pos(x, shift), a) for x, g in got for a in g[2]]
                ax.scatter([s[0] for s in seeds], [s[1] for s in seeds], s=18, color=colour,
                           marker=STYLE[r]["marker"], alpha=0.6, linewidths=0)
                ours = True
        if table == "c":
            ax.set_xscale("log")
            ax.set_xlabel("factor f")
        else:
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels([f"{x:g}" for x in xs])
            ax.set_xlabel("sparsity")
        ax.set_title(panel if ours else f"{panel}: 2019 only (no runs here)")
        ax.set_ylabel("test accuracy (%); small points: single seeds")
        ax.set_ylim(top=100.5)  # a std bar of a bimodal cell would reach past 100%
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path, records) -> None:
    """Test accuracy against step, one panel per model: the mean over seeds per (topology,
    recipe), and each seed as a thin faint line of the same colour and style."""
    plt = plot_lib()
    panels = {}
    for r in records:
        if r.get("curve"):
            panels.setdefault(r["model"], {}).setdefault((r["topology"], r["recipe"]), []).append(r["curve"])
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), squeeze=False)
    for ax, (model, series) in zip(axes[0], panels.items()):
        for (topology, recipe), curves in sorted(series.items()):
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            accs = 100 * np.array([[c[1] for c in curve[:n]] for curve in curves])  # (seeds, points)
            colour, style = {"dense": "C0", "radix": "C1", "random": "C2"}[topology], STYLE[recipe]["linestyle"]
            for acc in accs:
                ax.plot(steps, acc, color=colour, linestyle=style, linewidth=0.7, alpha=0.35)
            ax.plot(steps, accs.mean(axis=0), color=colour, linestyle=style,
                    label=f"{topology} ({recipe}), mean of {len(accs)}")
        ax.set_title(MODEL_NAMES[model])
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy (%); thin: single seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_one(study, key, kind, cfg, seed, params) -> list:
    """Train one run (resuming from what a killed one left), store it, return its records."""
    for stem in dict.fromkeys([study.checkpoints(key), study.checkpoints(run_key("dense", cfg, seed))]):
        for path, step in left_checkpoints(stem):  # this run's, or its dense model's, killed part-way
            print(f"resuming {cfg['model']} {cfg['recipe']} {kind} seed {seed} from {path} (step {step})", flush=True)
    records = study.execute(kind, cfg, seed, params, key)
    if records is not None:
        study.store.add(key, records)
    for path in glob.glob(study.checkpoints(key) + "-*.npz"):  # a diverged training's, say
        os.remove(path)
    return study.store.by_key[key]


# ---- main ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    study = Study(args)
    seeds = list(range(args.seeds))
    tables = list(args.table) + (["curves"] if args.curves else []) + (["ablation"] if args.ablation else [])
    print("reproducing:", ", ".join(tables), f"| recipes {', '.join(recipes_of(args))} | seeds {seeds} | "
          f"models {', '.join(args.models)}{' | quick' if args.quick else ''} | out {args.out}", flush=True)
    if "lenet5" in args.models and not study.present("lenet5-cifar10"):
        print(f"{CIFAR_ABSENT}: its cells are marked so", flush=True)

    # ---- the runs: each stored as it finishes; runs already in the store are skipped --------
    todo = [run for t in tables for run in needed_runs(study, table_rows(study, t), seeds)]
    todo = list({run[0]: run for run in todo}.values())  # a run shared by two tables, once
    pending = [run for run in todo if run[0] not in study.store]
    print(f"{len(todo)} runs, {len(todo) - len(pending)} already in {study.store.path}, {len(pending)} to do"
          + (" (not now: --report-only)" if args.report_only and pending else ""), flush=True)
    if args.report_only:
        pending = []
    t_start, cost_done, cost_left = time.perf_counter(), 0.0, sum(run[5] for run in pending)
    left_to_others = 0
    for i, (key, kind, cfg, seed, params, cost, flags) in enumerate(pending):
        study.store.refresh()
        if key in study.store:  # trained earlier in this loop (a pruning run's dense model) or by another invocation
            cost_left -= cost
            continue
        # claimed, so that two invocations sharing runs never train one twice at once: the run,
        # and the dense model a pruning run starts from unless it is stored
        os.makedirs(study.models_dir, exist_ok=True)
        dense_key = run_key("dense", cfg, seed)
        claims = [study.checkpoints(k) + ".claim"
                  for k in dict.fromkeys([key] + ([dense_key] if kind in ("prune", "one-time") else []))
                  if k not in study.store]
        taken, holder = [], None
        for path in claims:
            holder = claim(path)
            if holder is not None:
                break
            taken.append(path)
        if holder is not None:  # another invocation is training it, or its dense model, now
            what = "it" if path == claims[0] else "its dense model"
            for path in taken:
                release(path)
            print(f"[{i + 1}/{len(pending)}] {cfg['model']} {cfg['recipe']} {kind} seed {seed}: {what} is being "
                  f"trained by {f'process {holder}' if holder > 0 else 'another process'}: left to it", flush=True)
            cost_left -= cost
            left_to_others += 1
            continue
        t0 = time.perf_counter()
        try:
            records = run_one(study, key, kind, cfg, seed, params)
        finally:
            for path in taken:
                release(path)
        cost_done, cost_left = cost_done + cost, cost_left - cost
        elapsed = time.perf_counter() - t_start
        eta = elapsed / cost_done * cost_left if cost_done else math.nan
        accs = ", ".join(f"{r['stage']} {100 * r['test_acc']:.2f}%" if r["test_acc"] is not None else r["stage"]
                         for r in records[:3]) + (", ..." if len(records) > 3 else "")
        what = " ".join([f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
                         if k != "sparsities"] + list(flags))
        print(f"[{i + 1}/{len(pending)}] {cfg['model']} {cfg['recipe']} {kind} {what} seed {seed}: {accs} "
              f"({time.perf_counter() - t0:.1f} s; ETA {eta / 60:.1f} min)", flush=True)

    if left_to_others:
        study.store.refresh()
        print(f"{left_to_others} runs were being trained by another invocation; the tables below hold those "
              f"it had finished by now", flush=True)

    # ---- the tables, from the store ------------------------------------------------------
    everything = []
    for t in tables:
        everything += write_table(study, t, seeds)
        print(f"wrote {os.path.join(args.out, t if t in ('ablation', 'curves') else 'table_' + t)}.md, .csv, .json"
              + (", .png" if plot_lib() is not None and t != "ablation" else ""), flush=True)
    if plot_lib() is None:
        print("figures skipped: matplotlib is not installed (pip install 'sparsenn[plot]')")
    if args.json:
        prune_retrain._write_json(args.json, everything)
        print(f"records: {args.json}")
    print(f"elapsed {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
