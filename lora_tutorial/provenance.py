"""Where and with what a run was made: package versions, machine, git commit, and when."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "peft", "lora-tutorial")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
