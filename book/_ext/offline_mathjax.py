"""Serve MathJax from the book's own _static folder (from the ``django-static-mathjax`` package),
so that math renders without a CDN."""

import importlib.util
import shutil
from pathlib import Path


def copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    spec = importlib.util.find_spec("mathjax")
    src = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    dst = Path(app.outdir) / "_static" / "mathjax"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "tex-chtml.js", dst / "tex-chtml.js")
    shutil.copytree(
        src / "output" / "chtml" / "fonts" / "woff-v2",
        dst / "output" / "chtml" / "fonts" / "woff-v2",
        dirs_exist_ok=True,
    )


def setup(app):
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True}
