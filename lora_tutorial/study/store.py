"""The folder of stored runs: ``results/<profile>/<experiment>__seed<s>.json`` (the experiment's full name:
method, rank, projections, layers, epochs, training examples, learning rate), its adapter in
``adapters/<same name>/``. A record is written atomically; a re-run never deletes what an earlier run
computed (the older record moves to ``superseded/<its finish time>/``); a lock per run lets several
processes share the folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..errors import UsageError
from ..provenance import now
from .experiments import RunSpec, run_stem
from .records import DataUsed, RunRecord, is_stale

RESULTS_ENV = "LORA_TUTORIAL_RESULTS"
CHILD_ENV = (
    "LORA_TUTORIAL_CHILD"  # set in a run's own process: its parent holds the run's lock, prints its line
)


def default_results() -> Path:
    """The results folder: ``$LORA_TUTORIAL_RESULTS``, else the nearest ``results/`` in the current folder
    or above it (chapters run in ``book/``), else ``./results``."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    return next(
        (p / "results" for p in (Path.cwd(), *Path.cwd().parents) if (p / "results").is_dir()),
        Path("results"),
    )


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
        path = self.folder / f"{run_stem(record.experiment, record.seed)}.json"
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


def write_json_atomic(path: Path, record: dict) -> None:
    """Write to a temporary file, then rename: a reader never sees half a result."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
