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


def test_property_docstrings_read_as_prose_in_the_api_page():
    """napoleon reads a property's first line "words: more" as a type and the book build (-n) fails on it;
    this finds such a line in seconds instead of at the end of the build."""
    import ast
    import re

    typed = []
    for path in sorted((ROOT / "lora_tutorial").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                getattr(d, "id", None) == "property" for d in node.decorator_list
            ):
                first = (ast.get_docstring(node) or "").split("\n")[0]
                if re.search(r"^[^`]*?: ", first):
                    typed.append(f"{path.relative_to(ROOT)}:{node.name}: {first}")
    assert not typed, "a property docstring's first line has 'words: ' (rephrase it):\n" + "\n".join(typed)
