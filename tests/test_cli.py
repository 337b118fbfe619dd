"""The command line, as a user types it: mistakes get one line and exit status 2, results come as JSON.
Most cases call its ``main`` in this process (what a user's shell runs, without a second interpreter start);
one mistake and the runs go through a real ``python -m lora_tutorial``."""

import json

import pytest
from helpers import cli, typed

from lora_tutorial.cli import main


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "--profile", "smoke", "--experiments", "lora-r8-uper"], "Unknown experiment 'lora-r8-uper'"),
        (["run", "--profile", "smoke", "--experiments", "everything"], "Unknown suite 'everything'"),
        (["run", "--profile", "laptop"], "Unknown profile 'laptop'"),
        (
            ["run", "--profile", "smoke", "--experiments", "lora-r8-layer9"],
            "adapts layer 9, but the model has 2 layers",
        ),
        (
            ["run", "--profile", "smoke", "--data", "/no/such/folder"],
            "SST-2 folder /no/such/folder does not exist",
        ),
        (["results", "--profile", "laptop"], "Unknown profile 'laptop'"),
    ],
)
def test_a_mistake_prints_one_line_and_exits_2(args, says, tmp_path, capsys):
    status, _, err = typed(capsys, *args, "--results", str(tmp_path))
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("error: ")
    assert says in err


@pytest.mark.slow
def test_a_mistake_in_a_real_shell_is_one_line_without_a_traceback(tmp_path):
    out = cli("run", "--profile", "smoke", "--experiments", "lora-r8-uper", "--results", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.startswith("error: Unknown experiment 'lora-r8-uper'")
    assert out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr


def test_a_malformed_tsv_is_one_line_too(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\n")
    (tmp_path / "validation.tsv").write_text("sentence\tlabel\nfine\t1\n")
    status, _, err = typed(
        capsys, "run", "--profile", "smoke", "--data", str(tmp_path), "--results", str(tmp_path / "r")
    )
    assert status == 2
    assert "train.tsv:3: expected 'sentence<TAB>label' (2 fields), got 1" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="Unknown profile 'laptop'"):
        main(["--debug", "run", "--profile", "laptop", "--results", str(tmp_path)])


def test_results_of_an_empty_profile_say_how_to_make_them(tmp_path, capsys):
    status, out, _ = typed(capsys, "results", "--profile", "smoke", "--results", str(tmp_path))
    assert status == 0
    assert "Nothing is stored for the smoke profile" in out
    assert "python -m lora_tutorial run --profile smoke" in out


@pytest.mark.slow
def test_runs_made_in_their_own_processes_come_back_as_json(learnable, tmp_path):
    data = ["--data", str(learnable), "--results", str(tmp_path), "--no-progress"]
    made = cli(
        "run", "--profile", "smoke", "--experiments", "lora-r2-e1", "--seeds", "3", "4", *data
    )  # two runs: two processes
    assert made.returncode == 0, made.stderr[-2000:]
    assert [line.split()[0] for line in made.stdout.splitlines()] == ["lora-r2-qv-e1-n2048@1e-2"] * 2  # once
    assert "examples/s" not in made.stderr  # --no-progress: not even datasets' tokenizing bar
    assert "it/s" not in made.stderr
    runs = json.loads(cli("results", "--profile", "smoke", "--results", str(tmp_path), "--json").stdout)
    assert [r["seed"] for r in runs] == [3, 4]
    run = runs[0]
    assert run["experiment"] == "lora-r2-qv-e1-n2048@1e-2"
    assert (run["method"], run["rank"], run["seed"], run["epochs"], run["lr"]) == ("lora", 2, 3, 1, 1e-2)
    assert run["target_modules"] == ["query", "value"]
    assert run["layers"] is None
    assert run["train_examples"] == 1024
    assert run["predictions"] == 256
    assert 0 <= run["validation_accuracy"] <= 1
    assert run["current"] is True
    assert (run["scaling_rule"], run["alpha"], run["probabilities"]) == ("alpha = 2r", 4, 256)
    assert run["adapter"].startswith(str(tmp_path))
    assert run["adapter"].endswith("__seed3")


def test_the_studys_runs_list_as_json_with_their_predictions(capsys):
    """Every stored cpu record, older formats included, lists as JSON; every current run (a suite's, or
    one that chose a setting) carries its 872 validation predictions and probabilities, so any two can be
    paired in either metric, and every LoRA run states its scaling rule and α."""
    status, out, err = typed(capsys, "results", "--profile", "cpu", "--json")
    assert status == 0, err
    runs = json.loads(out)
    assert {"full", "lora"} <= {r["method"] for r in runs}
    missing = [(r["experiment"], r["seed"]) for r in runs if r["current"] and r["predictions"] != 872]
    assert not missing, f"stored without predictions: {missing}"
    missing = [(r["experiment"], r["seed"]) for r in runs if r["current"] and r["probabilities"] != 872]
    assert not missing, f"stored without probabilities: {missing}"
    lora = [r for r in runs if r["current"] and r["method"] == "lora"]
    assert all(r["scaling_rule"] and r["alpha"] for r in lora)
    assert all(r["epochs_evaluated"] in (0, r["epochs"]) for r in runs)  # 0: made before curves were stored
