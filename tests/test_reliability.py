"""Runs a reader can trust: a stored result answers only the same data, one results folder serves several
processes, a killed command leaves nothing training, and every mistake is one line."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from helpers import typed

from lora_tutorial.errors import LossDiverged
from lora_tutorial.study import runner
from lora_tutorial.study.experiments import PROFILES
from lora_tutorial.study.store import ResultStore

HEAD = "head-e1-n2048@1e-2"


def command(learnable, results, *args):
    return [
        sys.executable,
        "-m",
        "lora_tutorial",
        "run",
        "--profile",
        "smoke",
        "--data",
        str(learnable),
        "--results",
        str(results),
        "--no-progress",
        *args,
    ]


def run_smoke(capsys, *args) -> tuple[int, str, str]:
    """``python -m lora_tutorial run --profile smoke ARGS``, typed in this process."""
    return typed(capsys, "run", "--profile", "smoke", *args)


def test_a_stored_run_answers_only_the_data_it_was_made_on(learnable, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    lines = (learnable / "train.tsv").read_text().splitlines()
    (small / "train.tsv").write_text("\n".join(lines[:301]) + "\n")  # the header and 300 examples
    (small / "validation.tsv").write_text((learnable / "validation.tsv").read_text())
    [first] = runner.run_suite(PROFILES["smoke"], ["head-e1"], [0], tmp_path / "r", small, progress=False)
    assert first.config["train_examples"] == 300
    [again] = runner.run_suite(PROFILES["smoke"], ["head-e1"], [0], tmp_path / "r", learnable, progress=False)
    assert again.config["train_examples"] == 1024  # trained again on the data asked for
    assert again.config["data_sha256"] != first.config["data_sha256"]
    assert len(list((tmp_path / "r" / "smoke" / "superseded").glob("*/*.json"))) == 1  # the first is kept


def test_a_missing_data_folder_is_an_error_even_when_every_run_is_stored(learnable, tmp_path, capsys):
    runner.run_suite(PROFILES["smoke"], ["head-e1"], [0], tmp_path, learnable, progress=False)
    capsys.readouterr()
    status, _, err = run_smoke(
        capsys, "--experiments", "head-e1", "--data", "/nonexistent", "--results", str(tmp_path)
    )
    assert (status, err.count("\n")) == (2, 1)
    assert "SST-2 folder /nonexistent does not exist" in err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--seeds", "-1"], "Seed -1 is out of range; use seeds from 0 to 4294967295"),
        (["--seeds", str(2**40)], "out of range"),
        (["--experiments", "lora-r16-n0"], "Unknown experiment 'lora-r16-n0'"),
        (["--experiments", "lora-r16@nan"], "Unknown experiment 'lora-r16@nan'"),
        (["--experiments", "full@inf"], "Unknown experiment 'full@inf'"),
    ],
)
def test_bad_seeds_and_budgets_are_one_line_before_any_data_loads(args, says, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "prepare_data", lambda *a: pytest.fail("data loaded"))
    status, _, err = run_smoke(capsys, *args, "--results", str(tmp_path))
    assert (status, err.count("\n")) == (2, 1)
    assert says in err


def test_an_unwritable_results_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "prepare_data", lambda *a: pytest.fail("data loaded"))
    (tmp_path / "file").write_text("not a folder")
    status, _, err = run_smoke(capsys, "--results", str(tmp_path / "file" / "results"))
    assert (status, err.count("\n")) == (2, 1)
    assert "Cannot write results to" in err


def test_a_diverging_rate_is_one_line_that_says_to_lower_it(learnable, tmp_path, capsys, monkeypatch):
    def diverged(*a, **k):
        raise LossDiverged("The loss diverged (became nan) at step 3 (epoch 1); lower the learning rate")

    monkeypatch.setattr(runner, "train", diverged)
    status, _, err = run_smoke(
        capsys,
        "--experiments",
        "head-e1",
        "--data",
        str(learnable),
        "--results",
        str(tmp_path),
        "--no-progress",
    )
    assert (status, err.count("\n")) == (2, 1)
    assert "loss diverged (became nan) at step 3" in err


def test_a_damaged_record_is_named_skipped_where_read_and_kept_where_rewritten(learnable, tmp_path, capsys):
    runner.run_suite(PROFILES["smoke"], ["head-e1", "lora-r2-e1"], [0], tmp_path, learnable, progress=False)
    broken = tmp_path / "smoke" / f"{HEAD}__seed0.json"
    broken.write_text(broken.read_text()[:200])  # cut short
    capsys.readouterr()
    with pytest.warns(UserWarning, match=f"skipped: {broken}"):
        status, out, _ = typed(capsys, "results", "--profile", "smoke", "--results", str(tmp_path), "--json")
    assert status == 0
    assert [r["method"] for r in json.loads(out)] == ["lora"]
    [again] = runner.run_suite(PROFILES["smoke"], ["head-e1"], [0], tmp_path, learnable, progress=False)
    assert again.experiment == HEAD  # trained again, and the damaged file kept aside
    [kept] = (tmp_path / "smoke" / "superseded").glob(f"unreadable-*/{broken.name}")
    assert len(kept.read_text()) == 200


@pytest.mark.slow
def test_two_commands_at_once_share_the_work_and_lose_nothing(learnable, tmp_path):
    args = command(learnable, tmp_path, "--experiments", "head-e1", "lora-r2-e1", "--seeds", "0", "1")
    both = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in both]
    assert [p.returncode for p in both] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    store = ResultStore("smoke", tmp_path)
    assert len(store.records()) == 4
    assert not (tmp_path / "smoke" / "superseded").exists()  # no run trained twice
    for out, _ in outs:  # each command reports all four, once
        assert len(out.splitlines()) == 4


@pytest.mark.slow
def test_killing_the_command_ends_the_run_it_started(learnable, tmp_path):
    args = command(learnable, tmp_path, "--experiments", "full", "head", "--seeds", "0")  # two: a child each
    parent = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
        time.sleep(0.2)
    [child] = psutil.Process(parent.pid).children()
    parent.kill()  # SIGKILL: no chance to clean up
    parent.wait()
    child.wait(timeout=30)  # the child ends with its parent
    assert not list((tmp_path / "smoke").glob("*.json"))


@pytest.mark.slow
def test_ctrl_c_is_one_line_that_says_how_to_resume(learnable, tmp_path):
    args = command(learnable, tmp_path, "--experiments", "full-e3", "--seeds", "0")  # one run: no child
    process = subprocess.Popen(  # as a shell's foreground job: SIGINT not ignored (a background job's is)
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "smoke").glob("locks/*.lock")) and time.monotonic() < deadline:
        time.sleep(0.1)  # training has started
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().endswith("interrupted; re-run the same command to resume (finished runs are kept).")
    assert "Traceback" not in err
    assert os.path.exists(tmp_path / "smoke")
