"""The bootstrap behind every comparison in the book, checked where the truth is known."""

import numpy as np
import pandas as pd
import pytest

from lora_tutorial.study import stats

SEED_EFFECT = 0.1  # a run's skill varies with its seed (logit scale): about 1 point of accuracy


def simulate(rng, difficulty, skill, seeds, seed_effect=SEED_EFFECT):
    """0/1 correctness of ``seeds`` runs: example i is right with probability sigmoid(skill_s - difficulty_i),
    each run's skill_s drawn around ``skill``."""
    skills = skill + rng.normal(0.0, seed_effect, size=(seeds, 1))
    return (rng.random((seeds, len(difficulty))) < 1 / (1 + np.exp(difficulty - skills))).astype(float)


def population_accuracy(skill):
    """Expected accuracy over the sentences the validation set is drawn from and over seeds."""
    rng = np.random.default_rng(99)
    difficulty = rng.normal(-2.0, 2.0, size=500_000)
    return 100 * np.mean(
        [np.mean(1 / (1 + np.exp(difficulty - skill - e))) for e in rng.normal(0, SEED_EFFECT, 40)]
    )


@pytest.mark.slow
def test_interval_covers_a_known_difference_at_least_95_percent_of_the_time_and_is_not_much_wider():
    rng, covered, widths, estimates, trials = np.random.default_rng(1), 0, [], [], 200
    truth = population_accuracy(0.3) - population_accuracy(0.0)
    for t in range(trials):
        difficulty = rng.normal(-2.0, 2.0, size=872)  # a fresh validation set drawn from the population
        a, b = simulate(rng, difficulty, 0.3, 3), simulate(rng, difficulty, 0.0, 3)
        i = stats.bootstrap(a, b, replicates=1000, seed=t)
        covered += i.low <= truth <= i.high
        widths.append(i.high - i.low)
        estimates.append(i.mean)
    assert covered / trials >= 0.92
    # conservative (seeds' own per-example noise is counted again by the example resampling), but not by much:
    assert np.mean(widths) <= 1.5 * 2 * 1.96 * np.std(estimates)


def simulate_losses(rng, difficulty, skill, seeds, seed_effect=SEED_EFFECT):
    """Per-sentence log-loss of ``seeds`` runs whose probability of the true label is
    sigmoid(skill_s - difficulty_i + noise): what a run's stored probabilities give."""
    skills = skill + rng.normal(0.0, seed_effect, size=(seeds, 1))
    logit = skills - difficulty + rng.normal(0.0, 0.5, size=(seeds, len(difficulty)))
    return np.log1p(np.exp(-logit))


def population_log_loss(skill):
    rng = np.random.default_rng(99)
    difficulty = rng.normal(-2.0, 2.0, size=200_000)
    logit = (
        skill + rng.normal(0, SEED_EFFECT, (20, 1)) - difficulty + rng.normal(0, 0.5, (20, len(difficulty)))
    )
    return np.log1p(np.exp(-logit)).mean()


@pytest.mark.slow
def test_the_log_loss_interval_has_the_right_width_and_covers_a_known_difference():
    """Log-loss differences between seeds matter more than accuracy's, so with 3 seeds the seed term
    dominates: the interval's width then matches the estimate's true spread (the seeds' variance is
    corrected for resampling k of them), but an interval estimated from 3 seeds covers less than its
    nominal 95 % (about 90 % here; a t-interval with 2 degrees of freedom would be needed to do better)."""
    rng, covered, widths, estimates, trials = np.random.default_rng(2), 0, [], [], 200
    truth = population_log_loss(0.3) - population_log_loss(0.0)  # negative: the first is better
    for t in range(trials):
        difficulty = rng.normal(-2.0, 2.0, size=872)
        a, b = simulate_losses(rng, difficulty, 0.3, 3), simulate_losses(rng, difficulty, 0.0, 3)
        i = stats.bootstrap(a, b, replicates=1000, seed=t, unit="nats")
        covered += i.low <= truth <= i.high
        widths.append(i.high - i.low)
        estimates.append(i.mean)
    assert truth < 0
    assert np.mean(estimates) == pytest.approx(truth, abs=0.005)
    assert np.mean(widths) / (2 * 1.96) == pytest.approx(np.std(estimates), rel=0.15)
    assert covered / trials >= 0.85


def test_log_loss_from_stored_probabilities():
    labels = "01"
    df = pd.DataFrame(
        {
            "experiment": ["x", "y"],
            "seed": [0, 0],
            "predictions": ["01", "01"],
            "probabilities": [[0.1, 0.9], [0.4, 0.6]],
            "validation_labels": [labels] * 2,
        }
    )
    assert stats.log_loss(df, "x").mean == pytest.approx(-np.log(0.9))
    diff = stats.log_loss_difference(df, "x", "y")
    assert diff.mean == pytest.approx(np.log(0.6) - np.log(0.9))
    assert diff.unit == "nats"
    assert stats.verdict(diff, "x", "y").startswith("x is ahead of y by 0.405 nats")
    assert stats.log_losses([[1.0, 0.0]], "01")[0] == pytest.approx([34.54, 34.54], abs=0.01)  # clipped


def test_a_real_difference_is_detected_and_its_sign_kept():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(-2.0, 2.0, size=872)
    a, b = simulate(rng, difficulty, 1.0, 5), simulate(rng, difficulty, 0.0, 5)
    i = stats.bootstrap(a, b)
    assert i.low > 0
    assert stats.bootstrap(b, a).high < 0
    back = -i  # the same difference quoted the other way: mirrored bounds, one bootstrap
    assert (back.mean, back.low, back.high) == (-i.mean, -i.high, -i.low)
    assert back.high < 0
    assert stats.verdict(back, "B", "A").startswith("B is behind A by")


def test_no_difference_gives_an_interval_containing_zero():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(-2.0, 2.0, size=872)
    i = stats.bootstrap(simulate(rng, difficulty, 0.0, 3), simulate(rng, difficulty, 0.0, 3))
    assert i.contains_zero
    assert "no difference" in stats.verdict(i, "A", "B")


def test_a_run_compared_with_itself_differs_by_exactly_zero():
    rng = np.random.default_rng(0)
    a = simulate(rng, rng.normal(size=100), 0.0, 1)
    i = stats.bootstrap(a, a.copy())
    assert (i.mean, i.low, i.high) == (0.0, 0.0, 0.0)


def test_more_seeds_and_examples_narrow_the_interval():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(-2.0, 2.0, size=3000)
    wide = stats.bootstrap(simulate(rng, difficulty[:500], 0.0, 2))
    narrow = stats.bootstrap(simulate(rng, difficulty, 0.0, 8))
    assert narrow.high - narrow.low < wide.high - wide.low


def test_results_table_in_interval_out():
    labels = "0101"
    df = pd.DataFrame(
        {
            "experiment": ["x", "x", "y", "y"],
            "seed": [0, 1, 0, 1],
            "predictions": ["0101", "0100", "1010", "0000"],
            "validation_labels": [labels] * 4,
        }
    )
    assert stats.accuracy(df, "x").mean == pytest.approx(87.5)
    assert stats.difference(df, "x", "y").mean == pytest.approx(62.5)
    assert list(stats.summary_table(df, ["x", "y"])["seeds"]) == [2, 2]


def test_unusable_runs_are_refused_with_the_fix():
    df = pd.DataFrame({"experiment": ["x"], "seed": [0], "predictions": [None], "validation_labels": ["01"]})
    with pytest.raises(ValueError, match="python -m lora_tutorial predict"):
        stats.accuracy(df, "x")
    with pytest.raises(ValueError, match="no stored probabilities; add them with python -m lora_tutorial"):
        stats.log_loss(df, "x")
    with pytest.raises(ValueError, match="No stored runs of 'z'"):
        stats.accuracy(df, "z")
    with pytest.raises(ValueError, match="same validation split"):
        stats.correctness(["010"], "01")


def test_an_adjusted_interval_is_wider_and_says_its_level():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(-2.0, 2.0, size=872)
    a, b = simulate(rng, difficulty, 0.3, 3), simulate(rng, difficulty, 0.0, 3)
    plain, nine = stats.bootstrap(a, b), stats.bootstrap(a, b, level=stats.adjusted(9))
    assert stats.adjusted(9) == pytest.approx(1 - 0.05 / 9)
    assert nine.low < plain.low < plain.high < nine.high
    assert nine.mean == plain.mean
    assert "99.4 % interval" in stats.verdict(nine, "A", "B")
    assert "95 % interval" in stats.verdict(plain, "A", "B")
    with pytest.raises(ValueError, match="at least one"):
        stats.adjusted(0)


def test_a_sentence_states_the_finding_first_and_ends():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(-2.0, 2.0, size=872)
    same = stats.bootstrap(simulate(rng, difficulty, 0.0, 3), simulate(rng, difficulty, 0.0, 3))
    text = stats.sentence(same, "LoRA", "full fine-tuning")
    assert text.startswith("No difference between LoRA and full fine-tuning is detectable")
    assert text.endswith(").")


def test_a_comparison_quotes_both_metrics_and_says_when_they_disagree():
    rng = np.random.default_rng(0)
    labels = "".join(rng.choice(["0", "1"], size=400))
    truth = np.array([c == "1" for c in labels])

    def runs(confidence, name):  # the same right answers, held with another confidence
        p = np.where(truth, confidence, 1 - confidence)
        rows = [
            {
                "experiment": name,
                "seed": s,
                "predictions": labels,
                "probabilities": list(p),
                "validation_labels": labels,
            }
            for s in (0, 1)
        ]
        return pd.DataFrame(rows)

    df = pd.concat([runs(0.9, "sure"), runs(0.6, "unsure")])
    text = stats.comparison(df, "sure", "unsure", "A", "B")
    assert text.startswith("No difference between A and B is detectable")  # equal accuracy
    assert "In log-loss per sentence, A is ahead of B by 0.405 nats" in text
    assert "The two metrics disagree" in text
    accuracy_only = df.assign(probabilities=None)
    assert stats.comparison(accuracy_only, "sure", "unsure", "A", "B") == stats.sentence(
        stats.difference(df, "sure", "unsure"), "A", "B"
    )
