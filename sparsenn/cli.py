"""Command-line conventions shared by the example scripts.

- argument types whose errors name the flag (``--seed -1`` says "--seed must be a
  non-negative integer", not NumPy's "expected non-negative integer"; ``--lr nan`` is refused
  before any model is built, not after);
- output paths checked before any work starts, so a run never trains for an epoch and then
  fails to write its checkpoint (:func:`check_output_paths`);
- resuming: which flags a resumed run takes from its checkpoint, which it may change and which
  it may not (:func:`resume_config`);
- a help formatter that shows each default once.
"""

from __future__ import annotations

import argparse

from sparsenn.io import check_output_path


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


def check_output_paths(args, files=(), dirs=(), parser: argparse.ArgumentParser | None = None) -> None:
    """:func:`check_output_path` for each named attribute of ``args`` (a Namespace or dict):
    ``files=("save", "metrics")`` checks ``args.save`` as ``--save``, and so on. With a
    ``parser``, a bad path is ``parser.error`` (usage, message, exit 2) instead of ValueError."""
    get = args.get if isinstance(args, dict) else lambda k: getattr(args, k, None)
    try:
        for names, kind in ((files, "file"), (dirs, "dir")):
            for name in names:
                check_output_path(get(name), "--" + name.replace("_", "-"), kind)
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
