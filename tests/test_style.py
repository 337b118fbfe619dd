"""Style is enforced: ruff's lint and format over the library, the tests and the chapters' code cells
(their .ipynb twins), with the settings in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("command", [["check", "--output-format", "concise"], ["format", "--check"]])
def test_ruff(command):
    out = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, f"ruff {command[0]} . reports:\n{out.stdout}{out.stderr}"
