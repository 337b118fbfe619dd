"""From stored results to the book's tables: one place that decides what a chapter shows."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from .experiments import PROFILES, suite
from .runner import load_results, run_suite


def study_results(suites: list[str], profile: str = "cpu", seeds: tuple[int, ...] = (0,),
                  results: str | Path = "../results", require: tuple[str, ...] = ()) -> tuple[pd.DataFrame, str]:
    """Stored, current results of ``profile`` for the experiments of ``suites``. If none are stored (or one
    named in ``require`` is missing), runs the same suites in the smoke profile (seconds) so that the
    chapter still executes, and says so."""
    names = [n for s in suites for n in suite(s, PROFILES[profile].num_layers)]
    df = load_results(results, profile)
    df = df[df["experiment"].isin(names) & df["current"]] if len(df) else df
    if len(df) and set(require) <= set(df["experiment"]):
        missing = sorted(set(names) - set(df["experiment"]))
        if missing:
            print(f"Not yet run in the {profile} profile: {', '.join(missing)}. Produce them with\n"
                  f"  python -m lora_tutorial run --profile {profile} --experiments {' '.join(missing)}")
        return df, profile
    print(f"No stored {profile} results for {suites}; produce them with\n"
          f"  python -m lora_tutorial run --profile {profile} --experiments {' '.join(suites)}\n"
          "Showing a smoke-profile run instead (a tiny random BERT: the numbers mean nothing).")
    smoke = [n for s in suites for n in suite(s, PROFILES["smoke"].num_layers)]
    folder = tempfile.mkdtemp()
    run_suite("smoke", smoke, list(seeds), folder, progress=False)
    return load_results(folder, "smoke"), "smoke"


def stored_runs(profile: str = "cpu", results: str | Path = "../results") -> pd.DataFrame:
    """Every stored run of a profile: its own folder, its superseded runs and its ``-tune`` profile's grid."""
    frames = [f for f in (load_results(results, profile), load_results(results, f"{profile}/superseded/*"),
                          load_results(results, f"{profile}-tune")) if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def selection_runs(profile: str = "cpu", results: str | Path = "../results",
                   experiments: tuple[str, ...] = tuple(suite("headline"))) -> pd.DataFrame:
    """The stored runs of ``experiments`` that chose a profile's settings: all but the ones the study uses
    (the ``-tune`` grid, runs at other rates (``@lr``), stale and superseded runs)."""
    runs = stored_runs(profile, results)
    if not len(runs):
        return runs
    own = (runs["profile"] == profile) & ~runs["file"].map(lambda f: "superseded" in Path(f).parts)
    used = own & runs["current"] & ~runs["experiment"].str.contains("@")
    return runs[~used & runs["experiment"].str.partition("@")[0].isin(experiments)].reset_index(drop=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: accuracy mean and std over seeds, parameters, and the median time and
    memory over seeds (a run slowed by other work on the machine does not move the median)."""
    g = df.groupby("experiment", sort=False)
    out = pd.DataFrame({
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
    })
    return out.round({"accuracy (%)": 2, "std": 2, "trainable (%)": 3, "s / epoch": 0, "train time (min)": 1, "peak memory (GiB)": 2})
