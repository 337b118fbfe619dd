"""Let nbval execute the MyST Markdown chapters directly (read through jupytext), not their .ipynb twins."""

import jupytext
import nbval.plugin
from nbval.plugin import IPyNbFile

collect_ignore_glob = ["*.ipynb", "_ext/*"]


class MystNotebook(IPyNbFile):
    def collect(self):
        read = nbval.plugin.nbformat.read
        nbval.plugin.nbformat.read = lambda path, as_version=4: jupytext.read(path)
        try:
            yield from super().collect()
        finally:
            nbval.plugin.nbformat.read = read


def pytest_collect_file(file_path, parent):
    opt = parent.config.option
    if (
        (opt.nbval or opt.nbval_lax)
        and file_path.suffix == ".md"
        and "jupytext:" in file_path.read_text()[:400]
    ):
        return MystNotebook.from_parent(parent, path=file_path)
