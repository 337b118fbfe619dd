"""Stored runs: one typed record per run, one JSON file per record, and the folder that holds them.

``results/<profile>/<experiment>__seed<s>.json`` (the experiment's full name: method, rank, projections,
layers, epochs, training examples, learning rate), its adapter in ``adapters/<same name>/``. A record is
written atomically; a re-run never deletes what an earlier run computed (the older record moves to
``superseded/<its finish time>/``).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import torch

from .errors import UsageError
from .experiments import PROFILES, Experiment, Profile, RunSpec, suites
from .models import layer_count

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "peft", "lora-tutorial")
RESULTS_ENV = "LORA_TUTORIAL_RESULTS"
CHILD_ENV = (
    "LORA_TUTORIAL_CHILD"  # set in a run's own process: its parent holds the run's lock, prints its line
)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_results() -> Path:
    """The results folder: ``$LORA_TUTORIAL_RESULTS``, else the nearest ``results/`` in the current folder
    or above it (chapters run in ``book/``), else ``./results``."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    return next(
        (p / "results" for p in (Path.cwd(), *Path.cwd().parents) if (p / "results").is_dir()),
        Path("results"),
    )


@dataclass(frozen=True)
class DataUsed:
    """What a run trained and was evaluated on: a SHA-256 per split (see :func:`data.fingerprint`), the
    number of training examples and the validation labels in order."""

    sha256: dict[str, str]
    train_examples: int
    validation_labels: str

    def matches(self, record: RunRecord) -> bool:
        """Whether ``record`` was made on this data. Records from before fingerprints were stored are
        matched on what they do store: the number of training examples and every validation label."""
        stored = record.config.get("data_sha256")
        if stored is not None:
            return stored == self.sha256
        return (record.config.get("train_examples"), record.validation_labels) == (
            self.train_examples,
            self.validation_labels,
        )


@dataclass
class Params:
    """Parameter counts of a run: trainable, total, and LoRA's own (0 for full fine-tuning)."""

    trainable: int
    total: int
    lora: int


@dataclass
class Timing:
    """Wall-clock facts of a run; a ``mean_load_average`` well above the core count: the CPU was shared."""

    train_seconds_per_epoch: float
    examples_per_second: float
    started: str
    finished: str
    padding_fraction: float = 0.0
    padding_fraction_random: float = 0.0
    load_average: list[float] | None = None  # 1, 5, 15 min, at the end
    mean_load_average: float | None = None  # 1 min, sampled while training

    @property
    def run_seconds(self) -> float:
        return (datetime.fromisoformat(self.finished) - datetime.fromisoformat(self.started)).total_seconds()


@dataclass
class Memory:
    """Peak memory of a run, and on CPU the baseline it is measured above."""

    peak_bytes: int  # CUDA max allocated, or the process's peak RSS on CPU
    baseline_bytes: int | None = None  # RSS with the data loaded, before the model was built (CPU)


@dataclass
class Provenance:
    """Where and with what a run was made."""

    versions: dict
    machine: dict
    git_commit: str | None
    git_dirty: bool | None
    device: str = "cpu"
    mixed_precision: str = "no"
    num_processes: int = 1
    predictions_recomputed: dict | None = None  # set when predictions were added later from the adapter

    @classmethod
    def here(cls, **run) -> Provenance:
        """Package versions, machine and git commit of the code as it is now."""

        def v(name: str) -> str | None:
            try:
                return version(name)
            except PackageNotFoundError:
                return None

        try:
            git = dict(capture_output=True, text=True, cwd=Path(__file__).parent)
            commit = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **git).stdout.strip()
            dirty = bool(
                subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout.strip()
            )
        except (OSError, subprocess.CalledProcessError):
            commit, dirty = None, None
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return cls(
            versions={p: v(p) for p in PACKAGES} | {"python": platform.python_version()},
            machine={
                "platform": platform.platform(),
                "processor": platform.machine(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "gpu": gpu,
            },
            git_commit=commit,
            git_dirty=dirty,
            **run,
        )


@dataclass
class RunRecord:
    """Everything one run stored: what ran, how it scored (with its prediction for every validation
    sentence), how long it took, how much memory it used, and where it was made."""

    profile: str
    experiment: str  # the resolved name (Experiment.parse gives it back)
    seed: int
    config: dict  # the model and optimiser as built: LoRA config, hyper-parameters, data sizes
    settings: dict  # the profile's fixed settings the run was made with (see Profile.fixed_settings)
    metrics: dict  # validation_accuracy, per-epoch history, loss_curve
    params: Params
    timing: Timing
    memory: Memory
    provenance: Provenance
    predictions: str | None = None  # predicted label per validation example, one character each
    validation_labels: str | None = None  # the true labels, in the same order
    adapter: str | None = None  # the adapter's folder, relative to the record's
    probabilities: list[float] | None = None  # P(positive) per validation example, in the same order
    migrated_from: str | None = None  # the file a record of an earlier layout was converted from

    @property
    def spec(self) -> Experiment:
        return Experiment.parse(self.experiment)

    @property
    def accuracy(self) -> float:
        return self.metrics["validation_accuracy"]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> RunRecord:
        if "experiment" not in d:
            raise UsageError("not a run record of lora_tutorial (it has no 'experiment' field)")
        parts = {"params": Params, "timing": Timing, "memory": Memory, "provenance": Provenance}
        return cls(**{k: parts[k](**v) if k in parts else v for k, v in d.items()})


def is_stale(record: RunRecord, profile: Profile) -> bool:
    """Made with fixed settings (model, batch size, sequence length, evaluation set, LoRA dropout) other
    than the profile's now."""
    fixed = profile.fixed_settings(record.config["method"])
    return any(record.settings.get(k, KeyError) != v for k, v in fixed.items())


CONTENTION_MARGIN = 0.5  # cores: a run's own threads load the machine to about its core count


def is_contended(record: RunRecord) -> bool:
    """Whether the run lacked the whole CPU while it trained: other work shared it (the mean 1-minute load
    average during training, or for runs that did not sample it the 5-minute one at the end, exceeded the
    core count by more than half a core), or it was limited to fewer threads than cores. Its times are
    then left out of time tables."""
    if record.provenance.device.startswith("cuda"):
        return False
    timing, cpus = record.timing, record.provenance.machine.get("cpus") or 1
    if (record.provenance.machine.get("torch_threads") or cpus) + CONTENTION_MARGIN < cpus:
        return True
    load = (
        timing.mean_load_average
        if timing.mean_load_average is not None
        else (timing.load_average or [0, 0])[1]
    )
    return load > cpus + CONTENTION_MARGIN


class ResultStore:
    """The stored runs of one profile: paths, atomic writes, lookup, staleness, superseding, tables."""

    def __init__(self, profile: str, root: str | Path | None = None) -> None:
        self.profile, self.root = profile, Path(root) if root is not None else default_results()
        self.folder = self.root / profile

    def path(self, spec: RunSpec) -> Path:
        return self.folder / f"{spec.stem}.json"

    def load(self, path: Path) -> RunRecord:
        try:
            return RunRecord.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise UsageError(
                f"{path} is not a readable run record ({e.__class__.__name__}: {e}); move it aside, or "
                "re-run its experiment with --force (the broken file is kept under superseded/)."
            ) from None

    def records(self, superseded: bool = False) -> list[tuple[Path, RunRecord]]:
        """Every readable stored record (and with ``superseded``, the replaced ones too), by path; an
        unreadable file is skipped with a warning that names it."""
        paths = sorted(self.folder.glob("*.json"))
        if superseded:
            paths += sorted(self.folder.glob("superseded/*/*.json"))
        out = []
        for p in paths:
            try:
                out.append((p, self.load(p)))
            except UsageError as e:
                warnings.warn(f"skipped: {e}", stacklevel=2)
        return out

    def find(self, spec: RunSpec, data: DataUsed | None = None) -> RunRecord | None:
        """The stored, up-to-date record of this run: same experiment and seed, the profile's fixed
        settings, per-example predictions, and (given ``data``) made on the same data."""
        path = self.path(spec)
        if not path.exists():
            return None
        try:
            record = self.load(path)
        except UsageError:
            return None  # unreadable: run again (write() moves the broken file aside)
        current = record.predictions and not is_stale(record, spec.profile)
        return record if current and (data is None or data.matches(record)) else None

    def check_writable(self) -> None:
        """Fail now, not after training, if records cannot be written here."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".tmp"):
                pass
        except OSError as e:
            raise UsageError(
                f"Cannot write results to {self.folder} ({e.strerror}); pick a writable folder with "
                f"--results or ${RESULTS_ENV}."
            ) from None

    @contextmanager
    def lock(self, spec: RunSpec, wait: bool = False):
        """Hold the run's lock (``locks/<stem>.lock``) while the block trains it; yields False, without
        waiting, if another process holds it (with ``wait``, waits for it). The lock is released when
        the process ends, however it ends."""
        folder = self.folder / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{spec.stem}.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def remove_partial_writes(self) -> None:
        for stale in self.folder.glob("*.tmp"):
            stale.unlink()  # left by a run that was killed mid-write

    def write(self, record: RunRecord, save_adapter: Callable[[Path], object] | None = None) -> Path:
        """Store ``record`` (and its adapter, written by ``save_adapter(folder)``), moving aside any
        earlier record of the same run."""
        path = self.folder / f"{record.experiment}__seed{record.seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.supersede(path)
        if save_adapter is not None:
            adapter = path.parent / "adapters" / path.stem
            tmp = adapter.with_name(adapter.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_adapter(tmp)
            shutil.rmtree(adapter, ignore_errors=True)
            tmp.rename(adapter)
            record = replace(record, adapter=str(adapter.relative_to(path.parent)))
        write_json_atomic(path, record.to_json())
        return path

    def update(self, path: Path, record: RunRecord) -> None:
        """Rewrite a stored record in place (e.g. with predictions recomputed from its adapter)."""
        write_json_atomic(path, record.to_json())

    def supersede(self, path: Path) -> None:
        """Move a stored record (and its adapter) to ``superseded/<its finish time>/``; an unreadable one
        to ``superseded/unreadable-<now>/``. Nothing there is ever overwritten."""
        if not path.exists():
            return
        try:
            old = json.loads(path.read_text())
            stamp, adapter = old["timing"]["finished"], old.get("adapter")
        except (ValueError, KeyError, TypeError):
            stamp, adapter = f"unreadable-{now()}", None
        base = path.parent / "superseded" / stamp.replace(":", "")
        folder, n = base, 1
        while (folder / path.name).exists():  # the same run superseded twice with one finish time
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
        (folder / "adapters").mkdir(parents=True, exist_ok=True)
        if adapter and (path.parent / adapter).exists():
            (path.parent / adapter).rename(folder / adapter)
        path.rename(folder / path.name)

    def frame(self, superseded: bool = False) -> pd.DataFrame:
        """Every stored run as a table row (see :meth:`rows`)."""
        return pd.DataFrame(self.rows(superseded))

    def rows(self, superseded: bool = False) -> list[dict]:
        """Every stored run as a flat dict. ``experiment`` is the short name a suite of the profile uses
        for the run (``lora-r16``) where there is one, else its full name; ``current`` says whether it was
        made with the profile's fixed settings and not replaced, ``used`` whether the profile's suites
        use it (the others chose settings or were earlier trials), ``contended`` whether other work
        shared the CPU while it trained (its times are not the machine's)."""
        profile = PROFILES.get(self.profile)
        labels = {}
        if profile is not None:
            for pairs in suites(profile, layer_count(profile.model)).values():
                for label, name in pairs:
                    labels.setdefault(Experiment.parse(name).resolve(profile).name, label)
        rows = []
        for path, r in self.records(superseded):
            hp = r.config["hyperparameters"]
            old = "superseded" in path.relative_to(self.folder).parts
            current = bool(profile) and not old and not is_stale(r, profile)
            rows.append(
                {
                    **{
                        k: v
                        for k, v in r.config.items()
                        if k not in ("hyperparameters", "experiment", "profile")
                    },
                    "experiment": labels.get(r.experiment, r.experiment),
                    "name": r.experiment,
                    "profile": r.profile,
                    "lr": hp["lr"],
                    "epochs": hp["epochs"],
                    "lora_dropout": hp.get("lora_dropout"),
                    "validation_accuracy": r.accuracy,
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
                    "adapter": str((path.parent / r.adapter).resolve()) if r.adapter else None,
                    "file": str(path),
                }
            )
        return rows


def load_results(
    results: str | Path | None = None, profile: str = "cpu", superseded: bool = False
) -> pd.DataFrame:
    """A profile's stored runs as one DataFrame (see :meth:`ResultStore.frame`)."""
    return ResultStore(profile, results).frame(superseded)


def write_json_atomic(path: Path, record: dict) -> None:
    """Write to a temporary file, then rename: a reader never sees half a result."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
