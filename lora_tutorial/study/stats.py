"""How sure is a difference in accuracy (or log-loss)? A bootstrap over seeds and validation examples.

Every run stores its prediction for each validation sentence, so two experiments are compared on the
same sentences (paired). The interval accounts for both sources of noise a reader meets when re-running
the study: which seeds were drawn (resampled per experiment) and which sentences the validation set
happened to contain (resampled once per replicate, the same for both experiments).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import pandas as pd

from ..errors import UsageError

LEVEL = 0.95
REPLICATES = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean accuracy (or difference of two), in points, with its bootstrap interval; for log-loss the
    unit is nats per sentence."""

    mean: float
    low: float
    high: float
    seeds: tuple[int, ...] = ()
    unit: str = "points"
    level: float = 0.95  # the interval's coverage (adjusted for several comparisons: see ``adjusted``)

    @property
    def digits(self) -> int:
        return 2 if self.unit == "points" else 3

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0 <= self.high

    @property
    def bounds(self) -> str:
        """The interval alone, signed, as ``95 % interval -0.73 to +1.86``."""
        return f"{self.percent} interval {self.low:+.{self.digits}f} to {self.high:+.{self.digits}f}"

    @property
    def percent(self) -> str:
        """The level as text, such as ``95 %`` or ``99.4 %``."""
        return f"{100 * self.level:.3g} %"

    @property
    def span(self) -> str:
        """The signed mean and its interval in points, as ``+0.55 points, 95 % interval -0.73 to +1.86``."""
        mean = f"{self.mean:+.{self.digits}f}" if round(self.mean, self.digits) else f"{0:.{self.digits}f}"
        return f"{mean} {self.unit}, {self.bounds}"

    def __neg__(self) -> Interval:
        """The same difference the other way round (``b - a`` from ``a - b``): one bootstrap, quoted both
        ways, gives the same bounds."""
        return replace(self, mean=-self.mean, low=-self.high, high=-self.low)

    def __str__(self) -> str:
        d = self.digits
        return f"{self.mean:.{d}f} ({self.percent} interval {self.low:.{d}f} to {self.high:.{d}f})"


def correctness(predictions: list[str], labels: str) -> np.ndarray:
    """Seeds x examples matrix of 0/1: was the run's prediction for each validation sentence right?"""
    if any(len(p) != len(labels) for p in predictions):
        raise UsageError(
            "Runs predicted different numbers of validation examples; compare runs made on the "
            "same validation split."
        )
    truth = np.frombuffer(labels.encode(), dtype=np.uint8)
    return np.stack([np.frombuffer(p.encode(), dtype=np.uint8) == truth for p in predictions]).astype(float)


def log_losses(probabilities: list[list[float]], labels: str) -> np.ndarray:
    """Seeds x examples matrix of each run's log-loss per validation sentence, ``-log p(true label)``, from
    its stored probabilities of the positive class (clipped at 1e-15, as scikit-learn does)."""
    if any(len(p) != len(labels) for p in probabilities):
        raise UsageError(
            "Runs scored different numbers of validation examples; compare runs made on the same "
            "validation split."
        )
    positive = np.clip(np.asarray(probabilities, dtype=float), 1e-15, 1 - 1e-15)
    truth = np.frombuffer(labels.encode(), dtype=np.uint8) == ord("1")
    return -np.log(np.where(truth, positive, 1 - positive))


@lru_cache(maxsize=4)
def _example_draws(n: int, replicates: int, seed: int) -> np.ndarray:
    """How often each of ``n`` examples is drawn in each replicate (replicates x n), shared by every
    comparison on the same examples (drawing them is most of a bootstrap's cost)."""
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=replicates)
    draws.flags.writeable = False
    return draws


def _resampled_means(
    correct: np.ndarray, example_weights: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Accuracy of each replicate: seeds drawn with replacement, examples weighted by their draw counts."""
    seeds = correct.shape[0]
    seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=len(example_weights))
    return ((seed_weights @ correct) * example_weights).sum(axis=1) / (seeds * correct.shape[1])


def _seed_adjusted(runs: np.ndarray) -> np.ndarray:
    """Each run's deviation from the seeds' mean scaled by sqrt(k / (k - 1)): resampling k seeds with
    replacement shrinks their variance by (k - 1) / k, which with 3 seeds would narrow the interval where
    the seed matters most (Davison and Hinkley's adjusted residuals)."""
    k = runs.shape[0]
    if k < 2:
        return runs
    centre = runs.mean(axis=0)
    return centre + np.sqrt(k / (k - 1)) * (runs - centre)


def bootstrap(
    a: np.ndarray,
    b: np.ndarray | None = None,
    replicates: int = REPLICATES,
    level: float = LEVEL,
    seed: int = 0,
    unit: str = "points",
) -> Interval:
    """Mean accuracy of ``a`` (seeds x examples, 0/1), or the difference ``a - b`` on the same examples,
    in points, with a percentile interval from resampling seeds (each experiment's own) and examples
    (shared by ``a`` and ``b``). With ``unit="nats"``, ``a`` and ``b`` hold per-example log-losses and the
    result is their mean (no scaling)."""
    if b is not None and a.shape[1] != b.shape[1]:
        raise UsageError(f"Paired comparison needs the same examples: {a.shape[1]} vs {b.shape[1]}.")
    examples = _example_draws(a.shape[1], replicates, seed)
    rng = np.random.default_rng([seed, 1])  # the seeds' draws: a stream apart from the examples'
    stat = _resampled_means(_seed_adjusted(a), examples, rng)
    mean = a.mean()
    if b is not None:
        stat = stat - _resampled_means(_seed_adjusted(b), examples, rng)
        mean = mean - b.mean()
    low, high = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    scale = 100 if unit == "points" else 1
    return Interval(scale * mean, scale * low, scale * high, unit=unit, level=level)


def adjusted(comparisons: int, level: float = LEVEL) -> float:
    """The level each of ``comparisons`` intervals needs so that all hold together with probability
    ``level`` (Bonferroni): 95 % over nine comparisons is 99.4 % each."""
    if comparisons < 1:
        raise UsageError(f"Adjusting for {comparisons} comparisons makes no sense; give at least one.")
    return 1 - (1 - level) / comparisons


def runs_of(df: pd.DataFrame, experiment: str, metric: str = "accuracy") -> np.ndarray:
    """An experiment's stored runs (rows of a results table) as a seeds x examples matrix, one row per
    seed: 0/1 correctness (``metric="accuracy"``) or per-sentence log-loss (``metric="log-loss"``)."""
    rows = df[df["experiment"] == experiment].sort_values("seed")
    if rows.empty:
        raise UsageError(
            f"No stored runs of {experiment!r}; run it with python -m lora_tutorial run "
            f"--experiments {experiment}."
        )
    column = "predictions" if metric == "accuracy" else "probabilities"
    if column not in rows or rows[column].isna().any():
        raise UsageError(
            f"Some runs of {experiment!r} have no stored {column}; add them with "
            "python -m lora_tutorial predict."
        )
    if metric == "accuracy":
        return correctness(list(rows["predictions"]), rows["validation_labels"].iloc[0])
    return log_losses(list(rows["probabilities"]), rows["validation_labels"].iloc[0])


def accuracy(df: pd.DataFrame, experiment: str, **kw) -> Interval:
    """An experiment's mean validation accuracy over its seeds, with its 95 % interval (points)."""
    i = bootstrap(runs_of(df, experiment), **kw)
    return replace(i, seeds=tuple(sorted(df[df["experiment"] == experiment]["seed"])))


def difference(df: pd.DataFrame, a: str, b: str, **kw) -> Interval:
    """Accuracy of ``a`` minus ``b`` (points) with its 95 % interval, paired on the validation examples."""
    return bootstrap(runs_of(df, a), runs_of(df, b), **kw)


def log_loss(df: pd.DataFrame, experiment: str, **kw) -> Interval:
    """An experiment's mean validation log-loss (nats per sentence) over its seeds, with its interval."""
    i = bootstrap(runs_of(df, experiment, "log-loss"), unit="nats", **kw)
    return replace(i, seeds=tuple(sorted(df[df["experiment"] == experiment]["seed"])))


def log_loss_difference(df: pd.DataFrame, a: str, b: str, **kw) -> Interval:
    """Log-loss of ``a`` minus ``b`` (nats per sentence; negative: ``a`` is better), paired."""
    return bootstrap(runs_of(df, a, "log-loss"), runs_of(df, b, "log-loss"), unit="nats", **kw)


def verdict(diff: Interval, a: str, b: str) -> str:
    """A clause for the difference ``a - b`` that says only what its interval supports."""
    if diff.contains_zero:
        return f"no difference between {a} and {b} is detectable at this budget ({diff.span})"
    better = diff.mean > 0 if diff.unit == "points" else diff.mean < 0  # a lower log-loss is better
    side = "ahead of" if better else "behind"
    return f"{a} is {side} {b} by {abs(diff.mean):.{diff.digits}f} {diff.unit} ({diff.bounds})"


def sentence(diff: Interval, a: str, b: str) -> str:
    """The same finding as :func:`verdict`, as a sentence that states it first and its numbers after:
    "A is ahead of B by 1.44 points (95 % interval ...)." or "No difference between A and B is detectable
    at this budget (...)." """
    clause = verdict(diff, a, b)
    symbol = len(clause) > 1 and clause[1] == " "  # a label such as "r = 1" keeps its case
    return (clause if symbol else clause[0].upper() + clause[1:]) + "."


def comparison(df: pd.DataFrame, a: str, b: str, label_a: str, label_b: str, **kw) -> str:
    """``a`` against ``b`` in both metrics, as sentences: accuracy, then mean log-loss per sentence where
    every run stores its probabilities, and a word where the two disagree."""
    acc = difference(df, a, b, **kw)
    text = sentence(acc, label_a, label_b)
    try:
        loss = log_loss_difference(df, a, b, **kw)
    except UsageError:  # probabilities not stored for every run: accuracy only
        return text
    text += f" In log-loss per sentence, {verdict(loss, label_a, label_b)}."
    same = acc.contains_zero == loss.contains_zero and (
        acc.contains_zero or (acc.mean > 0) == (loss.mean < 0)
    )
    if not same:
        text += (
            " The two metrics disagree: accuracy counts only which side of one half each probability "
            "falls on, log-loss also how confident it is."
        )
    return text


def summary_table(df: pd.DataFrame, experiments: list[str], **kw) -> pd.DataFrame:
    """Per experiment: seeds, mean accuracy and its 95 % interval (points), for tables and error bars."""
    rows = {}
    for name in experiments:
        i = accuracy(df, name, **kw)
        rows[name] = {"seeds": len(i.seeds), "accuracy (%)": i.mean, "low": i.low, "high": i.high}
    return pd.DataFrame.from_dict(rows, orient="index")
