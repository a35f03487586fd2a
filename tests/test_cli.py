"""Command-line conventions (sparsenn.cli) and the training loop's guards against bad runs."""

import argparse
import json
import re

import numpy as np
import pytest

from sparsenn import cli, schedules
from sparsenn.optim import SGD
from sparsenn.train import TrainingDiverged, fit
from tests.test_train import small_model, small_problem


def parser():
    p = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
    p.add_argument("--epochs", type=cli.positive_int, default=30, help="epochs")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.05 for sgd)")
    p.add_argument("--seed", type=cli.nonneg_int, default=0)
    p.add_argument("--save")
    p.add_argument("--topology", default="radix")
    return p


def test_given_flags_are_those_written_even_at_their_default_value():
    assert cli.given_flags(parser(), ["--epochs", "30", "--save=x.npz"]) == {"epochs", "save"}
    assert cli.given_flags(parser(), ["--epo", "4"]) == {"epochs"}  # argparse's abbreviations too
    assert cli.given_flags(parser(), []) == set()
    assert parser().parse_args([]).epochs == 30  # defaults restored afterwards


def test_int_types_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--seed", "-1"])
    assert "argument --seed: must be a non-negative integer, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["--epochs", "0"])
    assert "argument --epochs: must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag, kind, text, message", [
    ("--lr", cli.positive_float, "0", "must be a finite number > 0, got 0"),
    ("--lr", cli.positive_float, "-0.1", "must be a finite number > 0, got -0.1"),
    ("--lr", cli.positive_float, "nan", "must be a finite number > 0, got nan"),
    ("--lr", cli.positive_float, "inf", "must be a finite number > 0, got inf"),
    ("--lr", cli.positive_float, "fast", "must be a finite number > 0, got 'fast'"),
    ("--weight-decay", cli.nonneg_float, "-0.5", "must be a finite number >= 0, got -0.5"),
    ("--weight-decay", cli.nonneg_float, "NaN", "must be a finite number >= 0, got NaN"),
])
def test_float_types_refuse_nan_infinities_and_out_of_range_values_by_flag(flag, kind, text, message, capsys):
    p = argparse.ArgumentParser()
    p.add_argument(flag, type=kind)
    with pytest.raises(SystemExit):
        p.parse_args([flag, text])
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_float_types_accept_what_they_should():
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=cli.positive_float)
    p.add_argument("--weight-decay", type=cli.nonneg_float)
    args = p.parse_args(["--lr", "1e-3", "--weight-decay", "0"])
    assert args.lr == 1e-3 and args.weight_decay == 0.0


def test_help_shows_each_default_once():
    text = parser().format_help()
    assert "(default: None)" not in text and "(default 0.05 for sgd)" in text
    assert "(default: 30)" in text


SAVED = {"epochs": 4, "lr": 0.05, "seed": 0, "save": "/r/run.npz", "topology": "radix", "device": "cpu"}


def resume(argv, log=None):
    args = vars(parser().parse_args(argv))
    args["device"] = "auto"
    return cli.resume_config(SAVED, args, cli.given_flags(parser(), argv), changeable=("epochs", "save"),
                             local=("device",), log=log or (lambda m: None))


def test_resume_takes_the_run_from_the_checkpoint():
    said = []
    config = resume([], said.append)
    assert config["epochs"] == 4 and config["save"] == "/r/run.npz" and config["lr"] == 0.05
    assert config["device"] == "auto"  # where to run belongs to this command line
    assert said == ["resume: from the checkpoint: --epochs 4, --save /r/run.npz"]


def test_resume_may_extend_a_run_and_says_so():
    said = []
    config = resume(["--epochs", "8"], said.append)
    assert config["epochs"] == 8
    assert "resume: --epochs 8 replaces the checkpoint's 4" in said


def test_resume_refuses_flags_that_define_the_run():
    assert resume(["--lr", "0.05", "--topology", "radix"])["lr"] == 0.05  # the same values: fine
    with pytest.raises(ValueError) as e:
        resume(["--lr", "0.1", "--topology", "dense", "--seed", "0"])
    msg = str(e.value)
    assert msg.startswith("these flags cannot change when resuming a run: ")
    assert "--lr 0.1 (the checkpoint's run has 0.05)" in msg and "--topology dense (the checkpoint's run has radix)" in msg
    assert "--seed" not in msg


def test_short_last_batch_counts_the_images_it_has(tmp_path):
    lines = []
    model = small_model()
    opt = SGD(model.parameters(), lr=0.05)
    # 500 images in batches of 300: one of 300 and one of 200, so 500 images, not 600
    summary = fit(model, small_problem(), opt, schedules.Constant(0.05), epochs=1, batch_size=300, seed=0,
                  progress=False, log=lines.append)
    rec = summary["history"][0]
    assert rec["images_timed"] == 500 and rec["steps_timed"] == 2
    rate = float(re.search(r"\(([\d,]+) img/s\)", lines[-1]).group(1).replace(",", ""))
    assert rate == pytest.approx(500 / rec["epoch_seconds"], rel=0.01, abs=1)


def test_a_loss_that_blows_up_stops_the_run_even_while_finite(monkeypatch, tmp_path):
    from sparsenn import loss as loss_module

    real = loss_module.SoftmaxCrossEntropy.forward
    step = {"n": 0}

    def spiking(self, logits, labels):  # finite, 1e12 on every third step: no training
        value = real(self, logits, labels)
        step["n"] += 1
        return 1e12 if step["n"] % 3 == 0 else value

    monkeypatch.setattr(loss_module.SoftmaxCrossEntropy, "forward", spiking)
    model = small_model()
    opt = SGD(model.parameters(), lr=0.05)
    with pytest.raises(TrainingDiverged, match=r"the loss exceeded 100 x the loss of guessing \(1.39\) in 10 of "
                                               r"the last 100 steps \(now 1e\+12\) at step \d+ .*no checkpoint was "
                                               r"written; try a lower learning rate"):
        fit(model, small_problem(), opt, schedules.Constant(0.05), epochs=10, batch_size=50, seed=0,
            progress=False, log=lambda *a: None)
    step["n"] = 0
    fit(small_model(), small_problem(), SGD(small_model().parameters(), lr=0.05), schedules.Constant(0.05),
        epochs=1, batch_size=50, seed=0, progress=False, log=lambda *a: None, blowup_steps=0)  # turned off


def test_fit_checks_its_output_paths_before_training(tmp_path):
    model = small_model()
    opt = SGD(model.parameters(), lr=0.05)
    with pytest.raises(ValueError, match="save_path .*: is a directory"):
        fit(model, small_problem(), opt, schedules.Constant(0.05), epochs=1, batch_size=50, seed=0,
            save_path=tmp_path, progress=False, log=lambda *a: None)
    assert opt.steps == 0  # not a single step was taken


def test_resume_removes_metrics_written_after_the_checkpoint(tmp_path):
    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "c.npz"

    def run(epochs, resume=None):
        model = small_model()
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        return fit(model, small_problem(), opt, schedules.Cosine(0.05, 30), epochs=epochs, batch_size=50,
                   seed=0, save_path=ckpt, metrics_path=metrics, resume=resume, progress=False,
                   log=lambda *a: None)

    run(1)
    straight = [json.loads(l) for l in open(metrics)]
    # the stopped run got further than its checkpoint: a line for step 20, and half a line
    with open(metrics, "a") as f:
        f.write(json.dumps({"kind": "epoch", "step": 20}) + "\n" + '{"kind": "ep')
    said = []
    model = small_model()
    fit(model, small_problem(), SGD(model.parameters(), lr=0.05, momentum=0.9), schedules.Cosine(0.05, 30),
        epochs=2, batch_size=50, seed=0, save_path=ckpt, metrics_path=metrics, resume=ckpt, progress=False,
        log=said.append)
    lines = [json.loads(l) for l in open(metrics)]
    assert [l["step"] for l in lines] == [10, 20] and lines[0] == straight[0]
    assert any("removed 2 line(s) written after step 10" in s for s in said)


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    same = str(tmp_path / "out.json")
    with pytest.raises(ValueError, match="--json and --csv name the same file"):
        cli.check_output_paths({"json": same, "csv": same}, files=("json", "csv"))
    with pytest.raises(ValueError, match="--json and --csv name the same file"):  # the same file by another name
        cli.check_output_paths({"json": same, "csv": str(tmp_path / "sub" / ".." / "out.json")}, files=("json", "csv"))
    cli.check_output_paths({"json": same, "csv": str(tmp_path / "out.csv")}, files=("json", "csv"))


def test_an_output_may_not_write_over_an_input(tmp_path):
    mask = tmp_path / "m.npz"
    mask.write_bytes(b"x")
    with pytest.raises(ValueError, match="--save .* would write over the --mask file"):
        cli.check_output_paths({"save": str(mask), "mask": str(mask)}, files=("save",), inputs=("mask",))
    cli.check_output_paths({"save": str(tmp_path / "run.npz"), "mask": str(mask)}, files=("save",), inputs=("mask",))


def test_figure_paths_need_a_format_matplotlib_writes(tmp_path):
    pytest.importorskip("matplotlib")
    for bad in ("fig.xyz", "fig"):
        with pytest.raises(ValueError, match="--plot .*matplotlib cannot write"):
            cli.check_output_paths({"plot": str(tmp_path / bad)}, figures=("plot",))
    for good in ("fig.png", "fig.PDF", "fig.svg"):
        cli.check_output_paths({"plot": str(tmp_path / good)}, figures=("plot",))


def test_run_main_turns_user_errors_into_one_line_and_exit_2(capsys):
    def fails(exc):
        raise exc

    assert cli.run_main(fails, ValueError("--widths must be ...")) == 2
    assert capsys.readouterr().err == "error: --widths must be ...\n"
    assert cli.run_main(fails, FileNotFoundError("no such file: x.npz")) == 2
    assert cli.run_main(fails, MemoryError("Unable to allocate 292. GiB for an array")) == 2
    err = capsys.readouterr().err
    assert "error: out of memory: Unable to allocate 292. GiB" in err and "Traceback" not in err
    assert cli.run_main(fails, RuntimeError("no GPU"), errors=(RuntimeError,)) == 2
    with pytest.raises(RuntimeError):  # not a user's error unless the script says so: a bug shows its traceback
        cli.run_main(fails, RuntimeError("a bug"))
    with pytest.raises(KeyError):
        cli.run_main(fails, KeyError("a bug"))
    assert cli.run_main(lambda a, b=0: a + b, 1, b=2) == 3


def test_fit_refuses_a_batch_larger_than_the_training_set():
    model = small_model()
    opt = SGD(model.parameters(), lr=0.05)
    with pytest.raises(ValueError, match=r"the batch \(501 images\) is larger than the training set \(500 images\)"):
        fit(model, small_problem(), opt, schedules.Constant(0.05), epochs=1, batch_size=501, seed=0, progress=False)


def test_milestones_must_increase(capsys):
    p = argparse.ArgumentParser()
    cli.check_milestones(p, [10, 20])
    cli.check_milestones(p, [])
    for bad in ([5, 3], [4, 4]):
        with pytest.raises(SystemExit):
            cli.check_milestones(p, bad)
        assert "--milestones must be increasing step numbers" in capsys.readouterr().err
