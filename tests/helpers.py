"""Shared test helpers."""

import subprocess
import sys

import torch

from lora_tutorial.cli import main


def cli(*args, cwd=None, **kwargs):
    """The command line in a new interpreter, as a shell runs it."""
    command = [sys.executable, "-m", "lora_tutorial", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, **kwargs)


def typed(capsys, *args) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the command line called in this process."""
    try:
        main(list(args))
        status = 0
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def randomize_lora(model, seed=1):
    """Give every LoRA B (and the head) non-zero values so that the update actually matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B") or p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
