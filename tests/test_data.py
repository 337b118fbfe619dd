"""SST-2 loading and validation, length-grouped batching."""

import os
from pathlib import Path

import pytest

from lora_tutorial import data as D

SHARED = Path(os.environ.get(D.ENV_VAR, Path(__file__).parents[1] / ".." / "shared" / "data" / "sst2"))


def write_split(folder: Path, name: str, lines: list[str], header: str = "sentence\tlabel") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.tsv"
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path):
    write_split(tmp_path, "train", ['a "quoted" film \t1', "it's dull\t0", "fine\t1"])
    write_split(tmp_path, "validation", ["good\t1", "bad\t0"])
    return tmp_path


def test_local_folder(folder):
    ds = D.load_sst2(folder)
    assert set(ds) == {"train", "validation"}
    assert ds["train"].column_names == ["sentence", "label"]
    assert ds["train"]["sentence"][0] == 'a "quoted" film '
    assert ds["train"]["label"] == [1, 0, 1]


def test_environment_variable(folder, monkeypatch):
    monkeypatch.setenv(D.ENV_VAR, str(folder))
    assert len(D.load_sst2()["validation"]) == 2


@pytest.mark.parametrize(
    "line, message",
    [
        ("no label here", r"train.tsv:3: expected 'sentence<TAB>label' \(2 fields\), got 1"),
        ("one\ttoo\tmany", r"train.tsv:3: expected 'sentence<TAB>label' \(2 fields\), got 3"),
        ("maybe\t2", r"train.tsv:3: label '2' is not 0 or 1"),
        ("maybe\tpositive", r"train.tsv:3: label 'positive' is not 0 or 1"),
    ],
)
def test_malformed_lines(folder, line, message):
    write_split(folder, "train", ["fine\t1", line])
    with pytest.raises(ValueError, match=message):
        D.load_sst2(folder)


def test_a_byte_that_is_not_utf8_is_named_with_its_file_and_line(folder):
    path = folder / "train.tsv"
    path.write_bytes(path.read_bytes() + b"caf\xe9 au lait\t1\n")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"train.tsv:5: byte 0xe9 at column 4 is not UTF-8; save the file"):
        D.load_sst2(folder)


def test_a_byte_order_mark_is_read_as_utf8(folder):
    path = folder / "train.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # what some editors write first
    assert D.load_sst2(folder)["train"]["label"] == [1, 0, 1]


def test_the_environment_variable_set_to_a_file_or_to_nothing_says_so(folder, monkeypatch):
    monkeypatch.setenv(D.ENV_VAR, str(folder / "train.tsv"))
    with pytest.raises(ValueError, match=r"train.tsv is a file; SST-2 is read from the folder"):
        D.load_sst2()
    monkeypatch.setenv(D.ENV_VAR, "")
    with pytest.raises(ValueError, match="LORA_TUTORIAL_SST2 is set but empty"):
        D.load_sst2()


def test_empty_split(folder):
    write_split(folder, "validation", [])
    with pytest.raises(ValueError, match="validation.tsv: the split is empty"):
        D.load_sst2(folder)


def test_bad_header(folder):
    write_split(folder, "train", ["fine\t1"], header="text\tlabel")
    with pytest.raises(ValueError, match=r"train.tsv:1: expected the header 'sentence<TAB>label'"):
        D.load_sst2(folder)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist; pass a folder with train.tsv"):
        D.load_sst2(tmp_path / "nowhere")
    with pytest.raises(
        ValueError, match=r"relative path is read from the current directory, .*: give an absolute one"
    ):
        D.load_sst2("nowhere")
    write_split(tmp_path, "train", ["fine\t1"])
    with pytest.raises(ValueError, match="lacks validation.tsv"):
        D.load_sst2(tmp_path)


def test_offline_hub_error_names_both_fixes(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    with pytest.raises(
        ValueError,
        match=r"connect to the internet.*load_sst2\('/path/to/sst2'\) or export "
        r"LORA_TUTORIAL_SST2",
    ):
        D.load_sst2()


@pytest.mark.skipif(not SHARED.is_dir(), reason="no local SST-2 folder")
def test_real_sst2_counts():
    ds = D.load_sst2(SHARED)
    assert (len(ds["train"]), sum(ds["train"]["label"])) == (67_349, 37_569)
    assert (len(ds["validation"]), sum(ds["validation"]["label"])) == (872, 444)


def test_length_grouped_batches_cover_everything_once():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    sampler = D.LengthGroupedBatches(lengths, batch_size=32, seed=3, chunk=4)
    first, second = list(sampler), list(sampler)
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert len(batches) == len(sampler) == 32
    assert first != second  # a new order each epoch
    assert first == list(D.LengthGroupedBatches(lengths, batch_size=32, seed=3, chunk=4))  # reproducible
    grouped = D.padding_fraction(lengths, iter(first))
    assert grouped < 0.5 * D.padding_fraction(lengths, iter(D.random_batches(1000, 32)))


def test_eval_batches_are_sorted():
    lengths = [5, 1, 3, 2, 4]
    assert list(D.LengthGroupedBatches(lengths, batch_size=2, shuffle=False)) == [[1, 3], [2, 4], [0]]
