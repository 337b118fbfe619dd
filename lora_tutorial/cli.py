"""Command line: ``python -m lora_tutorial run --profile cpu --experiments headline --seeds 0 1 2``.

A mistake (an unknown experiment, suite or profile, a missing data folder, a malformed TSV, a layer the
model does not have) prints one line that says what to do, and exits with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import UsageError
from .study.experiments import GRAMMAR, PROFILES, profile_named

DATA_HELP = "SST-2 folder or 'hub' (default: $LORA_TUTORIAL_SST2, else the Hub)"
PROFILE_HELP = f"one of {', '.join(PROFILES)} (default: cpu, the book's study)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lora-tutorial", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate experiments; finished runs are skipped")
    run.add_argument("--profile", default="cpu", help=PROFILE_HELP)
    run.add_argument(
        "--experiments",
        nargs="+",
        default=["headline"],
        help=f"experiment names ({GRAMMAR}) or suites (headline, rank, layers, modules, variants, "
        "sweep, scaling, all)",
    )
    run.add_argument("--seeds", nargs="+", type=int, default=[0])
    run.add_argument("--results", default=None, help="results folder (default: the nearest results/)")
    run.add_argument("--data", default=None, help=DATA_HELP)
    run.add_argument("--force", action="store_true", help="re-run experiments that already have a result")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    show = sub.add_parser("results", help="print a profile's stored results as a table (or JSON)")
    show.add_argument("--profile", default="cpu", help=PROFILE_HELP)
    show.add_argument("--results", default=None)
    show.add_argument("--json", action="store_true", help="one JSON record per stored run, for scripts")
    pred = sub.add_parser(
        "predict",
        help="add per-example predictions and probabilities to stored LoRA runs, from their adapters",
    )
    pred.add_argument("--profile", default="cpu", help=PROFILE_HELP)
    pred.add_argument("--results", default=None)
    pred.add_argument("--data", default=None, help=DATA_HELP)
    pick = sub.add_parser(
        "choose", help="the learning rate the stored sweeps choose, per method and per rank"
    )
    pick.add_argument("--profile", default="cpu", help=PROFILE_HELP)
    pick.add_argument("--results", default=None)
    sub.add_parser("profiles", help="print every profile's settings")
    bench = sub.add_parser(
        "bench", help="measure step time, memory and latency ratios (writes results/bench)"
    )
    bench.add_argument("--models", nargs="+", default=["minilm", "bert-base-random"])
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--out", default="results/bench")
    bench.add_argument(
        "--padding",
        action="store_true",
        help="instead: padding of random vs length-grouped SST-2 batches and its effect on epoch time",
    )
    bench.add_argument(
        "--activations",
        action="store_true",
        help="instead: peak memory by sequence length, with and without gradient checkpointing",
    )
    bench.add_argument("--data", default=None, help=DATA_HELP)
    return p


def run_command(args: argparse.Namespace) -> None:
    from .study.runner import run_suite
    from .study.store import CHILD_ENV
    from .train import distributed_state

    child = bool(os.environ.get(CHILD_ENV))  # one run of a parent command, which prints its line
    isolate = distributed_state().num_processes == 1 and not child  # under torchrun, the launcher owns them
    progress = not args.no_progress
    if not progress:  # datasets' tokenizing bar too, not only the trainer's
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    records = run_suite(
        profile_named(args.profile),
        args.experiments,
        args.seeds,
        args.results,
        args.data,
        args.force,
        progress,
        isolate,
    )
    for r in [] if child else records:
        print(
            f"{r.experiment:>32} seed {r.seed}: accuracy {r.accuracy:.4f}, "
            f"{r.timing.train_seconds_per_epoch:.1f} s/epoch"
        )


JSON_COLUMNS = {
    "experiment": "name",
    "method": "method",
    "variant": "variant",
    "rank": "rank",
    "target_modules": "target_modules",
    "layers": "layers",
    "scaling_rule": "scaling_rule",
    "alpha": "alpha",
    "seed": "seed",
    "lr": "lr",
    "epochs": "epochs",
    "train_examples": "train_examples",
    "validation_accuracy": "validation_accuracy",
    "adapter": "adapter",
    "current": "current",
    "used": "used",
    "superseded": "superseded",
}


TABLE_COLUMNS = [
    "experiment",
    "name",
    "seed",
    "validation_accuracy",
    "trainable_params",
    "train_seconds_per_epoch",
    "peak_memory_bytes",
    "mean_load_average",
    "git_commit",
    "current",
    "used",
]


def results_command(args: argparse.Namespace) -> None:
    from .study.report import load_results, result_rows

    profile_named(args.profile)
    if args.json:
        rows = [
            {k: row.get(v) for k, v in JSON_COLUMNS.items()}
            | {
                "predictions": len(row["predictions"] or ""),
                "probabilities": len(row["probabilities"] or ""),
                "epochs_evaluated": len(row["history"]),  # points of the per-epoch validation curve
            }
            for row in result_rows(args.profile, args.results, superseded=True)
        ]
        print(json.dumps(rows, indent=1))
        return
    df = load_results(args.results, args.profile)
    if not len(df):
        print(
            f"Nothing is stored for the {args.profile} profile yet; run for example\n"
            f"  python -m lora_tutorial run --profile {args.profile} --experiments headline"
        )
        return
    print(df[TABLE_COLUMNS].to_string())
    print(
        f"{len(df)} runs, {df['run_seconds'].sum() / 60:.0f} min from start to finish "
        f"({df['run_seconds'][df['used']].sum() / 60:.0f} min for the {df['used'].sum()} the suites use)"
    )


def choose_command(args: argparse.Namespace) -> None:
    from .study.report import choose, counted, rank_rates

    profile_named(args.profile)
    choices = choose(args.profile, args.results)
    if not choices:
        print(
            f"No learning-rate sweep is stored; run\n  python -m lora_tutorial run --profile {args.profile} "
            "--experiments sweep --seeds 0 1"
        )
    for c in choices:
        edge = " (at the edge of the sweep: widen it)" if c.at_edge else ""
        print(f"{c.kind}: lr {c.lr:g}{edge}; {c.accuracy:.2f} % over {counted(c.seeds, 'seed')}")
    for c in rank_rates(args.profile, args.results):
        notes = [
            n
            for n, on in (("at the edge of the grid: widen it", c.at_edge), (f"{c.seeds} seed", c.seeds < 2))
            if on
        ]
        print(f"rank, {c.rule}, r = {c.r}: lr {c.lr:g}" + (f" ({'; '.join(notes)})" if notes else ""))


def bench_command(args: argparse.Namespace) -> None:
    from .benchmarks.bench import activation_benchmark, padding_benchmark
    from .benchmarks.bench import main as bench_main

    if args.activations or args.padding:
        kind = "activations" if args.activations else "padding"
        if args.activations:
            record = activation_benchmark(args.models[0])
            shown = {k: record[k] for k in ("peak_training_rss_bytes", "lora_checkpointed_over_plain_step")}
        else:
            record = padding_benchmark(args.models[0], data_source=args.data)
            shown = record["padding_fraction"] | record["ratios"]
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{kind}-{args.models[0]}.json").write_text(json.dumps(record, indent=1))
        print(json.dumps(shown, indent=1))
    else:
        bench_main(args.models, args.repeats, Path(args.out))


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            run_command(args)
        elif args.command == "results":
            results_command(args)
        elif args.command == "predict":
            from .study.runner import recompute_predictions

            for path in recompute_predictions(profile_named(args.profile), args.results, args.data):
                print(f"predictions added: {path}")
        elif args.command == "choose":
            choose_command(args)
        elif args.command == "bench":
            bench_command(args)
        else:
            print(json.dumps({k: vars(p) for k, p in PROFILES.items()}, indent=2))
    except UsageError as e:  # the library's errors for things a user can fix; anything else is a bug
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume (finished runs are kept).", file=sys.stderr)
        sys.exit(130)
