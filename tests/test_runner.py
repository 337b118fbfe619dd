"""The experiment runner: learning, determinism, resume after a kill, result schema, 2 processes."""

import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from lora_tutorial.errors import LossDiverged, UsageError
from lora_tutorial.study import runner
from lora_tutorial.study.experiments import (
    HEADLINE_KINDS,
    PROFILES,
    RANKS,
    VARIANT_NAMES,
    Experiment,
    lr_text,
    profile_named,
    spec,
    suites,
)
from lora_tutorial.study.records import RunRecord
from lora_tutorial.study.report import load_results
from lora_tutorial.study.store import ResultStore
from lora_tutorial.train import TrainConfig, train


def test_smoke_run_learns_and_records_schema(learnable, tmp_path):
    [record] = runner.run_suite(PROFILES["smoke"], ["full"], [0], tmp_path, learnable, progress=False)
    assert record.accuracy >= 0.9
    assert record.experiment == "full-e3-n2048@1e-3"
    assert {"method", "rank", "alpha", "layers", "target_modules", "seed", "model", "hyperparameters"} <= set(
        record.config
    )
    assert len(record.metrics["history"]) == PROFILES["smoke"].epochs["full"]
    assert record.params.trainable == record.params.total
    assert record.memory.peak_bytes > record.memory.baseline_bytes > 0
    assert record.provenance.versions["torch"]
    assert record.timing.mean_load_average > 0
    stored = tmp_path / "smoke" / "full-e3-n2048@1e-3__seed0.json"
    assert RunRecord.from_json(json.loads(stored.read_text())) == record


def test_the_smoke_profiles_lora_and_head_runs_learn(learnable, tmp_path):
    """Well above the majority class (52 % of the toy task's validation set), so that the determinism,
    resume and multi-process tests check a LoRA path that trains, not one that predicts a constant."""
    lora, head = runner.run_suite(
        PROFILES["smoke"], ["lora-r2", "head"], [0], tmp_path, learnable, progress=False
    )
    majority = max(lora.validation_labels.count("0"), lora.validation_labels.count("1")) / 256
    assert majority < 0.55
    assert lora.accuracy >= 0.9
    assert head.accuracy >= 0.7


def test_the_budget_is_part_of_the_spec(learnable, tmp_path):
    full, small = runner.run_suite(
        PROFILES["smoke"], ["lora-r2-e1", "lora-r2-e1-n128"], [0], tmp_path, learnable, progress=False
    )
    assert full.config["train_examples"] == 1024
    assert small.config["train_examples"] == 128
    assert small.experiment == "lora-r2-qv-e1-n128@1e-2"


def test_an_equivalent_name_finds_the_stored_run(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs={"lora": 1}))
    rate = lr_text(PROFILES["smoke"].lr["lora"])
    [a] = runner.run_suite(PROFILES["smoke"], [f"lora-r2@{rate}"], [0], tmp_path, learnable, progress=False)
    [b] = runner.run_suite(
        PROFILES["smoke"], ["lora-r2", "lora-r2-qv-e1"], [0], tmp_path, learnable, progress=False
    )[:1]
    assert b == a
    assert len(list((tmp_path / "smoke").glob("*.json"))) == 1  # not trained again
    moved = replace(PROFILES["smoke"], lr={"lora": 1e-3}, epochs={"lora": 1})  # the chosen rate changes
    store = ResultStore("smoke", tmp_path)
    assert store.find(spec(moved, "lora-r2", 0)) is None  # a different run now
    assert store.find(spec(moved, f"lora-r2@{rate}", 0)) == a  # the stored run keeps its identity


def test_a_run_depends_only_on_its_own_fixed_settings(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs={"head": 1, "lora": 1}))
    runner.run_suite(PROFILES["smoke"], ["head", "lora-r2"], [0], tmp_path, learnable, progress=False)
    store, smoke = ResultStore("smoke", tmp_path), PROFILES["smoke"]
    other_dropout = replace(smoke, lora_dropout=0.2)
    assert store.find(spec(other_dropout, "head", 0))
    assert not store.find(spec(other_dropout, "lora-r2", 0))
    assert not store.find(spec(replace(smoke, batch_size=8), "head", 0))
    for optimiser in (dict(weight_decay=0.1), dict(warmup_ratio=0.0), dict(max_grad_norm=5.0)):
        assert not store.find(spec(replace(smoke, **optimiser), "head", 0))
    # a record stored before these were profile settings: read from the hyper-parameters it recorded
    path = store.path(spec(smoke, "head", 0))
    record = store.load(path)
    older = {
        k: v for k, v in record.settings.items() if k not in ("weight_decay", "warmup_ratio", "max_grad_norm")
    }
    path.write_text(json.dumps(replace(record, settings=older).to_json()))
    assert store.find(spec(smoke, "head", 0))
    assert not store.find(spec(replace(smoke, weight_decay=0.1), "head", 0))


def test_lora_run_saves_a_loadable_adapter(learnable, tmp_path):
    [record] = runner.run_suite(
        PROFILES["smoke"], ["lora-r4-upper-e1"], [0], tmp_path, learnable, progress=False
    )
    assert record.config["layers"] == [1]
    assert record.params.lora == 2 * 4 * (64 + 64)
    from lora_tutorial import load_adapter
    from lora_tutorial.models import load_model

    model = load_adapter(load_model("tiny"), tmp_path / "smoke" / record.adapter)
    assert model.lora_config.r == 4


def test_same_seed_same_metrics(learnable, tmp_path):
    a = runner.run_suite(PROFILES["smoke"], ["lora-r2"], [1], tmp_path / "a", learnable, progress=False)[0]
    b = runner.run_suite(PROFILES["smoke"], ["lora-r2"], [1], tmp_path / "b", learnable, progress=False)[0]
    assert a.metrics["history"][-1]["validation_loss"] == b.metrics["history"][-1]["validation_loss"]
    assert a.metrics["loss_curve"] == b.metrics["loss_curve"]
    assert a.predictions == b.predictions
    assert a.accuracy >= 0.9  # a LoRA run that learned


@pytest.mark.slow
def test_resume_after_a_kill(learnable, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs={"head": 1, "lora": 1}))
    real_train, calls = runner.train, []

    def killed_on_second_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies mid-run
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runner, "train", killed_on_second_run)
    with pytest.raises(KeyboardInterrupt):
        runner.run_suite(PROFILES["smoke"], ["head", "lora-r1"], [0], tmp_path, learnable, progress=False)
    folder = tmp_path / "smoke"
    first = folder / "head-e1-n2048@1e-2__seed0.json"
    assert sorted(p.name for p in folder.iterdir() if p.name != "locks") == [first.name]
    (folder / "lora-r1-qv-e1-n2048@1e-2__seed0.json.tmp").write_text("{half")  # a write cut short
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(runner, "train", real_train)
    records = runner.run_suite(
        PROFILES["smoke"], ["head", "lora-r1"], [0], tmp_path, learnable, progress=False
    )
    assert first.stat().st_mtime_ns == stamp  # finished runs are skipped
    assert [r.experiment for r in records] == ["head-e1-n2048@1e-2", "lora-r1-qv-e1-n2048@1e-2"]
    assert sorted(p.name for p in folder.iterdir() if p.name != "locks") == [
        "adapters",
        first.name,
        "lora-r1-qv-e1-n2048@1e-2__seed0.json",
    ]
    capsys.readouterr()
    runner.run_suite(
        PROFILES["smoke"], ["head", "lora-r1"], [0], tmp_path, learnable, force=True, progress=False
    )
    assert capsys.readouterr().err.count("running it again, as --force asks") == 2
    superseded = folder / "superseded"  # re-runs keep what the earlier runs computed
    assert len(list(superseded.glob(f"*/{first.name}"))) == 1
    assert (
        len(list(superseded.glob("*/adapters/lora-r1-qv-e1-n2048@1e-2__seed0/adapter_model.safetensors")))
        == 1
    )
    frame = load_results(tmp_path, "smoke", superseded=True)
    assert sorted(frame["superseded"]) == [False, False, True, True]


def test_nan_loss_stops_with_clear_error(learnable):
    data, tokenizer = runner.prepare_data(PROFILES["smoke"], learnable)
    model = runner.build(PROFILES["smoke"], spec(PROFILES["smoke"], "head", 0))
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(LossDiverged, match=r"loss diverged \(became nan\) at step 0 .*lower the"):
        train(model, data, tokenizer, TrainConfig(progress=False))


def test_bf16_autocast_path_runs_on_cpu(learnable):
    """The GPU path's bf16 autocast, exercised on the CPU (Accelerate autocasts there too)."""
    from accelerate.state import AcceleratorState

    data, tokenizer = runner.prepare_data(PROFILES["smoke"], learnable)
    model = runner.build(PROFILES["smoke"], spec(PROFILES["smoke"], "full", 0))
    AcceleratorState._reset_state(reset_partial_state=True)  # the process-wide state was set to fp32
    try:
        out = train(
            model, data, tokenizer, TrainConfig(lr=1e-3, epochs=2, progress=False, mixed_precision="bf16")
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert out.mixed_precision == "bf16"
    assert out.validation_accuracy >= 0.8
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_bad_names_and_layers_fail_before_any_data_loads(monkeypatch):
    monkeypatch.setattr(runner, "prepare_data", lambda *a: pytest.fail("data loaded"))
    with pytest.raises(ValueError, match="Unknown experiment 'lora-rx'"):
        runner.run_suite(PROFILES["smoke"], ["lora-rx"], [0])
    with pytest.raises(ValueError, match="Unknown profile 'laptop'"):
        profile_named("laptop")
    with pytest.raises(ValueError, match="Unknown suite 'everything'"):
        runner.run_suite(PROFILES["smoke"], ["everything"], [0])
    with pytest.raises(ValueError, match="adapts layer 7, but the model has 2 layers"):
        runner.run_suite(PROFILES["smoke"], ["lora-r8-layer7"], [0])


@pytest.mark.parametrize(
    "name",
    [
        "full",
        "head@1e-2",
        "lora-r16",
        "lora-r8-q-upper",
        "dora-r4-qkvo-ffn-layer3-e2",
        "loraplus-r16-qv-e1-n20000@1e-3",
        "rslora-r1-v-lower-n5@2.5e-5",
    ],
)
def test_every_spec_round_trips_through_its_name(name):
    exp = Experiment.parse(name)
    assert Experiment.parse(exp.name) == exp
    resolved = exp.resolve(PROFILES["cpu"])
    assert Experiment.parse(resolved.name) == resolved
    assert resolved.lr is not None
    assert resolved.epochs is not None


def test_experiment_names_say_what_they_train():
    assert Experiment.parse("lora-r8-q-upper").lora_config(6, 0.0).layers == [3, 4, 5]
    assert Experiment.parse("lora-r8-layer3").lora_config(6, 0.0).layers == [3]
    assert Experiment.parse("lora-r16").lora_config(12, 0.1).target_modules == ("query", "value")
    assert Experiment.parse("dora-r16").lora_config(6, 0.0).variant == "dora"
    assert Experiment.parse("rslora-r4").lora_config(6, 0.0).variant == "rslora"
    assert Experiment.parse("pissa-r4").lora_config(6, 0.0).variant == "pissa"
    assert Experiment.parse("loraplus-r16").lora_config(6, 0.0).variant == "lora"
    assert Experiment.parse("loraplus-r16").lr_ratio_b == 16
    assert Experiment.parse("lora-r16").lr_ratio_b == 1
    assert Experiment.parse("full@5e-5").resolve(PROFILES["cpu"]).lr == 5e-5
    assert Experiment.parse("lora-r4-qkvo-ffn").kind == "lora-qkvo-ffn"
    assert Experiment.parse("rslora-r16-qv").kind == "rslora"  # a variant is tuned on its own
    tuned = replace(PROFILES["cpu"], lr=PROFILES["cpu"].lr | {"dora": 3e-3})
    assert Experiment.parse("dora-r16").resolve(tuned).lr == 3e-3
    assert Experiment.parse("rslora-r16").resolve(tuned).lr == tuned.lr["lora"]  # no entry: plain LoRA's
    with pytest.raises(ValueError, match="Unknown experiment 'full@fast'"):
        Experiment.parse("full@fast")


def test_a_scaling_rule_is_a_field_of_the_spec_and_one_run_has_one_name():
    fixed, rs, default = (Experiment.parse(n) for n in ("lora-r4-a32", "rslora-r4-a8", "lora-r4"))
    assert (fixed.scaling_rule, fixed.lora_alpha) == ("alpha / r", 32)
    assert (rs.scaling_rule, rs.lora_alpha) == ("alpha / sqrt(r)", 8)
    assert (default.scaling_rule, default.lora_alpha) == ("alpha = 2r", 8)
    scales = [e.lora_config(6, 0.0).scaling for e in (fixed, rs, default)]
    assert scales == [8.0, 4.0, 2.0]
    # at r = 16 the three rules give the same scale (2): the same run, under one name and one file
    same = {Experiment.parse(n).name for n in ("lora-r16-a32", "rslora-r16-qv-a8", "lora-r16-qv")}
    assert same == {"lora-r16-qv"}
    assert Experiment.parse("lora-r8-layer03").name == Experiment.parse("lora-r8-layer3").name
    for bad in ("lora-r4-a0", "lora-r4@nan", "lora-r4@inf", "lora-r16-n0"):
        with pytest.raises(ValueError, match="Unknown experiment"):
            Experiment.parse(bad)


def test_the_scaling_suite_sweeps_every_rule_and_rank_on_one_grid():
    cpu = PROFILES["cpu"]
    runs = [Experiment.parse(n) for _, n in suites(cpu, 6)["scaling"]]
    assert len(runs) == len({r.name for r in runs}) == (3 * (len(RANKS) - 1) + 1) * len(cpu.scaling_sweep)
    assert {(r.r, r.scaling_rule) for r in runs if r.r != 16} == {
        (r, rule) for r in RANKS if r != 16 for rule in ("alpha = 2r", "alpha / r", "alpha / sqrt(r)")
    }
    assert len(cpu.scaling_sweep) >= 4
    assert math.log10(max(cpu.scaling_sweep) / min(cpu.scaling_sweep)) >= 1.5
    assert all((r.epochs, r.train_examples) == (1, cpu.ablation_train_limit) for r in runs)


def test_a_new_suite_is_one_table_entry(monkeypatch):
    from lora_tutorial.study import experiments

    monkeypatch.setitem(experiments.ABLATIONS, "ffn", ("lora-r4-ffn", "lora-r8-ffn", "lora-r16-ffn"))
    specs = runner.resolve(PROFILES["cpu"], ["ffn"], [0, 1])
    assert [(s.experiment.name, s.seed) for s in specs] == [
        (f"lora-r{r}-ffn-e1-n20000@1e-3", seed) for r in (4, 8, 16) for seed in (0, 1)
    ]
    assert specs[0].experiment.lora_config(6, 0.1).target_modules == experiments.FFN


def test_the_rank_suite_trains_each_rank_at_its_rules_rate():
    rates = {"alpha = 2r": {1: 3e-3, 16: 1e-3}, "alpha / r, alpha = 32": {1: 1e-2}}
    cpu = replace(PROFILES["cpu"], rank_lr=rates)
    runs = {label: Experiment.parse(n).resolve(cpu) for label, n in suites(cpu, 6)["rank"]}
    assert list(runs) == [f"lora-r{r}" for r in RANKS] + [f"lora-r{r}-a32" for r in RANKS if r != 16]
    assert (runs["lora-r1"].lr, runs["lora-r1-a32"].lr, runs["lora-r16"].lr) == (3e-3, 1e-2, 1e-3)
    assert runs["lora-r1-a32"].scaling_rule == "alpha / r"
    assert runs["lora-r1"].alpha is None
    assert runs["lora-r8"].lr == runs["lora-r8-a32"].lr == cpu.lr["lora"]  # no rate chosen: LoRA's
    assert {(e.epochs, e.train_examples) for e in runs.values()} == {(cpu.epochs["lora"], None)}  # full split


def test_suites_state_their_budget():
    cpu = PROFILES["cpu"]
    table = suites(cpu, 6)
    assert [label for label, _ in table["rank-one-rate"]] == [f"lora-r{r}@1e-3" for r in RANKS] + [
        f"lora-r{r}-a32@1e-3" for r in RANKS if r != 16
    ]
    assert {Experiment.parse(n).resolve(cpu).lr for _, n in table["rank-one-rate"]} == {cpu.lr["lora"]}
    assert dict(table["layers"])["lora-r8-upper"] == "lora-r8-qv-upper-e1-n20000"
    assert len(table["layers"]) == 3 + 6
    rates: dict[str, list[float]] = {}
    for _, name in table["sweep"]:
        rates.setdefault(Experiment.parse(name).kind, []).append(Experiment.parse(name).lr)
    for kind in HEADLINE_KINDS:  # at least five rates over at least 1.5 decades
        assert len(rates[kind]) >= 5
        assert math.log10(max(rates[kind]) / min(rates[kind])) >= 1.5
    assert all(len(rates[v]) >= 3 for v in VARIANT_NAMES[1:])
    resolved = {Experiment.parse(n).resolve(cpu).name for _, n in table["variants"] + table["sweep"]}
    variants = {Experiment.parse(n).resolve(cpu).name for _, n in table["variants"]}
    assert (
        variants <= {n for _, n in table["sweep"]} <= resolved
    )  # each variant's run is a point of its sweep
    assert all("-n20000@" in name for _, name in table["sweep"])


def test_loraplus_gives_b_a_larger_learning_rate(tiny):
    from lora_tutorial import LoRAConfig, apply_lora, lora_layers
    from lora_tutorial.train import make_optimizer

    apply_lora(tiny, LoRAConfig(r=2))
    groups = make_optimizer(tiny, TrainConfig(lr=1e-3, lr_ratio_b=16)).param_groups
    b_params = {id(layer.lora_B) for layer in lora_layers(tiny).values()}
    [b_group] = [g for g in groups if {id(p) for p in g["params"]} == b_params]
    assert b_group["lr"] == pytest.approx(16e-3)
    assert all(g["lr"] == pytest.approx(1e-3) for g in groups if g is not b_group)


@pytest.mark.slow
def test_two_processes_match_one(learnable, tmp_path):
    args = [
        "-m",
        "lora_tutorial",
        "run",
        "--profile",
        "smoke",
        "--experiments",
        "full",
        "lora-r2",
        "--seeds",
        "0",
        "--data",
        str(learnable),
        "--no-progress",
    ]
    subprocess.run(
        [sys.executable, *args, "--results", str(tmp_path / "one")], check=True, capture_output=True
    )
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            *args,
            "--results",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("full-e3-n2048@1e-3", "lora-r2-qv-e3-n2048@1e-2"):  # full fine-tuning, and LoRA that learns
        one, two = (
            json.loads((tmp_path / d / "smoke" / f"{name}__seed0.json").read_text()) for d in ("one", "two")
        )
        assert two["provenance"]["num_processes"] == 2
        assert one["provenance"]["num_processes"] == 1
        assert one["metrics"]["validation_accuracy"] >= 0.9
        assert two["metrics"]["validation_accuracy"] == pytest.approx(
            one["metrics"]["validation_accuracy"], abs=1 / 256
        )
        assert two["metrics"]["history"][-1]["validation_loss"] == pytest.approx(
            one["metrics"]["history"][-1]["validation_loss"], rel=1e-2
        )


def test_each_run_stores_its_predictions_in_dataset_order(learnable, tmp_path):
    [record] = runner.run_suite(PROFILES["smoke"], ["lora-r2"], [0], tmp_path, learnable, progress=False)
    preds, labels = record.predictions, record.validation_labels
    assert len(preds) == len(labels) == 256
    assert labels == runner.labels_text(runner.load_sst2(learnable)["validation"]["label"])
    accuracy = sum(p == y for p, y in zip(preds, labels)) / len(labels)
    assert accuracy == record.accuracy
    probs = record.probabilities  # P(positive): the label it predicts, the log-loss it was scored with
    assert [str(int(p > 0.5)) for p in probs] == list(preds)
    log_loss = -sum(math.log(p if y == "1" else 1 - p) for p, y in zip(probs, labels)) / len(labels)
    assert log_loss == pytest.approx(record.metrics["history"][-1]["validation_loss"], rel=1e-5)
    assert record.config["data_sha256"]["validation"] == runner.fingerprint(
        runner.prepare_data(PROFILES["smoke"], learnable)[0]["validation"]
    )


def test_predictions_are_recomputed_from_a_stored_adapter(learnable, tmp_path):
    [record] = runner.run_suite(PROFILES["smoke"], ["lora-r2"], [0], tmp_path, learnable, progress=False)
    path = tmp_path / "smoke" / f"{record.experiment}__seed0.json"
    assert load_results(tmp_path, "smoke")["recomputed"].tolist() == [False]  # stored as it trained
    blank = replace(record, predictions=None, validation_labels=None, probabilities=None)
    path.write_text(json.dumps(blank.to_json()))
    store, smoke = ResultStore("smoke", tmp_path), PROFILES["smoke"]
    assert store.find(spec(smoke, "lora-r2", 0)) is None  # no predictions: not current
    assert runner.recompute_predictions(PROFILES["smoke"], tmp_path, learnable) == [path]
    again = store.find(spec(smoke, "lora-r2", 0))
    assert again.predictions == record.predictions
    assert again.probabilities == pytest.approx(record.probabilities, abs=1e-6)
    assert again.provenance.predictions_recomputed["from"] == record.adapter
    assert again.provenance.predictions_recomputed["added"] == ["predictions", "probabilities"]
    assert load_results(tmp_path, "smoke")["recomputed"].tolist() == [True]  # the tables can tell
    assert runner.recompute_predictions(PROFILES["smoke"], tmp_path, learnable) == []  # nothing left to do
    # a record with predictions but no probabilities (stored before they were) gets them, checked against
    # its own predictions; one whose stored predictions the adapter does not reproduce is left alone
    path.write_text(json.dumps(replace(record, probabilities=None).to_json()))
    assert runner.recompute_predictions(PROFILES["smoke"], tmp_path, learnable) == [path]
    assert store.find(spec(smoke, "lora-r2", 0)).probabilities == pytest.approx(
        record.probabilities, abs=1e-6
    )
    flipped = "".join("1" if c == "0" else "0" for c in record.predictions)
    path.write_text(json.dumps(replace(record, probabilities=None, predictions=flipped).to_json()))
    assert runner.recompute_predictions(PROFILES["smoke"], tmp_path, learnable) == []
    assert store.load(path).probabilities is None


def test_isolated_runs_each_train_in_a_process_of_their_own(learnable, tmp_path, monkeypatch):
    children = []
    monkeypatch.setattr(runner, "run_in_child", lambda run, *a: children.append(run.experiment.name))
    monkeypatch.setattr(runner, "run_one", lambda *a: pytest.fail("trained in the calling process"))
    with pytest.raises(UsageError, match="FileNotFoundError"):  # the stand-in children stored nothing
        runner.run_suite(
            PROFILES["smoke"], ["full", "head"], [0], tmp_path, learnable, progress=False, isolate=True
        )
    assert children == ["full-e3-n2048@1e-3", "head-e3-n2048@1e-2"]


def test_a_run_in_a_process_of_its_own_needs_the_registered_profile(learnable, tmp_path):
    changed = replace(PROFILES["smoke"], batch_size=3)  # the child would look up "smoke" and get another one
    with pytest.raises(UsageError, match="differs from the one registered under that name"):
        runner.run_in_child(spec(changed, "head", 0), tmp_path, learnable, progress=False)


def test_every_linear_layer_at_r16_is_tuned_apart_from_r4():
    cpu = PROFILES["cpu"]
    r16, r4 = (Experiment.parse(f"lora-r{r}-qkvo-ffn-e1-n20000@1e-3") for r in (16, 4))
    assert (r16.sweep_kind, r4.sweep_kind) == ("lora-r16-qkvo-ffn", "lora-qkvo-ffn")
    assert r16.kind == r4.kind == "lora-qkvo-ffn"  # one kind of run; two sweeps
    sweep = {name for _, name in suites(cpu, 6)["sweep"]}
    assert {f"lora-r16-qkvo-ffn-e1-n20000@{lr_text(lr)}" for lr in cpu.sweep["lora-r16-qkvo-ffn"]} <= sweep
    tuned = replace(cpu, lr=cpu.lr | {"lora-r16-qkvo-ffn": 3e-3})
    assert Experiment.parse("lora-r16-qkvo-ffn").resolve(tuned).lr == 3e-3  # its own rate once chosen
    assert Experiment.parse("lora-r4-qkvo-ffn").resolve(tuned).lr == cpu.lr["lora-qkvo-ffn"]
