"""Run experiments: prepare the data, build the model a spec describes, train it, and hand the record to
the store (which skips runs already stored)."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import psutil
import torch
from accelerate import Accelerator
from datasets import DatasetDict

from .adapter_io import load_adapter, save_adapter
from .data import fingerprint, load_sst2, tokenize
from .experiments import HEAD, PROFILES, Profile, RunSpec, expand, spec
from .lora import apply_lora, lora_scaling, train_only
from .models import layer_count, load_model, load_tokenizer
from .params import count_parameters
from .store import Memory, Params, Provenance, ResultStore, RunRecord, Timing, now
from .train import TrainConfig, distributed_state, make_loaders, predict, train


def profile_named(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}; choose one of {sorted(PROFILES)}.")
    return PROFILES[name]


def resolve(profile: str, names: list[str], seeds: list[int]) -> list[RunSpec]:
    """The run specs for experiment and suite names, checked against the model's shape (no data loaded)."""
    prof = profile_named(profile)
    num_layers = layer_count(prof.model)
    specs = [
        spec(prof, name, seed, label) for label, name in expand(prof, names, num_layers) for seed in seeds
    ]
    for s in specs:
        if s.experiment.method == "lora":
            s.experiment.lora_config(num_layers, prof.lora_dropout)
    return specs


def prepare_data(profile: Profile, data_source: str | None = None) -> tuple[DatasetDict, object]:
    """SST-2, cut to the profile's evaluation budget and tokenized, with the tokenizer."""
    tokenizer = load_tokenizer(profile.model)
    data = load_sst2(data_source)
    if profile.eval_limit is not None and profile.eval_limit < len(data["validation"]):
        data["validation"] = data["validation"].shuffle(seed=0).select(range(profile.eval_limit))
    return tokenize(data, tokenizer, profile.max_length), tokenizer


def training_subset(data: DatasetDict, examples: int | None) -> DatasetDict:
    """The first ``examples`` of a fixed shuffle of the training split: the same subset in every run."""
    if examples is None or examples >= len(data["train"]):
        return data
    return DatasetDict(
        train=data["train"].shuffle(seed=0).select(range(examples)), validation=data["validation"]
    )


def build(profile: Profile, run: RunSpec):
    """The model for a run, with the right parts trainable."""
    model = load_model(profile.model, seed=run.seed)
    exp = run.experiment
    if exp.method == "head":
        train_only(model, HEAD)
    elif exp.method == "lora":
        apply_lora(model, exp.lora_config(layer_count(profile.model), profile.lora_dropout))
    return model


def run_one(
    run: RunSpec, data: DatasetDict, tokenizer, progress: bool = True
) -> tuple[RunRecord, torch.nn.Module]:
    """Train and evaluate one run; return its record and the trained model."""
    profile, exp = run.profile, run.experiment
    data = training_subset(data, exp.train_examples)
    started, provenance = now(), Provenance.here()  # the code as it was when the run started
    baseline = psutil.Process().memory_info().rss  # data loaded, model not yet built
    model = build(profile, run)
    params = count_parameters(model)
    cfg = TrainConfig(
        lr=exp.lr,
        lr_ratio_b=exp.lr_ratio_b,
        epochs=exp.epochs,
        batch_size=profile.batch_size,
        seed=run.seed,
        progress=progress,
    )
    lora = getattr(model, "lora_config", None)
    out = train(model, data, tokenizer, cfg)
    config = {
        "experiment": exp.name,
        "method": exp.method,
        "variant": exp.variant if lora else None,
        "rank": exp.r,
        "alpha": lora.alpha if lora else None,
        "scaling_rule": exp.scaling_rule,
        "scale": lora_scaling(lora.r, lora.alpha, lora.rslora) if lora else None,
        "layers": lora.layers if lora else None,
        "target_modules": list(lora.target_modules) if lora else None,
        "trainable_modules": list(HEAD) if exp.method != "full" else "all",
        "seed": run.seed,
        "model": profile.model,
        "profile": profile.name,
        "train_examples": len(data["train"]),
        "validation_examples": len(data["validation"]),
        "data_sha256": {split: fingerprint(data[split]) for split in ("train", "validation")},
        "hyperparameters": vars(cfg)
        | {"max_length": profile.max_length, "lora_dropout": profile.lora_dropout if lora else None},
    }
    record = RunRecord(
        profile=profile.name,
        experiment=exp.name,
        seed=run.seed,
        config=config,
        settings=profile.fixed_settings(exp.method),
        metrics={
            "validation_accuracy": out.validation_accuracy,
            "history": out.history,
            "loss_curve": out.loss_curve,
        },
        params=Params(params.trainable, params.total, params.lora),
        timing=Timing(
            out.train_seconds_per_epoch,
            out.examples_per_second,
            started,
            now(),
            out.padding_fraction,
            out.padding_fraction_random,
            list(os.getloadavg()),
            out.mean_load,
        ),
        memory=Memory(out.peak_memory_bytes, 0 if out.device.startswith("cuda") else baseline),
        provenance=Provenance(
            **{
                **vars(provenance),
                "device": out.device,
                "mixed_precision": out.mixed_precision,
                "num_processes": out.num_processes,
            }
        ),
        predictions=labels_text(out.predictions),
        validation_labels=labels_text(data["validation"]["label"]),
        probabilities=out.probabilities,
    )
    return record, model


def labels_text(labels) -> str:
    """Class labels (0-9) as one compact string, ``"0110..."``: 872 predictions in a line of JSON."""
    return "".join(str(int(y)) for y in labels)


def run_suite(
    profile: str,
    names: list[str],
    seeds: list[int],
    results: str | Path | None = None,
    data_source: str | None = None,
    force: bool = False,
    progress: bool = True,
    isolate: bool = False,
) -> list[RunRecord]:
    """Run every (experiment, seed) that has no up-to-date stored record; return all their records.
    With ``isolate``, each run trains in a process of its own (the command line's default), so that its
    time and peak memory are not inflated by the runs before it."""
    specs = resolve(profile, names, seeds)  # a bad name or layer fails here, before any data loads
    store = ResultStore(profile, results)
    todo = [s for s in specs if force or not store.find(s)]
    for s in todo:
        if store.path(s).exists():
            print(
                f"{s.experiment.name} seed {s.seed} is stored without predictions or with other {profile} "
                f"settings; running it again (the earlier record moves to {store.folder / 'superseded'}).",
                file=sys.stderr,
            )
    main = distributed_state().is_main_process
    if main:
        store.remove_partial_writes()
    if isolate and len(todo) > 1:
        load_sst2(data_source)  # a bad data folder or TSV fails here, once, not in every child
        for s in todo:
            run_in_child(s, results, data_source, progress)
        todo = []
    if todo:
        data, tokenizer = prepare_data(specs[0].profile, data_source)
        for i, s in enumerate(todo, 1):
            if progress:
                print(
                    f"[{i}/{len(todo)}] {profile}: {s.experiment.name} seed {s.seed}",
                    file=sys.stderr,
                    flush=True,
                )
            record, model = run_one(s, data, tokenizer, progress)
            if main:
                store.write(record, partial(save_adapter, model) if hasattr(model, "lora_config") else None)
            distributed_state().wait_for_everyone()
    return [store.load(store.path(s)) for s in specs]


def run_in_child(run: RunSpec, results: str | Path | None, data_source: str | None, progress: bool) -> None:
    """One run in a fresh Python process (the command line, as a user would type it)."""
    command = [sys.executable, "-m", "lora_tutorial", "run", "--profile", run.profile.name, "--force"]
    command += ["--experiments", run.experiment.name, "--seeds", str(run.seed)]
    command += (["--results", str(results)] if results else []) + (
        ["--data", str(data_source)] if data_source else []
    )
    if subprocess.run(command + ([] if progress else ["--no-progress"])).returncode:
        raise ValueError(
            f"{run.experiment.name} seed {run.seed} failed in its own process (its error is above)."
        )


def recompute_predictions(
    profile: str, results: str | Path | None = None, data_source: str | None = None
) -> list[Path]:
    """Add the per-example predictions to stored LoRA runs that lack them, from their saved adapters.
    The recomputed accuracy must equal the stored one, else nothing is written for that run."""
    prof, store = profile_named(profile), ResultStore(profile, results)
    todo = [(p, r) for p, r in store.records() if not r.predictions and r.adapter]
    if not todo:
        return []
    data, tokenizer = prepare_data(prof, data_source)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    labels = torch.tensor(data["validation"]["label"])
    written = []
    for path, record in todo:
        model = load_adapter(load_model(prof.model, seed=record.seed), path.parent / record.adapter)
        _, loader = make_loaders(data, tokenizer, TrainConfig())
        model, loader = accelerator.prepare(model, loader)
        preds = predict(model, loader, accelerator).labels
        got = (preds == labels).float().mean().item()
        if round(record.accuracy * len(labels)) != round(got * len(labels)):
            print(
                f"{path}: recomputed accuracy {got:.4f} differs from the stored {record.accuracy:.4f}; "
                "left as it was.",
                file=sys.stderr,
            )
            continue
        record.predictions, record.validation_labels = labels_text(preds), labels_text(labels)
        here = {k: v for k, v in vars(Provenance.here()).items() if k != "predictions_recomputed"}
        record.provenance.predictions_recomputed = here | {"at": now(), "from": record.adapter}
        store.update(path, record)
        written.append(path)
    return written
