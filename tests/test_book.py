"""The book: builds with warnings as errors, every chapter has figures and no errors, math renders
in a real (headless) browser, and the Colab twins match their MyST sources."""

import ast
import copy
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml
from bs4 import BeautifulSoup

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "book").glob("*.md") if "jupytext:" in p.read_text()[:400])
APPENDICES = {"provenance"}  # reference material: no figures, math or exercises required
CHAPTERS = [p for p in NOTEBOOKS if p.stem not in APPENDICES]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]


def staged_sources(folder: Path, executed: dict[str, nbformat.NotebookNode]) -> Path:
    """The book's sources with every chapter replaced by the notebook nbval executed in this session
    (``book/conftest.py``), to be built without executing again; the repository itself unless nbval
    ran every chapter without a failure."""
    if set(executed) != {p.stem for p in NOTEBOOKS}:
        return ROOT
    skip = shutil.ignore_patterns("*.ipynb", "__pycache__", "conftest.py", *(f"{s}.md" for s in executed))
    shutil.copytree(ROOT / "book", folder / "book", ignore=skip)
    for stem, nb in executed.items():
        nbformat.write(nb, folder / "book" / f"{stem}.ipynb")
    for name in ("_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, folder)
    (folder / "lora_tutorial").symlink_to(ROOT / "lora_tutorial")  # the chapters' literalinclude
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config["exclude_patterns"].remove("book/*.ipynb")
    (folder / "_config.yml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="session")
def html(tmp_path_factory, pytestconfig) -> Path:
    out = tmp_path_factory.mktemp("book")
    chapters = pytestconfig.pluginmanager.get_plugin(str(ROOT / "book" / "conftest.py"))
    source = staged_sources(tmp_path_factory.mktemp("source"), getattr(chapters, "EXECUTED", {}))
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run(
        [str(jb), "build", str(source), "-W", "-n", "--keep-going", "--path-output", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "_build" / "html"


def page(html: Path, chapter: Path) -> BeautifulSoup:
    return BeautifulSoup((html / "book" / f"{chapter.stem}.html").read_text(), "html.parser")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_figures_and_no_errors(html, chapter):
    soup = page(html, chapter)
    outputs = soup.select("div.cell_output")
    assert outputs, "no executed outputs"
    assert soup.select("div.cell_output img"), "no figure"
    uncaptioned = [img["src"] for img in soup.select("div.cell_output img") if not img.find_parent("figure")]
    assert not uncaptioned, f"figures without a caption (mystnb figure metadata): {uncaptioned}"
    assert all(f.find("figcaption") for f in soup.select("div.cell_output figure")), (
        "a figure lacks its caption"
    )
    assert not soup.select(".output.error, .output.traceback"), "an error in the output"
    printed = " ".join(o.get_text() for o in outputs)
    warned = re.findall(r"\w*Warning: .{0,80}|site-packages/\S+", printed)
    assert not warned, f"warnings printed into the page: {warned}"
    assert not soup.select("div.cell_output .output.stderr"), "something written to stderr is in the page"
    assert "Traceback" not in soup.get_text()
    assert soup.select("span.math, div.math"), "no math"
    assert "Exercises" in soup.get_text(), "no exercises"
    assert soup.select(".dropdown"), "no hidden solutions"


#: What a reader should never see in a page's prose or output: a raw experiment name (except in the
#: provenance appendix, which lists the runs by name), a missing value printed as nan, an integer printed
#: as a float ("67349.0", "0.0e+00"), a float with all its digits.
UNREADABLE = {
    "an experiment name": re.compile(r"\b(?:lora|rslora|dora|loraplus|pissa)-r\d+(?:-[a-z0-9]+)*|\w@\d"),
    "nan": re.compile(r"\bnan\b", re.IGNORECASE),
    "an integer printed as a float": re.compile(r"(?<![\d.])\d{3,}\.0\b(?!\.)|\b0\.0e[+-]00\b"),
    "a float with six or more decimals": re.compile(r"(?<![\d.])\d+\.\d{6,}\b"),
}


def reader_text(soup: BeautifulSoup) -> str:
    """The page as a reader reads it: prose, tables and printed output; not the code cells' source."""
    soup = copy.copy(soup)
    for hidden in soup.select("div.cell_input, pre, code, script, style, div.highlight, nav, .toc"):
        hidden.decompose()
    return soup.get_text(" ")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=lambda p: p.stem)
def test_pages_show_labels_and_readable_numbers(html, chapter):
    text = reader_text(page(html, chapter))
    rules = {
        k: rx for k, rx in UNREADABLE.items() if chapter.stem not in APPENDICES or k != "an experiment name"
    }
    found = {what: sorted(set(rx.findall(text)))[:5] for what, rx in rules.items() if rx.search(text)}
    assert not found, f"{chapter.stem} shows {found}"


@pytest.mark.slow
def test_math_is_served_locally(html):
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    scripts = [s.get("src", "") for s in page(html, CHAPTERS[0]).find_all("script")]
    assert any(s.endswith("_static/mathjax/tex-chtml.js") for s in scripts)
    assert not any("cdn" in s for s in scripts if "mathjax" in s.lower())


def test_colab_twins_match_sources():
    for md in NOTEBOOKS:
        twin = md.with_suffix(".ipynb")
        assert twin.is_file(), f"{twin.name} missing: run `jupytext --sync {md.relative_to(ROOT)}`"
        a, b = jupytext.read(md), nbformat.read(twin, as_version=4)
        assert [(c.cell_type, c.source) for c in a.cells] == [(c.cell_type, c.source) for c in b.cells], (
            f"{twin.name} is out of date: run `jupytext --sync {md.relative_to(ROOT)}`"
        )
        assert "google.colab" in next(c for c in a.cells if c.cell_type == "code").source


def test_colab_cells_follow_the_repository_setting():
    """The repository is one setting (``repository`` in _config.yml): the launch buttons read it, and every
    chapter's Colab cell must clone the same URL and branch, so the study chapters find its stored results."""
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    setting = f'REPO, BRANCH = "{repo["url"]}", "{repo["branch"]}"'
    for md in NOTEBOOKS:
        cell = next(c for c in jupytext.read(md).cells if c.cell_type == "code").source
        assert setting in cell, (
            f"{md.name}: its Colab cell must set `{setting}` (the repository of _config.yml)"
        )
        assert "!git clone -q --depth 1 -b {BRANCH} {REPO} /content/lora-tutorial" in cell
        assert "%cd /content/lora-tutorial/book" in cell, f"{md.name}: its Colab cell must work in book/"


@pytest.fixture(scope="session")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    return exe


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_math_renders_in_a_browser(html, chromium, chapter):
    url = (html / "book" / f"{chapter.stem}.html").as_uri()
    with tempfile.TemporaryDirectory() as profile:
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
        ).stdout
    with tempfile.TemporaryDirectory() as profile:
        shot = html / "screenshots" / f"{chapter.stem}.png"
        shot.parent.mkdir(exist_ok=True)
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1280,2000",
                url,
            ],
            capture_output=True,
            timeout=120,
        )
    assert "mjx-container" in dom, "MathJax did not typeset the page"
    assert "<mjx-merror" not in dom, "MathJax reported a TeX error"
    assert shot.is_file()
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("chapter", sorted((ROOT / "book").glob("*.md")), ids=lambda p: p.stem)
def test_prose_names_no_chapter_by_a_typed_number(chapter):
    """Chapter numbers are generated ({doc}, {ref}, {numref}); a typed one goes stale when chapters move."""
    cells = jupytext.read(chapter).cells if "jupytext:" in chapter.read_text()[:400] else []
    prose = [c.source for c in cells if c.cell_type == "markdown"] or [chapter.read_text()]
    typed = [m.group(0) for text in prose for m in re.finditer(r"\b[Cc]hapters? \d+\b", text)]
    assert not typed, f"{chapter.name} types chapter numbers {typed}: link with {{doc}}`name` instead"


def documented_names() -> set[str]:
    """The names the API page documents: each automodule's :members: list, or all its public names."""
    text, names = (ROOT / "book" / "api.md").read_text(), set()
    for module, members in re.findall(r"automodule:: (\S+)\n(?:\s+:members:(.*))?", text):
        if members.strip():
            names |= {m.strip() for m in members.split(",")}
        else:
            mod = importlib.import_module(module)
            names |= {n for n, v in vars(mod).items() if getattr(v, "__module__", None) == module}
    return names


def test_api_page_documents_every_name_the_chapters_import():
    imported = set()
    for md in NOTEBOOKS:
        for cell in jupytext.read(md).cells:
            if cell.cell_type == "code":
                code = "\n".join(line for line in cell.source.splitlines() if line.strip()[:1] not in "%!")
                for node in ast.walk(ast.parse(code)):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_tutorial"):
                        module = importlib.import_module(node.module)
                        for (
                            a
                        ) in node.names:  # a submodule (``from lora_tutorial import stats``) is not a name
                            value = getattr(module, a.name, None)
                            if value is None:
                                value = importlib.import_module(f"{node.module}.{a.name}")
                            if not inspect.ismodule(value):
                                imported.add(a.name)
    missing = sorted(imported - documented_names())
    assert not missing, f"chapters use {missing}, which book/api.md does not document"


def test_the_publishing_workflow_builds_this_book_and_deploys_its_html():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = workflow["jobs"]["build"]["steps"]
    commands = "\n".join(s.get("run", "") for s in steps)
    assert "jupyter-book build . -W -n" in commands  # the build the tests check, warnings as errors
    assert "torch==2.13.0" in commands
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["steps"][-1]["uses"].startswith("actions/deploy-pages")
