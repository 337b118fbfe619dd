"""The study chapters' data source: stored results when complete, else a labelled smoke run."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from lora_tutorial.study import report, runner, stats
from lora_tutorial.study.experiments import (
    HEADLINE_KINDS,
    PROFILES,
    RANKS,
    SCALING_RULES,
    SWEEP_BASES,
    Experiment,
    lr_text,
)
from lora_tutorial.study.records import is_contended
from lora_tutorial.study.report import (
    brief,
    choose,
    peak_contrasts,
    selection_runs,
    study_results,
    summarize,
)
from lora_tutorial.study.report import sweep as sweep_table
from lora_tutorial.study.store import ResultStore


def test_stored_results_are_used_and_summarized(learnable, tmp_path, monkeypatch):
    monkeypatch.setattr("lora_tutorial.study.records.CONTENTION_MARGIN", 1e9)  # time every run, however busy
    runner.run_suite(PROFILES["smoke"], ["full", "lora-r16"], [0, 1], tmp_path, learnable, progress=False)
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
    interval = stats.accuracy(df, "lora-r16")
    assert table.loc["lora-r16", "low"] == round(interval.low, 2)
    assert (
        table.loc["lora-r16", "low"] <= table.loc["lora-r16", "accuracy (%)"] <= table.loc["lora-r16", "high"]
    )
    html = brief(table, "accuracy (%)", "low", "high")._repr_html_()
    assert html.count("<table") == 2  # the columns the text uses, then every column in a dropdown
    assert "trainable params" not in html.split("<details>")[0]
    assert "trainable params" in html.split("<details>")[1]
    with pytest.raises(ValueError, match="its columns are"):
        brief(table, "accuracy")
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
    runner.run_suite(PROFILES["smoke"], ["full", "full@1e-2"], [0], tmp_path, learnable, progress=False)
    runner.run_suite(
        PROFILES["smoke"], ["full"], [0], tmp_path, learnable, force=True, progress=False
    )  # supersedes one
    runs = selection_runs("smoke", tmp_path)  # the headline uses the current "full", not the others
    assert sorted(runs["name"]) == ["full-e1-n2048@1e-2", "full-e1-n2048@1e-3"]
    assert list(runs.sort_values("name")["superseded"]) == [False, True]
    assert len(selection_runs("cpu", tmp_path)) == 0


def test_a_run_made_twice_says_how_many_predictions_changed(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs={"full": 1}))
    for _ in range(3):  # made three times: two superseded copies
        runner.run_suite(PROFILES["smoke"], ["full"], [0], tmp_path, learnable, force=True, progress=False)
    assert report.repeats("smoke", tmp_path)["predictions changed"].tolist() == [0, 0]  # same seed, same CPU
    store = ResultStore("smoke", tmp_path)
    first, second = sorted(p for p, _ in store.records(superseded=True) if "superseded" in p.parts)
    old = store.load(first)
    old.predictions = "".join({"0": "1", "1": "0"}[c] if i < 3 else c for i, c in enumerate(old.predictions))
    store.update(first, old)
    other = store.load(second)
    other.config["hyperparameters"]["lr"] *= 2  # not the same run: not a repeat
    store.update(second, other)
    [row] = report.repeats("smoke", tmp_path).to_dict("records")
    assert (row["name"], row["seed"], row["predictions changed"]) == ("full-e1-n2048@1e-3", 0, 3)
    assert row["first (%)"] == 100 * old.accuracy


def test_times_of_runs_that_shared_the_cpu_are_left_out(learnable, tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs={"full": 1}))
    runner.run_suite(PROFILES["smoke"], ["full"], [0, 1], tmp_path, learnable, progress=False)
    monkeypatch.setattr(
        "lora_tutorial.study.records.CONTENTION_MARGIN", -1e9
    )  # as if every run had shared it
    df, _ = study_results(["headline"], "smoke", results=tmp_path, require=("full",))
    table = summarize(df)
    assert df["contended"].all()
    assert table.loc["full", "timed"] == 0
    assert table["s / epoch"].isna().all()
    assert table.loc["full", "seeds"] == 2  # accuracy still counts every seed
    monkeypatch.setattr("lora_tutorial.study.records.CONTENTION_MARGIN", 0.5)
    _, record = ResultStore("smoke", tmp_path).records()[0]
    record.timing.mean_load_average = 3.5
    record.provenance.machine.update(cpus=4, torch_threads=4)
    assert not is_contended(record)  # a machine busy with the run's own threads only...
    record.provenance.machine["torch_threads"] = 2
    assert is_contended(record)  # ...but the run was held to fewer threads than cores


def test_one_rule_chooses_each_methods_rate(learnable, tmp_path, monkeypatch):
    rates = {"full": (1e-5, 1e-3, 1e-1), "rslora": (1e-3, 1e-2)}
    monkeypatch.setitem(
        PROFILES,
        "smoke",
        replace(PROFILES["smoke"], sweep=rates, ablation_train_limit=256, ablation_epochs=1),
    )
    runner.run_suite(PROFILES["smoke"], ["sweep"], [0], tmp_path, learnable, progress=False)
    first, variant = choose("smoke", tmp_path)
    assert variant.kind == "rslora"
    table = sweep_table("smoke", tmp_path)
    table = table[table["kind"] == "full"]
    assert first.lr == table.loc[table["accuracy (%)"].idxmax(), "lr"]
    assert first.accuracy == table["accuracy (%)"].max()
    assert first.at_edge == (first.lr in (1e-5, 1e-1))
    contrasts = [c for c in peak_contrasts("smoke", tmp_path) if c.kind == "full"]  # best vs neighbours
    i = rates["full"].index(first.lr)
    assert [c.other for c in contrasts] == [*rates["full"][max(i - 1, 0) : i], *rates["full"][i + 1 : i + 2]]
    for c in contrasts:
        acc = table.set_index("lr")["accuracy (%)"]
        assert abs(c.difference.mean - (acc[c.best] - acc[c.other])) < 1e-6
    assert len(table) == 3
    other = next(lr for lr in rates["full"] if lr != first.lr)  # a seed outside the sweep's, made for a suite
    runner.run_suite(
        PROFILES["smoke"], [f"full-e1-n256@{lr_text(other)}"], [2], tmp_path, learnable, progress=False
    )
    assert sweep_table("smoke", tmp_path)["seeds"].max() == 1
    assert choose("smoke", tmp_path)[0] == first


def test_a_folder_without_results_gives_empty_sweeps_not_errors(tmp_path):
    """A chapter run away from the repository's ``results/`` prints its hint instead of failing."""
    assert not len(sweep_table("cpu", tmp_path))
    assert peak_contrasts("cpu", tmp_path) == []
    assert choose("cpu", tmp_path) == []


def test_the_cpu_profile_uses_what_its_stored_sweeps_chose():
    """The study's settings are the rule's choices on the stored runs, not typed in beside them."""
    cpu = PROFILES["cpu"]
    for c in choose("cpu"):
        if c.at_edge:  # undecided until the sweep is widened
            continue
        exp = Experiment.parse(SWEEP_BASES[c.kind]).resolve(cpu)
        assert exp.lr == c.lr, f"{c.kind}: the profile trains at {exp.lr:g}, the sweeps chose {c.lr:g}"
    complete = [c for c in report.rank_rates("cpu") if c.seeds >= len(cpu.sweep_seeds) and not c.at_edge]
    assert complete, "the stored scaling sweep chose no rank's rate"
    for c in complete:
        rate = cpu.rank_lr.get(c.rule, {}).get(c.r)
        assert rate == c.lr, f"{c.rule}, r = {c.r}: the profile trains at {rate}, the sweep chose {c.lr:g}"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_headline_methods_train_equal_epochs(profile):
    """A gap between the headline's methods is the method's, not a difference in training length."""
    prof = PROFILES[profile]
    epochs = {kind: Experiment.parse(SWEEP_BASES[kind]).resolve(prof).epochs for kind in HEADLINE_KINDS}
    assert len(set(epochs.values())) == 1, epochs


def test_the_scaling_table_finds_each_rules_best_rate_and_its_flat_region():
    labels = "".join(np.random.default_rng(0).choice(["0", "1"], 400))

    def right_on(first: int, last: int) -> str:  # predictions right on sentences first..last-1 only
        return "".join(y if first <= i < last else str(1 - int(y)) for i, y in enumerate(labels))

    # 1e-3 best (90 %); 1e-2 two sentences behind, disagreeing on six (not detectably worse); 1e-4 at 70 %
    runs = {1e-4: right_on(0, 280), 1e-3: right_on(0, 360), 1e-2: right_on(4, 362)}
    df = pd.DataFrame(
        [
            {
                "name": f"{base}-e1-n20000@{lr_text(lr)}",
                "seed": seed,
                "validation_labels": labels,
                "predictions": p,
            }
            for base in ("lora-r4-qv", "lora-r4-qv-a32", "lora-r16-qv")
            for lr, p in runs.items()
            for seed in (0, 1)
        ]
    )
    df["validation_accuracy"] = [
        sum(p == y for p, y in zip(row, labels)) / len(labels) for row in df["predictions"]
    ]
    table = report.scaling_table(df)
    best = table[table["best"]]
    assert set(zip(best["rule"], best["r"])) == {
        (rule, r) for rule in SCALING_RULES for r in (4, 16) if r == 16 or "sqrt" not in rule
    }  # r = 16 counts for every rule; rsLoRA has no r = 4 runs here
    assert set(best["lr"]) == {1e-3}
    assert not best["at the edge"].any()
    flat = table[(table["rule"] == "alpha = 2r") & (table["r"] == 4)].set_index("lr")["flat"]
    assert flat.to_dict() == {1e-4: False, 1e-3: True, 1e-2: True}
    assert report.rates_for_every_rank(table)["alpha = 2r"] == [1e-3, 1e-2]
    worse = {**runs, 1e-2: right_on(0, 200)}  # at r = 8, 1e-2 falls far behind: only 1e-3 serves every rank
    r8 = pd.DataFrame(
        [
            {
                "name": f"lora-r8-qv-e1-n20000@{lr_text(lr)}",
                "seed": seed,
                "validation_labels": labels,
                "predictions": p,
            }
            for lr, p in worse.items()
            for seed in (0, 1)
        ]
    )
    r8["validation_accuracy"] = [
        sum(p == y for p, y in zip(row, labels)) / len(labels) for row in r8["predictions"]
    ]
    kept = report.rates_for_every_rank(report.scaling_table(pd.concat([df, r8])))
    assert kept["alpha = 2r"] == [1e-3]
    assert kept["alpha / r, alpha = 32"] == [1e-3, 1e-2]  # its r = 4 and r = 16 only


def test_the_rank_table_puts_the_shared_r16_run_on_both_curves():
    rows = [
        {
            "experiment": label,
            "seed": 0,
            "validation_accuracy": acc,
            "trainable_params": 1000,
            "total_params": 10_000,
            "epochs": 2,
            "contended": False,
            "train_seconds_per_epoch": 60.0,
            "peak_memory_bytes": 2**30,
            "lr": 1e-3,
            "train_examples": 100,
            "predictions": None,
        }
        for label, acc in (("full", 0.9), ("lora-r1", 0.8), ("lora-r16", 0.85), ("lora-r1-a32", 0.82))
    ]
    table = report.rank_table(pd.DataFrame(rows))
    assert list(zip(table["rule"], table["r"], table.index)) == [
        ("alpha = 2r", 1, "lora-r1"),
        ("alpha = 2r", 16, "lora-r16"),
        ("alpha / r, alpha = 32", 1, "lora-r1-a32"),
        ("alpha / r, alpha = 32", 16, "lora-r16"),
    ]  # full fine-tuning is on neither curve
    assert table.loc["lora-r1-a32", "accuracy (%)"] == 82.0


@pytest.mark.parametrize(
    "name, says",
    [
        ("full", "full fine-tuning"),
        ("lora-r16", "LoRA r = 16, query and value"),
        ("lora-r8-qv-layer3-e1-n20000@1e-3", "LoRA r = 8, query and value, layer 3"),
        ("lora-r8-upper", "LoRA r = 8, query and value, upper half"),
        ("lora-r4-qkvo-ffn", "LoRA r = 4, every linear layer"),
        ("rslora-r4-qv-a8@1e-3", "rsLoRA r = 4, query and value, α = 8"),
        ("lora-qkvo-ffn", "LoRA r = 4, every linear layer"),  # a sweep's kind
        ("loraplus", "LoRA+ r = 16, query and value"),
    ],
)
def test_every_experiment_has_a_readers_label_without_its_id(name, says):
    assert report.label(name) == says


def test_a_table_reads_as_labels_and_numbers_a_reader_reads():
    table = pd.DataFrame(
        {
            "seeds": [3, 3],
            "accuracy (%)": [84.371, 83.0],
            "low": [np.nan, 80.0],
            "trainable params": [222338.0, 67349.0],
            "best lr": [1e-3, 2.5e-5],
        },
        index=["lora-r8-qv", "full"],
    )
    shown = report.readable(table)
    assert list(shown.index) == ["LoRA r = 8, query and value", "full fine-tuning"]
    assert list(shown["accuracy (%)"]) == ["84.37", "83.00"]
    assert list(shown["low"]) == ["—", "80.00"]
    assert list(shown["trainable params"]) == ["222,338", "67,349"]
    assert list(shown["best lr"]) == ["1e-3", "2.5e-5"]
    assert list(report.readable(pd.DataFrame({"x": [1.5]}, index=["not an experiment"])).index) == [
        "not an experiment"
    ]


def test_a_brief_table_says_why_a_value_is_missing():
    table = pd.DataFrame(
        {"accuracy (%)": [84.0, 83.0], "low": [82.0, np.nan], "s / epoch": [np.nan, 120.5]},
        index=["lora-r8-lower", "full"],
    )
    html = report.brief(table, "accuracy (%)", "low", "s / epoch")._repr_html_()
    assert "every run of that setting shared the CPU" in html
    assert "not every run of that setting stores its predictions" in html
    assert "nan" not in html.lower()
    assert not report.brief(table, "accuracy (%)").notes()


def test_the_smallest_rank_not_behind_is_where_the_curve_stops_falling_behind():
    labels = "".join(np.random.default_rng(1).choice(["0", "1"], 400))

    def right_on(first: int, last: int) -> str:
        return "".join(y if first <= i < last else str(1 - int(y)) for i, y in enumerate(labels))

    def runs(right: dict[int, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        df = pd.DataFrame(
            [
                {"experiment": f"lora-r{r}", "seed": seed, "validation_labels": labels, "predictions": p}
                for r, p in right.items()
                for seed in (0, 1)
            ]
        )
        return df, pd.DataFrame({"r": list(right)}, index=[f"lora-r{r}" for r in right])

    # r = 1 far behind, r = 4 two sentences behind r = 16 (not detectably), r = 32 as r = 16
    df, curve = runs({1: right_on(0, 280), 4: right_on(2, 360), 16: right_on(0, 360), 32: right_on(0, 360)})
    assert report.smallest_rank_not_behind(df, curve) == 4
    df, curve = runs({1: right_on(0, 360), 16: right_on(0, 360), 32: right_on(0, 250)})  # r = 32 behind
    assert report.smallest_rank_not_behind(df, curve) is None


def test_the_seeds_note_names_each_method_short_of_seeds():
    assert report.seeds_note({"full": 5, "lora-r16": 3}) == ""
    note = report.seeds_note({"full": 5, "lora-r16-qkvo-ffn": 1, "lora-r4": 2})
    assert note.startswith("Still training: LoRA r = 16, every linear layer has 1 seed so far, LoRA r = 4")
    assert "provisional" in note
    assert "full fine-tuning" not in note


def test_the_rank_advice_says_what_each_rule_and_curve_showed():
    both = {"alpha = 2r": [1e-3], "alpha / r, alpha = 32": [1e-3, 3e-3]}
    text = report.rank_advice(both, {"alpha = 2r": 1, "alpha / r, alpha = 32": 1})
    assert text.startswith(
        "When you change r, you can keep the learning rate: under either rule one rate (α = 2r: 1e-3; "
        "α/r, α = 32: 1e-3 or 3e-3)"
    )
    assert text.count("no rank was detectably behind r = 16") == 2
    assert text.endswith("Under either rule, even r = 1 was not detectably behind r = 16 here.")
    text = report.rank_advice({**both, "alpha = 2r": []}, {"alpha = 2r": 8, "alpha / r, alpha = 32": None})
    assert "retune it under α = 2r" in text
    assert "keep the learning rate under the rule where one served every rank (α/r, α = 32" in text
    assert "under α = 2r, r = 4 was detectably behind r = 16 and no rank from r = 8 up was" in text
    assert text.endswith("under α/r, α = 32, a rank above r = 16 was detectably behind it.")
    text = report.rank_advice({}, {"alpha = 2r": 1, "alpha / r, alpha = 32": 4})
    assert "under neither rule did one rate serve every rank" in text
    assert "under α/r, α = 32, r = 1 was detectably behind r = 16 and no rank from r = 4 up was" in text
    assert text.endswith("start from r = 4 under either rule; a smaller rank needs a comparison of its own.")
    assert "On the full budget" not in text  # no rank retuned: nothing to say of it


def test_the_rank_advice_says_whether_retuning_paid_off_on_the_full_budget():
    rules = ("alpha = 2r", "alpha = 2r", "alpha / r, alpha = 32")

    def advice(*diffs, shared=None):
        retuned = [report.Retuned(rule, r, 3e-3, 1e-3, d) for rule, r, d in zip(rules, (1, 4, 32), diffs)]
        both = {"alpha = 2r": [1e-3], "alpha / r, alpha = 32": [1e-3, 3e-3]}
        return report.rank_advice(shared or both, {"alpha = 2r": 1, "alpha / r, alpha = 32": None}, retuned)

    zero, low, high = stats.Interval(0.1, -1, 1), stats.Interval(-6, -8, -4), stats.Interval(2, 0.5, 3.5)
    text = advice(zero, zero, zero)
    assert text.endswith("no rank's own rate was detectably better or worse than the one rate, 1e-3.")
    text = advice(zero, zero, low)
    assert text.index("Each rank at its own rate") < text.index("On the full budget")
    assert "r = 32 under α/r, α = 32 at its own rate, 3e-3, fell detectably behind the one rate, 1e-3" in text
    assert text.endswith("keep 1e-3: on the full budget it was nowhere detectably behind a rank's own rate.")
    assert "keep 1e-3" not in advice(
        zero, zero, low, shared={"alpha = 2r": [3e-3], "alpha / r, alpha = 32": []}
    )
    text = advice(zero, high, low)
    assert "r = 4 under α = 2r at its own rate, 3e-3, beat the one rate, 1e-3, detectably." in text
    assert "keep 1e-3" not in text
    assert "detectably behind the one rate" not in advice(stats.Interval(-1, -2, 0), zero, zero)  # touches 0
    text = report.rank_advice(
        {}, {"alpha = 2r": 4, "alpha / r, alpha = 32": 4}, [report.Retuned("alpha = 2r", 1, 3e-3, 1e-3, zero)]
    )
    assert (
        "start from r = 4 under either rule; a smaller rank needs a comparison of its own. On the full"
        in text
    )


@pytest.mark.parametrize(
    ("suite", "seeds"), [("headline", 5), ("capacity", 3), ("rank", 3), ("rank-one-rate", 3)]
)
def test_the_stored_headline_capacity_and_rank_runs_are_complete(suite, seeds):
    """Every method of the study's headline, capacity and rank suites (at their own rates and at the one
    rate): its seeds, all at the same epochs, each run with 872 predictions and probabilities and its
    validation curve after every epoch."""
    df, profile = report.study_results([suite], "cpu")
    assert profile == "cpu"
    assert set(df["experiment"]) == set(report.suite_labels("cpu", [suite]).values())
    for label, runs in df.groupby("experiment"):
        assert len(runs) >= seeds, f"{label}: {len(runs)} seeds"
        assert all(len(p) == 872 for p in runs["probabilities"]), f"{label}: a run lacks probabilities"
        assert all(len(h) == e for h, e in zip(runs["history"], runs["epochs"])), f"{label}: no curve"
    assert df["epochs"].nunique() == 1


def test_the_stored_scaling_sweep_is_complete_and_peaks_inside():
    """Every rule and rank of the study's scaling sweep: at least four rates over 1.5 decades, two seeds
    each, and the best rate strictly inside its grid."""
    table = report.scaling_sweep("cpu")
    for (rule, r), g in table.groupby(["rule", "r"]):
        assert len(g) >= 4, f"{rule}, r = {r}: {len(g)} rates"
        assert np.log10(g["lr"].max() / g["lr"].min()) >= 1.5
        assert (g["seeds"] >= 2).all(), f"{rule}, r = {r}: a rate with one seed"
        assert not g["at the edge"].any(), f"{rule}, r = {r}: the best rate is at the edge: widen the grid"
    assert {(rule, r) for rule, r in zip(table["rule"], table["r"])} == {
        (rule, r) for rule in SCALING_RULES for r in RANKS
    }
