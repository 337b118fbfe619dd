"""From stored results to the book's tables: one place that decides what a chapter shows."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from .experiments import PROFILES, Experiment, suites
from .models import layer_count
from .plotting import book_style
from .runner import run_suite
from .store import load_results

PROFILE_ENV = "LORA_TUTORIAL_PROFILE"


def setup_chapter() -> str:
    """What every study chapter starts with: the book's figure style, and the profile whose stored results
    it shows (``$LORA_TUTORIAL_PROFILE``, default ``cpu``)."""
    book_style()
    return os.environ.get(PROFILE_ENV, "cpu")


def suite_labels(profile: str, names: list[str]) -> dict[str, str]:
    """The runs of some suites of a profile: ``{resolved experiment name: the label the suite gives it}``."""
    prof = PROFILES[profile]
    table = suites(prof, layer_count(prof.model))
    return {Experiment.parse(n).resolve(prof).name: label for s in names for label, n in table[s]}


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
        missing = sorted(set(labels.values()) - set(df["experiment"]))
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
    run_suite("smoke", names, list(seeds), folder, progress=False)
    return _labelled(load_results(folder, "smoke"), suite_labels("smoke", names)), "smoke"


def selection_runs(profile: str = "cpu", results: str | Path | None = None) -> pd.DataFrame:
    """The stored runs that chose a profile's settings or were earlier trials: every run, superseded ones
    included, that the profile's suites do not use."""
    runs = load_results(results, profile, superseded=True)
    return runs[~runs["used"]].reset_index(drop=True) if len(runs) else runs


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: accuracy mean and std over seeds, parameters, and the median time and
    memory over seeds (a run slowed by other work on the machine does not move the median)."""
    g = df.groupby("experiment", sort=False)
    out = pd.DataFrame(
        {
            "seeds": g.size(),
            "accuracy (%)": 100 * g["validation_accuracy"].mean(),
            "std": 100 * g["validation_accuracy"].std(ddof=1),
            "trainable params": g["trainable_params"].first(),
            "trainable (%)": 100 * g["trainable_params"].first() / g["total_params"].first(),
            "epochs": g["epochs"].first(),
            "s / epoch": g["train_seconds_per_epoch"].median(),
            "train time (min)": (g["epochs"].first() * g["train_seconds_per_epoch"].median()) / 60,
            "peak memory (GiB)": g["peak_memory_bytes"].median() / 2**30,
            "lr": g["lr"].first(),
            "train examples": g["train_examples"].first(),
        }
    )
    return out.round(
        {
            "accuracy (%)": 2,
            "std": 2,
            "trainable (%)": 3,
            "s / epoch": 0,
            "train time (min)": 1,
            "peak memory (GiB)": 2,
        }
    )
