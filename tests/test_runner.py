"""The experiment runner: learning, determinism, resume after a kill, result schema, 2 processes."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from lora_tutorial import runner
from lora_tutorial.experiments import PROFILES, experiment, suite
from lora_tutorial.train import TrainConfig, train

def test_smoke_run_learns_and_records_schema(learnable, tmp_path):
    [record] = runner.run_suite("smoke", ["full"], [0], tmp_path, learnable, progress=False)
    assert record["metrics"]["validation_accuracy"] >= 0.9
    assert {"config", "metrics", "trainable_params", "total_params", "train_seconds_per_epoch",
            "examples_per_second", "peak_memory_bytes", "versions", "machine", "git_commit",
            "started", "finished"} <= set(record)
    assert {"method", "rank", "alpha", "layers", "target_modules", "seed", "model", "profile",
            "hyperparameters"} <= set(record["config"])
    assert len(record["metrics"]["history"]) == PROFILES["smoke"].epochs
    assert record["trainable_params"] == record["total_params"] and record["peak_memory_bytes"] > 0
    assert json.loads((tmp_path / "smoke" / "full__seed0.json").read_text()) == record


def test_ablations_train_on_the_ablation_budget(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], ablation_train_limit=128, epochs=1))
    full, ablation = runner.run_suite("smoke", ["lora-r2", "lora-r2-qv"], [0], tmp_path, learnable, progress=False)
    assert full["config"]["train_examples"] == 1024 and ablation["config"]["train_examples"] == 128
    assert not experiment("lora-r8").ablation and experiment("lora-r8-qv").ablation
    assert experiment("lora-r8-qv").lora_config(6, 0.0) == experiment("lora-r8").lora_config(6, 0.0)


def test_a_run_is_found_under_an_equivalent_name(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs=1))
    tuned = f"lora-r2@{PROFILES['smoke'].lr_lora}"  # the profile's own rate, named explicitly
    [a] = runner.run_suite("smoke", [tuned, "lora-r2@1e-3"], [0], tmp_path, learnable, progress=False)[:1]
    [b] = runner.run_suite("smoke", ["lora-r2"], [0], tmp_path, learnable, progress=False)
    assert b == a and len(list((tmp_path / "smoke").glob("*.json"))) == 2  # not trained again
    assert sorted(runner.load_results(tmp_path, "smoke")["experiment"]) == ["lora-r2", "lora-r2@1e-3"]
    smoke = replace(PROFILES["smoke"], lr_lora=1e-3)  # the chosen rate changes: each stored run keeps its identity
    assert runner.find_result(tmp_path, smoke, "lora-r2", 0).name == "lora-r2@1e-3__seed0.json"
    assert runner.find_result(tmp_path, smoke, tuned, 0).name == f"{tuned}__seed0.json"


def test_a_run_depends_only_on_its_own_settings(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs=1))
    runner.run_suite("smoke", ["head", "lora-r2"], [0], tmp_path, learnable, progress=False)
    changed = replace(PROFILES["smoke"], lora_dropout=0.2, ablation_train_limit=64)
    assert runner.find_result(tmp_path, changed, "head", 0) and not runner.find_result(tmp_path, changed, "lora-r2", 0)
    assert runner.find_result(tmp_path, replace(PROFILES["smoke"], ablation_train_limit=64), "lora-r2", 0)
    assert not runner.find_result(tmp_path, replace(PROFILES["smoke"], batch_size=8), "head", 0)


def test_lora_run_saves_a_loadable_adapter(learnable, tmp_path):
    [record] = runner.run_suite("smoke", ["lora-r4-upper"], [0], tmp_path, learnable, progress=False)
    assert record["config"]["layers"] == [1] and record["lora_params"] == 2 * 4 * (64 + 64)
    from lora_tutorial import load_adapter
    from lora_tutorial.models import load_model
    model = load_adapter(load_model("tiny"), tmp_path / "smoke" / record["adapter"])
    assert model.lora_config.r == 4


def test_same_seed_same_metrics(learnable, tmp_path):
    a = runner.run_suite("smoke", ["lora-r2"], [1], tmp_path / "a", learnable, progress=False)[0]
    b = runner.run_suite("smoke", ["lora-r2"], [1], tmp_path / "b", learnable, progress=False)[0]
    assert a["metrics"]["history"][-1]["validation_loss"] == b["metrics"]["history"][-1]["validation_loss"]
    assert a["metrics"]["loss_curve"] == b["metrics"]["loss_curve"]


def test_resume_after_a_kill(learnable, tmp_path, monkeypatch):
    real_train, calls = runner.train, []

    def killed_on_second_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies mid-run
        return real_train(*args, **kwargs)
    monkeypatch.setattr(runner, "train", killed_on_second_run)
    with pytest.raises(KeyboardInterrupt):
        runner.run_suite("smoke", ["head", "lora-r1"], [0], tmp_path, learnable, progress=False)
    first = tmp_path / "smoke" / "head__seed0.json"
    assert first.exists() and not (tmp_path / "smoke" / "lora-r1__seed0.json").exists()
    (tmp_path / "smoke" / "lora-r1__seed0.json.tmp").write_text("{half")  # a write cut short
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(runner, "train", real_train)
    records = runner.run_suite("smoke", ["head", "lora-r1"], [0], tmp_path, learnable, progress=False)
    assert first.stat().st_mtime_ns == stamp  # finished runs are skipped
    assert [r["config"]["experiment"] for r in records] == ["head", "lora-r1"]
    assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == ["adapters", "head__seed0.json",
                                                                      "lora-r1__seed0.json"]
    monkeypatch.setitem(runner.PROFILES, "smoke", PROFILES["smoke"].__class__(**{
        **runner.asdict(PROFILES["smoke"]), "lr_head": 1e-4}))  # settings changed: that result is stale
    assert runner.find_result(tmp_path, runner.PROFILES["smoke"], "head", 0) is None
    assert runner.find_result(tmp_path, runner.PROFILES["smoke"], "lora-r1", 0) == tmp_path / "smoke" / "lora-r1__seed0.json"
    frame = runner.load_results(tmp_path, "smoke")  # named for the profile as it is now
    head_lr = json.loads(first.read_text())["config"]["hyperparameters"]["lr"]
    assert list(frame["experiment"]) == [f"head@{head_lr:g}", "lora-r1"] and frame["validation_accuracy"].between(0, 1).all()
    runner.run_suite("smoke", ["head", "lora-r1"], [0], tmp_path, learnable, force=True, progress=False)
    superseded = tmp_path / "smoke" / "superseded"  # re-runs keep what the earlier runs computed
    assert {json.loads(p.read_text())["config"]["hyperparameters"]["lr"] for p in superseded.glob("*/head__seed0.json")} == {head_lr}
    assert len(list(superseded.glob("*/adapters/lora-r1__seed0/adapter_model.safetensors"))) == 1
    assert sorted(runner.load_results(tmp_path, "smoke")["experiment"]) == ["head", "lora-r1"]


def test_nan_loss_stops_with_clear_error(learnable):
    data, tokenizer = runner.prepare_data(PROFILES["smoke"], learnable)
    model = runner.build(PROFILES["smoke"], experiment("head"), 0)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan at step 0 .*lower the learning rate"):
        train(model, data, tokenizer, TrainConfig(progress=False))


def test_bf16_autocast_path_runs_on_cpu(learnable):
    """The GPU path's bf16 autocast, exercised on the CPU (Accelerate autocasts there too)."""
    from accelerate.state import AcceleratorState
    data, tokenizer = runner.prepare_data(PROFILES["smoke"], learnable)
    model = runner.build(PROFILES["smoke"], experiment("full"), 0)
    AcceleratorState._reset_state(reset_partial_state=True)  # the process-wide state was set to fp32
    try:
        out = train(model, data, tokenizer, TrainConfig(lr=1e-3, epochs=2, progress=False, mixed_precision="bf16"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert out.mixed_precision == "bf16" and out.validation_accuracy >= 0.8
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_bad_names():
    with pytest.raises(ValueError, match="Unknown experiment 'lora-rx'"):
        experiment("lora-rx")
    with pytest.raises(ValueError, match="Unknown profile 'laptop'"):
        runner.run_suite("laptop", ["full"], [0])
    with pytest.raises(ValueError, match="Unknown suite"):
        suite("everything")


def test_experiment_names():
    assert experiment("lora-r8-q-upper").lora_config(6, 0.0).layers == [3, 4, 5]
    assert experiment("lora-r8-layer3").lora_config(6, 0.0).layers == [3]
    assert experiment("lora-r16").lora_config(12, 0.1).target_modules == ("query", "value")
    assert experiment("dora-r16").lora_config(6, 0.0).dora and experiment("rslora-r4").lora_config(6, 0.0).rslora
    assert experiment("loraplus-r16").lr_ratio_b == 16 and experiment("lora-r16").lr_ratio_b == 1
    assert experiment("full@5e-5").learning_rate(PROFILES["cpu"]) == 5e-5
    assert experiment("lora-r16").learning_rate(PROFILES["cpu"]) == PROFILES["cpu"].lr_lora
    with pytest.raises(ValueError, match="Unknown experiment 'full@fast'"):
        experiment("full@fast")
    assert suite("rank") == ["lora-r1", "lora-r4", "lora-r8", "lora-r16", "lora-r32"]


def test_loraplus_gives_b_a_larger_learning_rate(tiny):
    from lora_tutorial import LoRAConfig, apply_lora, lora_layers
    from lora_tutorial.train import make_optimizer
    apply_lora(tiny, LoRAConfig(r=2))
    groups = make_optimizer(tiny, TrainConfig(lr=1e-3, lr_ratio_b=16)).param_groups
    b_params = {id(layer.lora_B) for layer in lora_layers(tiny).values()}
    [b_group] = [g for g in groups if {id(p) for p in g["params"]} == b_params]
    assert b_group["lr"] == pytest.approx(16e-3)
    assert all(g["lr"] == pytest.approx(1e-3) for g in groups if g is not b_group)


def test_two_processes_match_one(learnable, tmp_path):
    args = ["-m", "lora_tutorial", "run", "--profile", "smoke", "--experiments", "full", "--seeds", "0",
            "--data", str(learnable), "--no-progress"]
    subprocess.run([sys.executable, *args, "--results", str(tmp_path / "one")], check=True, capture_output=True)
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          *args, "--results", str(tmp_path / "two")], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "smoke" / "full__seed0.json").read_text()) for d in ("one", "two"))
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["metrics"]["validation_accuracy"] == pytest.approx(one["metrics"]["validation_accuracy"], abs=1 / 256)
    assert two["metrics"]["history"][-1]["validation_loss"] == pytest.approx(
        one["metrics"]["history"][-1]["validation_loss"], rel=1e-2)


def test_each_run_stores_its_predictions_in_dataset_order(learnable, tmp_path):
    [record] = runner.run_suite("smoke", ["lora-r2"], [0], tmp_path, learnable, progress=False)
    preds, labels = record["predictions"], record["validation_labels"]
    assert len(preds) == len(labels) == 256
    assert labels == runner.labels_text(runner.load_sst2(learnable)["validation"]["label"])
    accuracy = sum(p == y for p, y in zip(preds, labels)) / len(labels)
    assert accuracy == record["metrics"]["validation_accuracy"]


def test_predictions_are_recomputed_from_a_stored_adapter(learnable, tmp_path):
    [record] = runner.run_suite("smoke", ["lora-r2"], [0], tmp_path, learnable, progress=False)
    path = tmp_path / "smoke" / "lora-r2__seed0.json"
    stripped = {k: v for k, v in record.items() if k not in ("predictions", "validation_labels")}
    path.write_text(json.dumps(stripped))
    assert runner.find_result(tmp_path, PROFILES["smoke"], "lora-r2", 0) is None  # no predictions: not current
    assert runner.recompute_predictions("smoke", tmp_path, learnable) == [path]
    again = json.loads(path.read_text())
    assert again["predictions"] == record["predictions"]
    assert again["predictions_recomputed"]["from"] == record["adapter"]
    assert runner.recompute_predictions("smoke", tmp_path, learnable) == []  # nothing left to do
