"""Run experiments: prepare the data, build the model a spec describes, train it, and hand the record to
the store (which skips runs already stored)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import psutil
import torch
from accelerate import Accelerator
from datasets import DatasetDict

from ..adapter_io import load_adapter, save_adapter
from ..data import LengthGroupedBatches, fingerprint, load_sst2, padding_fraction, random_batches, tokenize
from ..errors import UsageError
from ..lora import apply_lora, train_only
from ..models import layer_count, load_model, load_tokenizer
from ..params import count_parameters
from ..provenance import Provenance, now
from ..train import TrainConfig, distributed_state, make_loaders, predict, train
from .experiments import HEAD, PROFILES, Profile, RunSpec, expand, spec
from .monitor import ResourceMonitor
from .records import DataUsed, Memory, Params, RunRecord, Timing
from .store import CHILD_ENV, ResultStore


def resolve(profile: Profile, names: list[str], seeds: list[int]) -> list[RunSpec]:
    """The run specs for experiment and suite names, checked against the model's shape (no data loaded)."""
    num_layers = layer_count(profile.model)
    specs = [
        spec(profile, name, seed, label)
        for label, name in expand(profile, names, num_layers)
        for seed in seeds
    ]
    for s in specs:
        if s.experiment.method == "lora":
            s.experiment.lora_config(num_layers, profile.lora_dropout)
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
        weight_decay=profile.weight_decay,
        warmup_ratio=profile.warmup_ratio,
        max_grad_norm=profile.max_grad_norm,
        seed=run.seed,
        progress=progress,
    )
    lora = getattr(model, "lora_config", None)
    with ResourceMonitor(torch.device("cuda" if torch.cuda.is_available() else "cpu")) as monitor:
        out = train(model, data, tokenizer, cfg)
    lengths = data["train"]["length"]  # how much padding length-grouped batches save over random ones
    grouped = padding_fraction(lengths, iter(LengthGroupedBatches(lengths, cfg.batch_size, seed=cfg.seed)))
    shuffled = padding_fraction(lengths, iter(random_batches(len(lengths), cfg.batch_size, cfg.seed)))
    config = {
        "experiment": exp.name,
        "method": exp.method,
        "variant": exp.prefix if lora else None,  # the name's word: the layer variant, or loraplus
        "rank": exp.r,
        "alpha": lora.alpha if lora else None,
        "scaling_rule": exp.scaling_rule,
        "scale": lora.scaling if lora else None,
        "layers": lora.layers if lora else None,
        "target_modules": list(lora.target_modules) if lora else None,
        "trainable_modules": list(HEAD) if exp.method != "full" else "all",
        "seed": run.seed,
        "model": profile.model,
        "profile": profile.name,
        "train_examples": len(data["train"]),
        "validation_examples": len(data["validation"]),
        "data_sha256": data_used(data, None).sha256,
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
            grouped,
            shuffled,
            list(os.getloadavg()),
            monitor.mean_load,
        ),
        memory=Memory(monitor.peak, 0 if out.device.startswith("cuda") else baseline),
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


MAX_SEED = 2**32 - 1  # numpy's seeds


def run_suite(
    profile: Profile,
    names: list[str],
    seeds: list[int],
    results: str | Path | None = None,
    data_source: str | None = None,
    force: bool = False,
    progress: bool = True,
    isolate: bool = False,
) -> list[RunRecord]:
    """Run every (experiment, seed) that has no up-to-date stored record for the same data; return all their
    records. With ``isolate``, each run trains in a process of its own (the command line's default), so that
    its time and peak memory are not inflated by the runs before it. Several processes may share one results
    folder: each run is locked while it trains, and a process skips the runs another one is training (and
    waits for them at the end)."""
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise UsageError(f"Seed {bad[0]} is out of range; use seeds from 0 to {MAX_SEED}.")
    specs = resolve(profile, names, seeds)  # a bad name or layer fails here, before any data loads
    store = ResultStore(profile.name, results)
    store.check_writable()  # before hours of training, not after
    data, tokenizer = prepare_data(profile, data_source)  # a bad --data fails before any skip
    budgets = {s.experiment.train_examples for s in specs}
    used = {n: data_used(data, n) for n in budgets}  # keyed by a run's number of training examples
    main = distributed_state().is_main_process
    if main:
        store.remove_partial_writes()
    waiting = [s for s in specs if force or not store.find(s, used[s.experiment.train_examples])]
    isolate = isolate and len(waiting) > 1  # one run trains here: no second interpreter to start
    # runs are locked unless this is a child (its parent holds the lock) or one of a launcher's processes
    locking = distributed_state().num_processes == 1 and not os.environ.get(CHILD_ENV)
    for again in (False, True):  # first pass: what no other process is training; then wait for those
        busy = []
        for s in waiting:
            with store.lock(s, wait=again) if locking else nullcontext(True) as held:
                if not held:
                    busy.append(s)
                    continue
                stored = store.find(s, used[s.experiment.train_examples])
                if stored and not (force and not again):
                    continue  # another process finished it meanwhile
                if store.path(s).exists():
                    why = (
                        "as --force asks"
                        if stored
                        else "its record lacks predictions or was made on other data or settings"
                    )
                    print(
                        f"{s.experiment.name} seed {s.seed}: running it again, {why}; the earlier record "
                        f"moves to {store.folder / 'superseded'}.",
                        file=sys.stderr,
                    )
                if isolate:
                    run_in_child(s, results, data_source, progress)
                    continue
                if progress:
                    print(f"{profile.name}: {s.experiment.name} seed {s.seed}", file=sys.stderr, flush=True)
                record, model = run_one(s, data, tokenizer, progress)
                if main:
                    store.write(
                        record, partial(save_adapter, model) if hasattr(model, "lora_config") else None
                    )
                distributed_state().wait_for_everyone()
        waiting = busy
    return [store.load(store.path(s)) for s in specs]


def data_used(data: DatasetDict, examples: int | None) -> DataUsed:
    """What a run with ``examples`` training examples trains and is evaluated on."""
    data = training_subset(data, examples)
    return DataUsed(
        {split: fingerprint(data[split]) for split in ("train", "validation")},
        len(data["train"]),
        labels_text(data["validation"]["label"]),
    )


def run_in_child(run: RunSpec, results: str | Path | None, data_source: str | None, progress: bool) -> None:
    """One run in a fresh Python process (the command line, as a user would type it), which ends if this
    process ends; the caller holds the run's lock. The child finds the profile by name, so it must be the
    registered one."""
    if PROFILES.get(run.profile.name) != run.profile:
        raise UsageError(
            f"Profile {run.profile.name!r} differs from the one registered under that name, which a run in "
            "a process of its own would use; register it in PROFILES under a name of its own, or pass "
            "isolate=False."
        )
    command = [sys.executable, "-m", "lora_tutorial", "run", "--profile", run.profile.name, "--force"]
    command += ["--experiments", run.experiment.name, "--seeds", str(run.seed)]
    command += (["--results", str(results)] if results else []) + (
        ["--data", str(data_source)] if data_source else []
    )
    env = os.environ | {CHILD_ENV: "1"}
    child = subprocess.run(
        command + ([] if progress else ["--no-progress"]), env=env, preexec_fn=die_with_parent
    )
    if child.returncode:
        raise UsageError(
            f"{run.experiment.name} seed {run.seed} failed in its own process (its error is above)."
        )


def die_with_parent() -> None:
    """In a child process, before it starts: ask Linux to end it when its parent ends (SIGTERM)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def recompute_predictions(
    profile: Profile, results: str | Path | None = None, data_source: str | None = None
) -> list[Path]:
    """Add the per-example predictions and probabilities to stored LoRA runs that lack them, from their
    saved adapters. The recomputed predictions must equal the stored ones (or, where none are stored, the
    recomputed accuracy the stored accuracy), else nothing is written for that run."""
    store = ResultStore(profile.name, results)
    todo = [(p, r) for p, r in store.records() if r.adapter and not (r.predictions and r.probabilities)]
    if not todo:
        return []
    data, tokenizer = prepare_data(profile, data_source)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    labels = torch.tensor(data["validation"]["label"])
    written = []
    for path, record in todo:
        model = load_adapter(load_model(profile.model, seed=record.seed), path.parent / record.adapter)
        _, loader = make_loaders(data, tokenizer, TrainConfig())
        model, loader = accelerator.prepare(model, loader)
        out = predict(model, loader, accelerator)
        got = (out.labels == labels).float().mean().item()
        same = (
            labels_text(out.labels) == record.predictions
            if record.predictions
            else round(record.accuracy * len(labels)) == round(got * len(labels))
        )
        if not same:
            print(
                f"{path}: recomputed predictions (accuracy {got:.4f}) differ from the stored ones (accuracy "
                f"{record.accuracy:.4f}); left as it was.",
                file=sys.stderr,
            )
            continue
        added = [k for k in ("predictions", "probabilities") if not getattr(record, k)]
        record.predictions, record.validation_labels = labels_text(out.labels), labels_text(labels)
        record.probabilities = out.probabilities[:, 1].tolist()
        here = {k: v for k, v in vars(Provenance.here()).items() if k != "predictions_recomputed"}
        record.provenance.predictions_recomputed = here | {
            "at": now(),
            "from": record.adapter,
            "added": added,
        }
        store.update(path, record)
        written.append(path)
    return written
