"""Command-line conventions shared by the example scripts.

- argument types whose errors name the flag (``--seed -1`` says "--seed must be a
  non-negative integer", not NumPy's "expected non-negative integer"; ``--lr nan`` is refused
  before any model is built, not after);
- output paths checked before any work starts, so a run never trains for an epoch and then
  fails to write its checkpoint (:func:`check_output_paths`);
- resuming: which flags a resumed run takes from its checkpoint, which it may change and which
  it may not (:func:`resume_config`);
- a help formatter that shows each default once;
- one way to end on a user's mistake (:func:`run_main`): a line ``error: ...`` and exit status
  2, never a traceback, and for an array that does not fit in memory a line saying so.
"""

from __future__ import annotations

import argparse
import os
import sys

from sparsenn.io import check_output_path

# What a user's input can cause, and what an example reports as one line: bad values and files
# (sparsenn.data's DatasetError is a ValueError, DatasetNotFoundError an OSError), paths that
# cannot be read or written, and arrays too large for the machine.
USER_ERRORS = (ValueError, OSError, MemoryError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help, except where there is nothing to show (None, a
    store_true flag) or the help already says it."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def _number(convert, ok, what: str):
    """An argparse type: ``convert(text)``, refused unless ``ok(value)``, the message naming ``what``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):  # for floats NaN fails too, and float() accepts "nan" and "inf"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text.strip()}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


# argparse prefixes these messages with "argument --seed: ", so the flag is always named
nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_int = _number(int, lambda v: v >= 1, "a positive integer")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a finite number > 0")  # --lr
nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")  # --weight-decay


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_milestones(parser: argparse.ArgumentParser, milestones) -> None:
    """``--milestones`` (the steps at which the 'step' schedule lowers the learning rate) must
    increase: refused at parsing, naming the flag, not when the schedule is built."""
    if list(milestones) != sorted(set(milestones)):
        parser.error(f"--milestones must be increasing step numbers, got {' '.join(map(str, milestones))}")


def check_figure_path(path, flag: str = "--plot") -> None:
    """Raise ValueError naming ``flag`` unless matplotlib can write ``path``'s format (.png,
    .pdf, .svg, ...): checked before the work, not when the figure is drawn at its end. Does
    nothing without matplotlib (the scripts say how to install it)."""
    if path is None:
        return
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if ext not in formats:
        raise ValueError(f"{flag} {path}: matplotlib cannot write {'.' + ext if ext else 'a file without an extension'};"
                         f" use one of {', '.join('.' + f for f in sorted(formats))}")


def check_output_paths(args, files=(), dirs=(), figures=(), inputs=(), parser: argparse.ArgumentParser | None = None) -> None:
    """:func:`check_output_path` for each named attribute of ``args`` (a Namespace or dict):
    ``files=("save", "metrics")`` checks ``args.save`` as ``--save``, and so on; ``figures``
    are files whose format matplotlib must know (:func:`check_figure_path`). No two of these
    outputs may be the same file, and none may be one of the ``inputs`` (``("mask",)``: a
    run must not write over what it reads). With a ``parser``, a bad path is
    ``parser.error`` (usage, message, exit 2) instead of ValueError."""
    get = args.get if isinstance(args, dict) else lambda k: getattr(args, k, None)
    try:
        seen = {}
        for names, kind, figure in ((files, "file", False), (figures, "file", True), (dirs, "dir", False)):
            for name in names:
                path = get(name)
                check_output_path(path, _flag(name), kind)
                if path is None:
                    continue
                if figure:
                    check_figure_path(path, _flag(name))
                key = os.path.realpath(os.fspath(path))
                if key in seen:
                    raise ValueError(f"{seen[key]} and {_flag(name)} name the same file, {path}: one would "
                                     f"write over the other")
                seen[key] = _flag(name)
        for name in inputs:
            path = get(name)
            out = seen.get(os.path.realpath(os.fspath(path))) if path is not None else None
            if out:
                raise ValueError(f"{out} {path} would write over the {_flag(name)} file this run reads")
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))


def given_flags(parser: argparse.ArgumentParser, argv=None) -> set:
    """The destinations of the options written on the command line (``{"epochs", "lr"}``),
    whatever their values: a flag given with its default value counts as given."""
    saved = {}
    for action in parser._actions:  # parse once more with every default suppressed
        saved[action] = action.default
        action.default = argparse.SUPPRESS
    try:
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved.items():
            action.default = default
    return set(vars(namespace))


def resume_config(saved: dict, current: dict, given: set, *, changeable=(), local=(), log=print) -> dict:
    """The configuration of a resumed run.

    saved: the checkpoint's configuration; current: this command line's (defaults filled in);
    given: the flags written on this command line (:func:`given_flags`).

    - ``local`` flags (where to run, progress bars, ``--resume`` itself) come from this command
      line;
    - ``changeable`` flags (e.g. epochs, save path, save interval, metrics path) come from the
      checkpoint unless given, and a change is reported through ``log``;
    - every other flag defines the run (topology, learning rate, batch size, ...): it comes from
      the checkpoint, and giving it with another value is a ValueError naming the flags.
    """
    def flag(key):
        return "--" + key.replace("_", "-")

    config = dict(saved)
    conflicts, kept = [], []
    for key, value in current.items():
        if key in local:
            config[key] = value
        elif key not in saved:
            config[key] = value  # a flag newer than the checkpoint: its value here
        elif key in given and value != saved[key]:
            if key in changeable:
                log(f"resume: {flag(key)} {value} replaces the checkpoint's {saved[key]}")
                config[key] = value
            else:
                conflicts.append(f"{flag(key)} {value} (the checkpoint's run has {saved[key]})")
        elif key in changeable and key not in given:
            kept.append(f"{flag(key)} {saved[key]}")
    if conflicts:
        raise ValueError("these flags cannot change when resuming a run: " + "; ".join(conflicts)
                         + ". Resume without them, or start a new run without --resume")
    if kept:
        log("resume: from the checkpoint: " + ", ".join(kept))
    return config


def run_main(main, *args, errors=(), **kwargs) -> int:
    """``main(*args, **kwargs)``, with the errors a user's input can cause (:data:`USER_ERRORS`,
    and ``errors``: e.g. RuntimeError where ``--device cuda`` may find no GPU) printed as one
    line ``error: ...`` on stderr and exit status 2 instead of a traceback. A MemoryError says
    that the run does not fit in this machine's memory, with NumPy's account of the array."""
    try:
        return main(*args, **kwargs)
    except MemoryError as e:
        what = str(e) or "an array did not fit"
        print(f"error: out of memory: {what}. Choose smaller sizes (the batch, the widths, the "
              "number of layers).", file=sys.stderr)
        return 2
    except USER_ERRORS + tuple(errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
