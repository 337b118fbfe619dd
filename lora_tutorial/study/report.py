"""From stored results to the book's tables: one place that decides what a chapter shows."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from datasets.utils.logging import disable_progress_bar

from ..errors import UsageError
from ..models import layer_count
from ..plotting import book_style
from . import stats
from .experiments import (
    PROFILES,
    RANK_RULES,
    RANKS,
    SCALING_RULES,
    SWEEP_BASES,
    Experiment,
    lr_text,
    suites,
)
from .records import is_contended, is_stale
from .runner import run_suite
from .store import ResultStore

PROFILE_ENV = "LORA_TUTORIAL_PROFILE"


def counted(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless one: ``counted(3, "seed") == "3 seeds"``."""
    return f"{n} {noun}{'s' * (n != 1)}"


def setup_chapter() -> str:
    """What every chapter that trains or reads results starts with: the book's figure style, no progress bars
    or third-party deprecation warnings in the page, and the profile whose stored results it shows
    (``$LORA_TUTORIAL_PROFILE``, default ``cpu``)."""
    book_style()
    disable_progress_bar()
    # peft asks transformers for a deprecated attribute: a warning about their code, not the chapter's
    warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
    return os.environ.get(PROFILE_ENV, "cpu")


VARIANT_LABELS = {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA", "loraplus": "LoRA+", "pissa": "PiSSA"}
#: A reader's label for each scaling rule of ``SCALING_RULES``.
RULE_LABELS = {
    "alpha = 2r": "α = 2r",
    "alpha / r, alpha = 32": "α/r, α = 32",
    "alpha / sqrt(r), alpha = 8": "α/√r, α = 8",
}
TARGET_LABELS = {
    "q": "query",
    "v": "value",
    "qv": "query and value",
    "qkvo": "query, key, value and output",
    "qkvo-ffn": "every linear layer",
    "ffn": "the feed-forward layers",
}


def label(name: str) -> str:
    """A reader's label for an experiment (a name, a suite's short name, or a sweep's kind):
    ``lora-r8-qv-layer3`` is "LoRA r = 8, query and value, layer 3". Rates, epochs and budgets are left
    out: a table or axis says them."""
    if name in SWEEP_BASES and name not in ("full",):
        name = SWEEP_BASES[name]
    exp = Experiment.parse(name)
    if exp.method != "lora":
        return {"full": "full fine-tuning", "head": "head only"}[exp.method]
    parts = [f"{VARIANT_LABELS[exp.prefix]} r = {exp.r}", TARGET_LABELS[exp.target]]
    if exp.layers != "all":
        parts.append(f"layer {exp.layers}" if isinstance(exp.layers, int) else f"{exp.layers} half")
    if exp.alpha is not None:
        parts.append(f"α = {exp.alpha:g}")
    return ", ".join(parts)


def seeds_note(seeds: dict[str, int], wanted: int = 3) -> str:
    """A note naming each experiment (label: its seeds so far) with fewer than ``wanted`` seeds, saying
    that sentences resting on them are provisional; empty when every one has enough."""
    few = {label(name): k for name, k in seeds.items() if k < wanted}
    if not few:
        return ""
    return (
        "Still training: "
        + ", ".join(f"{name} has {counted(k, 'seed')} so far" for name, k in few.items())
        + ". An interval can only resample the seeds a method has, so with fewer than "
        f"{wanted} it leaves out most of that method's seed-to-seed spread, and these sentences are "
        "provisional until the rest are in."
    )


def suite_labels(profile: str, names: list[str]) -> dict[str, str]:
    """The runs of some suites of a profile: ``{resolved experiment name: the label the suite gives it}``."""
    prof = PROFILES[profile]
    table = suites(prof, layer_count(prof.model))
    return {Experiment.parse(n).resolve(prof).name: label for s in names for label, n in table[s]}


def result_rows(profile_name: str, results: str | Path | None = None, superseded: bool = False) -> list[dict]:
    """Every stored run of a profile as a flat dict (a results table's rows). ``experiment`` is the short
    name a suite of the profile uses for the run (``lora-r16``) where there is one, else its full name;
    ``current`` says whether it was made with the profile's fixed settings and not replaced, ``used``
    whether the profile's suites use it (the others chose settings or were earlier trials), ``contended``
    whether other work shared the CPU while it trained (its times are not the machine's)."""
    store = ResultStore(profile_name, results)
    profile = PROFILES.get(profile_name)
    labels = {}
    if profile is not None:
        for pairs in suites(profile, layer_count(profile.model)).values():
            for label, name in pairs:
                labels.setdefault(Experiment.parse(name).resolve(profile).name, label)
    rows = []
    for path, r in store.records(superseded):
        hp = r.config["hyperparameters"]
        old = "superseded" in path.relative_to(store.folder).parts
        current = bool(profile) and not old and not is_stale(r, profile)
        rows.append(
            {
                **{
                    k: v for k, v in r.config.items() if k not in ("hyperparameters", "experiment", "profile")
                },
                "experiment": labels.get(r.experiment, r.experiment),
                "name": r.experiment,
                # records made before the field existed: their name states the rule
                "scaling_rule": r.config.get("scaling_rule") or Experiment.parse(r.experiment).scaling_rule,
                "profile": r.profile,
                "lr": hp["lr"],
                "epochs": hp["epochs"],
                "lora_dropout": hp.get("lora_dropout"),
                "validation_accuracy": r.accuracy,
                "history": r.metrics.get("history", []),  # validation accuracy and loss after each epoch
                "trainable_params": r.params.trainable,
                "total_params": r.params.total,
                "lora_params": r.params.lora,
                "train_seconds_per_epoch": r.timing.train_seconds_per_epoch,
                "examples_per_second": r.timing.examples_per_second,
                "run_seconds": r.timing.run_seconds,
                "mean_load_average": r.timing.mean_load_average,
                "contended": is_contended(r),
                "peak_memory_bytes": r.memory.peak_bytes,
                "memory_baseline_bytes": r.memory.baseline_bytes,
                "device": r.provenance.device,
                "cpus": r.provenance.machine.get("cpus"),
                "torch": r.provenance.versions.get("torch"),
                "git_commit": r.provenance.git_commit,
                "git_dirty": r.provenance.git_dirty,
                "current": current,
                "used": current and r.experiment in labels,
                "superseded": old,
                "predictions": r.predictions,
                "validation_labels": r.validation_labels,
                "probabilities": r.probabilities,
                "recomputed": r.provenance.predictions_recomputed is not None,  # added later from its adapter
                "adapter": str((path.parent / r.adapter).resolve()) if r.adapter else None,
                "file": str(path),
            }
        )
    return rows


def load_results(
    results: str | Path | None = None, profile: str = "cpu", superseded: bool = False
) -> pd.DataFrame:
    """A profile's stored runs as one DataFrame, a row per run (see :func:`result_rows`)."""
    return pd.DataFrame(result_rows(profile, results, superseded))


def _labelled(df: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    if not len(df):
        return df
    df = df[df["current"] & df["name"].isin(labels)].copy()
    df["experiment"] = df["name"].map(labels)
    return df


def study_results(
    names: list[str],
    profile: str = "cpu",
    seeds: tuple[int, ...] = (0,),
    results: str | Path | None = None,
    require: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, str]:
    """Stored, current results of ``profile`` for the suites ``names``, labelled as the suites name them.
    If none are stored (or one named in ``require`` is missing), runs the same suites in the smoke profile
    (seconds) so that the chapter still executes, and says so."""
    labels = suite_labels(profile, names)
    df = _labelled(load_results(results, profile), labels)
    if len(df) and set(require) <= set(df["experiment"]):
        missing = sorted(n for n, label in labels.items() if label not in set(df["experiment"]))
        if missing:
            print(
                f"Not yet run in the {profile} profile: {', '.join(missing)}. Produce them with\n"
                f"  python -m lora_tutorial run --profile {profile} --experiments {' '.join(missing)}"
            )
        return df, profile
    print(
        f"No stored {profile} results for {names}; produce them with\n"
        f"  python -m lora_tutorial run --profile {profile} --experiments {' '.join(names)}\n"
        "Showing a smoke-profile run instead (a tiny random BERT: the numbers mean nothing)."
    )
    folder = tempfile.mkdtemp()
    run_suite(PROFILES["smoke"], names, list(seeds), folder, progress=False)
    return _labelled(load_results(folder, "smoke"), suite_labels("smoke", names)), "smoke"


def selection_runs(profile: str = "cpu", results: str | Path | None = None) -> pd.DataFrame:
    """The stored runs that chose a profile's settings or were earlier trials: every run, superseded ones
    included, that the profile's suites do not use."""
    runs = load_results(results, profile, superseded=True)
    return runs[~runs["used"]].reset_index(drop=True) if len(runs) else runs


def repeats(profile: str = "cpu", results: str | Path | None = None) -> pd.DataFrame:
    """Every run made twice with the same hyper-parameters and seed, both times with its validation
    predictions: a row per current record and each of its superseded copies, with its settings, both
    accuracies (%), how many predictions changed and each run's thread count (the order of float sums
    depends on it)."""
    store = ResultStore(profile, results)
    runs = store.records(superseded=True)  # the current ones lie in the folder, the superseded below it
    current = {(r.experiment, r.seed): r for path, r in runs if path.parent == store.folder}
    rows = []
    for path, old in runs:
        new = current.get((old.experiment, old.seed))
        if path.parent == store.folder or new is None:
            continue
        if not (old.predictions and new.predictions) or old.validation_labels != new.validation_labels:
            continue
        if old.config["hyperparameters"] != new.config["hyperparameters"]:
            continue
        rows.append(
            {
                "name": new.experiment,
                "lr": new.config["hyperparameters"]["lr"],
                "epochs": new.config["hyperparameters"]["epochs"],
                "train examples": new.config["train_examples"],
                "seed": new.seed,
                "first (%)": 100 * old.accuracy,
                "second (%)": 100 * new.accuracy,
                "predictions changed": sum(a != b for a, b in zip(old.predictions, new.predictions)),
                "threads": ", ".join(str(r.provenance.machine.get("torch_threads")) for r in (old, new)),
            }
        )
    columns = ["name", "lr", "epochs", "train examples", "seed", "first (%)", "second (%)"]
    columns += ["predictions changed", "threads"]
    table = pd.DataFrame(rows, columns=columns)
    table["kind"] = table["name"].str.split("@").str[0]  # the name without its rate: a kind's rates in order
    return table.sort_values(["kind", "lr", "seed"]).drop(columns="kind").reset_index(drop=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: accuracy mean, std and 95 % interval over seeds (``low``, ``high``: seeds and
    sentences resampled; empty while a run lacks its predictions), parameters, and the median time and
    memory over the seeds whose runs had the CPU to themselves (``timed``; see ``records.is_contended``)."""
    g = df.groupby("experiment", sort=False)
    timed = df[~df["contended"]].groupby("experiment", sort=False)
    out = pd.DataFrame(
        {
            "seeds": g.size(),
            "accuracy (%)": 100 * g["validation_accuracy"].mean(),
            "std": 100 * g["validation_accuracy"].std(ddof=1),
            "low": float("nan"),
            "high": float("nan"),
            "trainable params": g["trainable_params"].first(),
            "trainable (%)": 100 * g["trainable_params"].first() / g["total_params"].first(),
            "epochs": g["epochs"].first(),
            "timed": timed.size().reindex(g.size().index, fill_value=0),
            "s / epoch": timed["train_seconds_per_epoch"].median(),
            "train time (min)": g["epochs"].first() * timed["train_seconds_per_epoch"].median() / 60,
            "peak memory (GiB)": timed["peak_memory_bytes"].median() / 2**30,
            "lr": g["lr"].first(),
            "train examples": g["train_examples"].first(),
        }
    )
    scored = [e for e, runs in g if runs["predictions"].notna().all()]
    if scored:
        out.loc[scored, ["low", "high"]] = stats.summary_table(df, scored)[["low", "high"]].to_numpy()
    return out.round(
        {
            "accuracy (%)": 2,
            "std": 2,
            "low": 2,
            "high": 2,
            "trainable (%)": 3,
            "s / epoch": 0,
            "train time (min)": 1,
            "peak memory (GiB)": 2,
        }
    )


@dataclass(frozen=True)
class Brief:
    """A table shown by the columns the text discusses, with all of its columns one click away; as a
    reader reads it (see :func:`readable`)."""

    table: pd.DataFrame
    columns: tuple[str, ...]

    def _repr_html_(self) -> str:
        shown = readable(self.table)
        short, full = shown[list(self.columns)]._repr_html_(), shown._repr_html_()
        notes = "".join(f"<p>{n}</p>" for n in self.notes())
        return f"{short}{notes}<details><summary>All columns</summary>{full}</details>"

    def notes(self) -> list[str]:
        """Why a shown column has a dash: the reason for each kind of missing value."""
        missing = [c for c in self.columns if self.table[c].isna().any()]
        reasons = []
        if any(c in MISSING_TIME for c in missing):
            reasons.append(
                "— in a time or memory column: every run of that setting shared the CPU with other work, so "
                "none of them measured what the machine can do."
            )
        if any(c in ("low", "high") for c in missing):
            reasons.append("— in low or high: not every run of that setting stores its predictions.")
        return reasons

    def __repr__(self) -> str:
        return repr(readable(self.table)[list(self.columns)])


MISSING_TIME = ("s / epoch", "train time (min)", "peak memory (GiB)")


def readable(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """``table`` as a reader reads it: experiments by their labels, learning rates as names write them,
    counts as integers with thousands separators, other numbers to ``digits`` decimals, a missing value as
    a dash."""
    out = table.copy()
    try:
        out.index = [label(n) for n in out.index]
    except (UsageError, TypeError, KeyError):  # an index of something else than experiment names
        pass
    for column in out.columns:
        values = out[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            out[column] = values.map(lambda v: "—" if v is None or (isinstance(v, float) and v != v) else v)
            continue
        if column == "lr" or str(column).endswith(" lr"):  # a learning rate as a name writes it: 1e-3
            out[column] = values.map(lambda v: "—" if pd.isna(v) else lr_text(v))
            continue
        known = values.dropna()
        # counts (parameters, seeds, examples): integers, or whole floats of which one is at least 100
        whole = values.dtype.kind in "iu" or (
            len(known) > 0 and known.map(float.is_integer).all() and known.abs().max() >= 100
        )
        out[column] = values.map(
            lambda v, whole=whole: "—" if pd.isna(v) else f"{int(v):,}" if whole else f"{v:,.{digits}f}"
        )
    return out


def brief(table: pd.DataFrame, *columns: str) -> Brief:
    """Show ``table`` by ``columns`` (those the text uses) and the rest in a dropdown."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"No column {missing} in the table; its columns are {list(table.columns)}.")
    return Brief(table, columns)


def _compared_runs(profile: str, results: str | Path | None) -> pd.DataFrame:
    """The stored runs the sweeps compare: current, with predictions, on the profile's
    sweep seeds (a run of the same setting with another seed, made for a suite, does not tip a comparison)."""
    df = load_results(results, profile)
    if not len(df):
        return df
    return df[df["current"] & df["predictions"].notna() & df["seed"].isin(PROFILES[profile].sweep_seeds)]


def _swept(runs: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Those of ``runs`` that are points of the profile's learning-rate sweeps."""
    return runs[runs["name"].isin(suite_labels(profile, ["sweep"]))] if len(runs) else runs


def _sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per kind and rate of the sweep runs ``runs``: seeds, mean accuracy and its interval."""
    if not len(runs):
        return pd.DataFrame()
    rows = []
    for name, group in runs.groupby("name"):
        exp, interval = Experiment.parse(name), stats.accuracy(group.assign(experiment=name), name)
        rows.append(
            {
                "kind": exp.sweep_kind,
                "lr": exp.lr,
                "seeds": len(group),
                "accuracy (%)": interval.mean,
                "low": interval.low,
                "high": interval.high,
            }
        )
    return pd.DataFrame(rows).sort_values(["kind", "lr"]).reset_index(drop=True)


def sweep(profile: str = "cpu", results: str | Path | None = None) -> pd.DataFrame:
    """The learning-rate sweeps, one row per kind of experiment (``Experiment.kind``) and rate: seeds,
    mean validation accuracy and its 95 % interval (points), from the runs on the profile's sweep seeds."""
    return _sweep_table(_swept(_compared_runs(profile, results), profile))


def best_rates(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind: the rate with the highest mean accuracy, whether it lies at the edge of the sweep (then the
    sweep must be widened before it is trusted), and its ratio to full fine-tuning's best rate."""
    rows = {}
    for kind, g in table.groupby("kind"):
        best = g.loc[g["accuracy (%)"].idxmax()]
        rows[kind] = {
            "best lr": best["lr"],
            "accuracy (%)": best["accuracy (%)"],
            "seeds": best["seeds"],
            "at the edge": best["lr"] in (g["lr"].min(), g["lr"].max()),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    if "full" in out.index:
        out["over full's"] = out["best lr"] / out.loc["full", "best lr"]
    return out


def scaling_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The scaling rules' sweeps (``runs``: rows of a results table), one row per rule, rank and rate:
    seeds, mean accuracy and its interval, and whether the rate is the rule's best at that rank or, paired
    on the validation sentences, not detectably worse (``flat``: the region near the peak). A run at
    r = 16, where the three rules give the same scale, counts for each."""
    rows = []
    for label, template in SCALING_RULES.items():
        for r in RANKS:
            rule = Experiment.parse(template.format(r=r)).scaling_rule
            mine = runs[
                [
                    Experiment.parse(n).r == r and Experiment.parse(n).scaling_rule == rule
                    for n in runs["name"]
                ]
            ]
            if not len(mine):
                continue
            mine = mine.assign(experiment=mine["name"])
            means = {n: 100 * g["validation_accuracy"].mean() for n, g in mine.groupby("name")}
            best = max(means, key=means.get)
            rates = sorted(Experiment.parse(n).lr for n in means)
            for name in means:
                i = stats.accuracy(mine, name)
                lr = Experiment.parse(name).lr
                rows.append(
                    {
                        "rule": label,
                        "r": r,
                        "lr": lr,
                        "seeds": len(i.seeds),
                        "accuracy (%)": i.mean,
                        "low": i.low,
                        "high": i.high,
                        "best": name == best,
                        "at the edge": name == best and lr in (rates[0], rates[-1]),
                        "flat": name == best or stats.difference(mine, best, name).contains_zero,
                    }
                )
    return pd.DataFrame(rows).sort_values(["rule", "r", "lr"], kind="stable").reset_index(drop=True)


def scaling_sweep(profile: str = "cpu", results: str | Path | None = None) -> pd.DataFrame:
    """:func:`scaling_table` of the profile's stored ``scaling`` suite, on its sweep seeds."""
    runs = _compared_runs(profile, results)
    if not len(runs):
        return pd.DataFrame()
    return scaling_table(runs[runs["name"].isin(suite_labels(profile, ["scaling"]))])


def rates_for_every_rank(table: pd.DataFrame) -> dict[str, list[float]]:
    """Per rule of a :func:`scaling_table`, the rates in the flat region at every rank it swept (not
    detectably worse than that rank's best): a rate one could keep when changing r, as far as the sweep
    tells. Empty where no rate is."""
    out = {}
    for rule, g in table.groupby("rule", sort=False):
        flat = [set(ranks.loc[ranks["flat"], "lr"]) for _, ranks in g.groupby("r")]
        out[rule] = sorted(set.intersection(*flat))
    return out


def rank_table(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`summarize`'s rows for plain LoRA on query and value in every layer, one per rule of
    ``RANK_RULES`` that the run follows and its rank (columns ``rule`` and ``r``): the r = 16 run, the same
    under both rules, is a row of each. The index stays the run's label."""
    table, rows = summarize(df), []
    for name in table.index:
        exp = Experiment.parse(name)
        if exp.prefix != "lora" or exp.target != "qv" or exp.layers != "all":
            continue
        for i, rule in enumerate(RANK_RULES):
            if Experiment.parse(SCALING_RULES[rule].format(r=exp.r)).alpha == exp.alpha:
                rows.append((i, exp.r, name, rule))
    out = table.loc[[name for _, _, name, _ in sorted(rows)]]
    return out.assign(rule=[rule for *_, rule in sorted(rows)], r=[r for _, r, _, _ in sorted(rows)])


def smallest_rank_not_behind(df: pd.DataFrame, curve: pd.DataFrame, reference: int = 16) -> int | None:
    """The smallest rank of one :func:`rank_table` curve from which no rank is detectably behind
    ``reference`` in accuracy (paired, 95 %), so that the next smaller rank is; None if a rank above the
    reference is behind it. ``df``: the runs the curve summarizes."""
    ref = curve.index[curve["r"] == reference][0]
    behind = {int(r): stats.difference(df, name, ref).high < 0 for name, r in curve["r"].items()}
    enough = [r for r in sorted(behind) if not any(behind[q] for q in behind if q >= r)]
    return enough[0] if enough else None


@dataclass(frozen=True)
class Retuned:
    """One rank of a rule's tuned curve whose own rate is not the one rate: its accuracy at its own rate
    minus at the one rate, on the full budget, paired (``stats.difference``)."""

    rule: str
    r: int
    lr: float
    one_lr: float
    diff: stats.Interval


def rank_advice(
    shared: dict[str, list[float]],
    smallest: dict[str, int | None],
    retuned: Sequence[Retuned] = (),
    reference: int = 16,
) -> str:
    """What to do when changing r, in words, for each rule of ``RANK_RULES``: ``shared``, the rates within
    every rank's flat region of the scaling sweep (:func:`rates_for_every_rank`); ``smallest``, the smallest
    rank of the rule's tuned curve not detectably behind ``reference`` (:func:`smallest_rank_not_behind`);
    ``retuned``, what each rank's own rate changed against the one rate on the full budget."""
    kept = {RULE_LABELS[rule]: shared.get(rule, []) for rule in RANK_RULES}
    which = "; ".join(f"{rule}: {' or '.join(map(lr_text, rates))}" for rule, rates in kept.items() if rates)
    if all(kept.values()):
        rate = (
            f"you can keep the learning rate: under either rule one rate ({which}) was not detectably worse "
            "than each rank's own best in the sweep"
        )
    elif any(kept.values()):
        lost = " and ".join(rule for rule, rates in kept.items() if not rates)
        served = f"the rule where one served every rank ({which})"
        rate = f"keep the learning rate under {served}; retune it under {lost}"
    else:
        rate = "retune the learning rate for each rank: under neither rule did one rate serve every rank"

    def capacity(rule: str) -> str:
        found = smallest[rule]
        if found is None:
            return f"under {RULE_LABELS[rule]}, a rank above r = {reference} was detectably behind it"
        if found == min(RANKS):
            return f"under {RULE_LABELS[rule]}, no rank was detectably behind r = {reference}"
        below = max(r for r in RANKS if r < found)
        return (
            f"under {RULE_LABELS[rule]}, r = {below} was detectably behind r = {reference} "
            f"and no rank from r = {found} up was"
        )

    ranks = "; ".join(capacity(rule) for rule in RANK_RULES)
    text = f"When you change r, {rate}. Each rank at its own rate, in accuracy: {ranks}."
    founds = [smallest[rule] for rule in RANK_RULES]
    if None not in founds and max(founds) == min(RANKS):
        text += f" Under either rule, even r = {min(RANKS)} was not detectably behind r = {reference} here."
    elif None not in founds:
        text += (
            f" So on a model like this one, start from r = {max(founds)} under either rule; a smaller rank "
            "needs a comparison of its own."
        )
    return text + _retuned_advice(list(retuned), shared)


def _retuned_advice(retuned: list[Retuned], shared: dict[str, list[float]]) -> str:
    """Whether the rates the short budget chose paid off on the full one, in words, or ''; and, where the
    one rate was never detectably behind and within every rank's flat region, that it is the one to keep."""
    if not retuned:
        return ""
    one = lr_text(retuned[0].one_lr)

    def own(items: list[Retuned]) -> str:
        return " and ".join(
            f"r = {x.r} under {RULE_LABELS[x.rule]} at its own rate, {lr_text(x.lr)}," for x in items
        )

    ahead = [x for x in retuned if x.diff.low > 0]
    behind = [x for x in retuned if x.diff.high < 0]
    if not ahead and not behind:
        return (
            f" On the full budget, no rank's own rate was detectably better or worse than the one rate, "
            f"{one}."
        )
    text = f" On the full budget, {own(ahead)} beat the one rate, {one}, detectably." if ahead else ""
    if behind:
        text += (
            f" On the full budget, {own(behind)} fell detectably behind the one rate, {one}: the choice "
            "made on the short tuning budget did not carry over there."
        )
    if not ahead and all(retuned[0].one_lr in shared.get(rule, []) for rule in RANK_RULES):
        text += (
            f" Of the rates the sweep could not tell apart, keep {one}: on the full budget it was nowhere "
            "detectably behind a rank's own rate."
        )
    return text


@dataclass(frozen=True)
class RankRate:
    """The rate the scaling sweep chooses for one rule and rank of the rank curve (``RANK_RULES``)."""

    rule: str
    r: int
    lr: float
    at_edge: bool  # the best rate is the grid's first or last: widen the grid before trusting it
    seeds: int  # the fewest seeds of any rate at this rule and rank


def rank_rates(profile: str = "cpu", results: str | Path | None = None) -> list[RankRate]:
    """For each rule of ``RANK_RULES`` and rank, the scaling sweep's best rate (highest mean accuracy over
    the sweep's seeds, the rule :func:`choose` applies to every method): the rate its rank run trains at."""
    table = scaling_sweep(profile, results)
    if not len(table):
        return []
    out = []
    for (rule, r), g in table[table["rule"].isin(RANK_RULES)].groupby(["rule", "r"], sort=False):
        best = g[g["best"]].iloc[0]
        out.append(
            RankRate(rule, int(r), float(best["lr"]), bool(best["at the edge"]), int(g["seeds"].min()))
        )
    return out


@dataclass(frozen=True)
class Contrast:
    """The best rate of one kind of experiment against a neighbouring rate of its sweep."""

    kind: str
    best: float
    other: float
    difference: stats.Interval  # best minus other, points


def peak_contrasts(profile: str = "cpu", results: str | Path | None = None) -> list[Contrast]:
    """How sharply each sweep peaks: its best rate against the rates next to it on the grid, paired on the
    validation sentences (an interval containing 0: the neighbour is as good, as far as this budget tells)."""
    df = _swept(_compared_runs(profile, results), profile)
    table = _sweep_table(df)
    if not len(table):
        return []
    df = df.assign(experiment=df["name"])
    out = []
    for kind, best in best_rates(table).iterrows():
        rates = sorted(table.loc[table["kind"] == kind, "lr"])
        name = {Experiment.parse(n).lr: n for n in df["name"] if Experiment.parse(n).sweep_kind == kind}
        i = rates.index(best["best lr"])
        for other in rates[max(i - 1, 0) : i] + rates[i + 1 : i + 2]:
            diff = stats.difference(df, name[best["best lr"]], name[other])
            out.append(Contrast(kind, best["best lr"], other, diff))
    return out


@dataclass(frozen=True)
class Choice:
    """What the sweep chooses for one kind of experiment: its best rate."""

    kind: str
    lr: float
    at_edge: bool  # the best rate is the sweep's first or last: widen the sweep before trusting it
    accuracy: float  # mean validation accuracy (%) at that rate over the sweep's seeds
    seeds: int


def choose(profile: str = "cpu", results: str | Path | None = None) -> list[Choice]:
    """The one rule every method is tuned by: on the tuning subset, the learning rate with the highest
    mean accuracy over the sweep's seeds (a rate at the edge of the sweep is flagged: widen it). Epochs are
    not chosen: the headline's methods all train the profile's same number (see ``Profile.epochs``)."""
    df = _compared_runs(profile, results)
    table = _sweep_table(_swept(df, profile))
    if not len(table):
        return []
    return [
        Choice(kind, best["best lr"], bool(best["at the edge"]), best["accuracy (%)"], int(best["seeds"]))
        for kind, best in best_rates(table).iterrows()
    ]
