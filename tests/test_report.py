"""The study chapters' data source: stored results when complete, else a labelled smoke run."""

from dataclasses import replace

from lora_tutorial import runner
from lora_tutorial.report import selection_runs, study_results, summarize


def test_stored_results_are_used_and_summarized(learnable, tmp_path, monkeypatch):
    runner.run_suite("smoke", ["full", "lora-r16"], [0, 1], tmp_path, learnable, progress=False)
    df, shown = study_results(["headline"], "smoke", results=tmp_path, require=("full", "lora-r16"))
    assert shown == "smoke" and len(df) == 4
    table = summarize(df)
    assert list(table.index) == ["full", "lora-r16"] and (table["seeds"] == 2).all()
    assert table.loc["full", "accuracy (%)"] == round(100 * df[df.experiment == "full"].validation_accuracy.mean(), 2)
    assert table.loc["lora-r16", "std"] >= 0 and table.loc["full", "trainable (%)"] == 100
    assert (df.loc[df.method == "lora", "lora_dropout"] == 0.0).all() and df.loc[df.method == "full", "lora_dropout"].isna().all()
    assert (table["epochs"] == 3).all()
    assert ((table["train time (min)"] - 3 * df.groupby("experiment").train_seconds_per_epoch.median() / 60).abs() <= 0.05).all()
    monkeypatch.setitem(runner.PROFILES, "smoke", replace(runner.PROFILES["smoke"], lora_epochs=1))
    df, shown = study_results(["headline"], "smoke", results=tmp_path, require=("full",))
    assert shown == "smoke" and set(df["experiment"]) == {"full"}  # the LoRA runs are stale now


def test_missing_results_fall_back_to_a_smoke_run(learnable, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORA_TUTORIAL_SST2", str(learnable))
    df, shown = study_results(["headline"], "cpu", results=tmp_path)
    assert shown == "smoke" and set(df["experiment"]) == {"full", "lora-r16"}
    assert "No stored cpu results" in capsys.readouterr().out


def test_selection_runs_gather_the_grid_other_rates_stale_and_superseded_runs(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(runner.PROFILES, "smoke", replace(runner.PROFILES["smoke"], epochs=1))
    runner.run_suite("smoke", ["head", "head@1e-2"], [0], tmp_path, learnable, progress=False)
    runner.run_suite("smoke", ["head"], [0], tmp_path, learnable, force=True, progress=False)  # supersedes one
    assert sorted(selection_runs("smoke", tmp_path, ("head",))["experiment"]) == ["head", "head@1e-2"]
    assert len(selection_runs("smoke", tmp_path)) == 0  # by default: the headline experiments only
    assert len(selection_runs("cpu", tmp_path)) == 0
    # The profile moves to head@1e-2's rate, then to 2 epochs: that run is "head" now, and stale.
    monkeypatch.setitem(runner.PROFILES, "smoke", replace(runner.PROFILES["smoke"], epochs=2, lr_head=1e-2))
    runs = selection_runs("smoke", tmp_path, ("head",))
    assert sorted(runs["experiment"]) == ["head", "head@0.003", "head@0.003"] and not runs["git_dirty"].isna().any()
