"""Command line: ``python -m lora_tutorial run --profile cpu --experiments headline --seeds 0 1 2``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .experiments import PROFILES, suite
from .runner import load_results, recompute_predictions, run_suite


def expand(names: list[str], num_layers: int) -> list[str]:
    """Experiment names, with suite names (headline, rank, layers, modules, all) expanded."""
    out: list[str] = []
    for name in names:
        try:
            out += suite(name, num_layers)
        except ValueError:
            out.append(name)
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lora-tutorial", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate experiments; finished runs are skipped")
    run.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    run.add_argument("--experiments", nargs="+", default=["headline"],
                     help="experiment names (full, head, lora-r16, lora-r8-upper, ...) or suites "
                          "(headline, rank, layers, modules, all)")
    run.add_argument("--seeds", nargs="+", type=int, default=[0])
    run.add_argument("--results", default="results", help="folder for the JSON results (default: results)")
    run.add_argument("--data", default=None, help="SST-2 folder or 'hub' (default: $LORA_TUTORIAL_SST2, else the Hub)")
    run.add_argument("--force", action="store_true", help="re-run experiments that already have a result")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    show = sub.add_parser("results", help="print stored results as a table")
    show.add_argument("--profile", default=None)
    show.add_argument("--results", default="results")
    pred = sub.add_parser("predict", help="add per-example predictions to stored LoRA runs, from their adapters")
    pred.add_argument("--profile", choices=sorted(PROFILES), required=True)
    pred.add_argument("--results", default="results")
    pred.add_argument("--data", default=None, help="SST-2 folder or 'hub' (default: $LORA_TUTORIAL_SST2, else the Hub)")
    sub.add_parser("profiles", help="print every profile's settings")
    bench = sub.add_parser("bench", help="measure step time, memory and latency ratios (writes results/bench)")
    bench.add_argument("--models", nargs="+", default=["minilm", "bert-base-random"])
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--out", default="results/bench")
    bench.add_argument("--padding", action="store_true",
                       help="instead: padding of random vs length-grouped SST-2 batches and its effect on epoch time")
    bench.add_argument("--data", default=None, help="SST-2 folder or 'hub' (default: $LORA_TUTORIAL_SST2, else the Hub)")
    args = parser.parse_args(argv)

    if args.command == "run":
        names = expand(args.experiments, PROFILES[args.profile].num_layers)
        records = run_suite(args.profile, names, args.seeds, args.results,
                            args.data, args.force, not args.no_progress)
        for r in records:
            print(f"{r['config']['experiment']:>20} seed {r['config']['seed']}: "
                  f"accuracy {r['metrics']['validation_accuracy']:.4f}, "
                  f"{r['train_seconds_per_epoch']:.1f} s/epoch")
    elif args.command == "bench":
        from .bench import main as bench_main, padding_benchmark
        if args.padding:
            record = padding_benchmark(args.models[0], data_source=args.data)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"padding-{args.models[0]}.json").write_text(json.dumps(record, indent=1))
            print(json.dumps(record["padding_fraction"] | record["ratios"], indent=1))
        else:
            bench_main(args.models, args.repeats, Path(args.out))
    elif args.command == "predict":
        for path in recompute_predictions(args.profile, args.results, args.data):
            print(f"predictions added: {path}")
    elif args.command == "results":
        df = load_results(args.results, args.profile)
        print(df.drop(columns=["file", "predictions", "validation_labels"], errors="ignore").to_string())
        if len(df):
            print(f"{len(df)} runs, {df['run_seconds'].sum() / 60:.0f} min from start to finish "
                  f"({df['run_seconds'][df['current']].sum() / 60:.0f} min for the {df['current'].sum()} current ones)")
    else:
        print(json.dumps({k: vars(p) for k, p in PROFILES.items()}, indent=2))
