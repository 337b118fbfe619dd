"""The study chapters' data source: stored results when complete, else a labelled smoke run."""

from dataclasses import replace

from lora_tutorial import runner
from lora_tutorial.experiments import PROFILES
from lora_tutorial.report import selection_runs, study_results, summarize


def test_stored_results_are_used_and_summarized(learnable, tmp_path, monkeypatch):
    monkeypatch.setattr("lora_tutorial.store.CONTENTION_MARGIN", 1e9)  # time every run, however busy the CPU
    runner.run_suite("smoke", ["full", "lora-r16"], [0, 1], tmp_path, learnable, progress=False)
    df, shown = study_results(["headline"], "smoke", results=tmp_path, require=("full", "lora-r16"))
    assert shown == "smoke"
    assert len(df) == 4
    table = summarize(df)
    assert list(table.index) == ["full", "lora-r16"]
    assert (table["seeds"] == 2).all()
    assert table.loc["full", "accuracy (%)"] == round(
        100 * df[df.experiment == "full"].validation_accuracy.mean(), 2
    )
    assert table.loc["full", "trainable (%)"] == 100
    assert (df.loc[df.method == "lora", "lora_dropout"] == 0.0).all()
    assert df.loc[df.method == "full", "lora_dropout"].isna().all()
    assert (table["epochs"] == 3).all()
    expected = 3 * df.groupby("experiment").train_seconds_per_epoch.median() / 60
    assert ((table["train time (min)"] - expected).abs() <= 0.05).all()
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], lora_dropout=0.5))
    df, shown = study_results(["headline"], "smoke", results=tmp_path, require=("full",))
    assert set(df["experiment"]) == {"full"}  # the LoRA runs are stale now


def test_missing_results_fall_back_to_a_smoke_run(learnable, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORA_TUTORIAL_SST2", str(learnable))
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs={"full": 1, "lora": 1}))
    df, shown = study_results(["headline"], "cpu", results=tmp_path)
    assert shown == "smoke"
    assert set(df["experiment"]) == {"full", "lora-r16", "lora-r4-qkvo-ffn"}
    assert "No stored cpu results" in capsys.readouterr().out


def test_selection_runs_are_the_stored_runs_the_suites_do_not_use(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(
        PROFILES, "smoke", replace(PROFILES["smoke"], epochs={"head": 1, "full": 1, "lora": 1})
    )
    runner.run_suite("smoke", ["head", "head@1e-2"], [0], tmp_path, learnable, progress=False)
    runner.run_suite(
        "smoke", ["head"], [0], tmp_path, learnable, force=True, progress=False
    )  # supersedes one
    runs = selection_runs("smoke", tmp_path)
    assert sorted(runs["name"]) == ["head-e1-n2048@1e-2", "head-e1-n2048@3e-3"]
    assert list(runs.sort_values("name")["superseded"]) == [False, True]
    assert len(selection_runs("cpu", tmp_path)) == 0


def test_times_of_runs_that_shared_the_cpu_are_left_out(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs={"full": 1}))
    runner.run_suite("smoke", ["full"], [0, 1], tmp_path, learnable, progress=False)
    monkeypatch.setattr("lora_tutorial.store.CONTENTION_MARGIN", -1e9)  # as if every run had shared it
    df, _ = study_results(["headline"], "smoke", results=tmp_path, require=("full",))
    table = summarize(df)
    assert df["contended"].all()
    assert table.loc["full", "timed"] == 0
    assert table["s / epoch"].isna().all()
    assert table.loc["full", "seeds"] == 2  # accuracy still counts every seed
