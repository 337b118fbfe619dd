"""Let nbval execute the MyST Markdown chapters directly (read through jupytext), not their .ipynb twins,
and keep each chapter it ran without a failure, outputs included, in ``EXECUTED``: the book's build
(``tests/test_book.py``) renders those outputs instead of executing every chapter a second time."""

import jupytext
import nbformat
import nbval.plugin
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile

collect_ignore_glob = ["*.ipynb", "_ext/*"]
EXECUTED: dict[str, nbformat.NotebookNode] = {}  # chapter stem -> the notebook as nbval ran it


class MystNotebook(IPyNbFile):
    def collect(self):
        read = nbval.plugin.nbformat.read
        nbval.plugin.nbformat.read = lambda path, as_version=4: jupytext.read(path)
        self.ran, self.failed = 0, False
        try:
            yield from super().collect()
        finally:
            nbval.plugin.nbformat.read = read

    def teardown(self):
        super().teardown()
        code = sum(cell.cell_type == "code" for cell in self.nb.cells)
        if self.ran == code and not self.failed:
            EXECUTED[self.path.stem] = self.nb


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if isinstance(item, IPyNbCell) and isinstance(item.parent, MystNotebook) and report.when == "call":
        if report.passed:
            item.cell.outputs = item.test_outputs
            item.parent.ran += 1
        else:
            item.parent.failed = True
    return report


def pytest_collect_file(file_path, parent):
    opt = parent.config.option
    if (
        (opt.nbval or opt.nbval_lax)
        and file_path.suffix == ".md"
        and "jupytext:" in file_path.read_text()[:400]
    ):
        return MystNotebook.from_parent(parent, path=file_path)
