"""Stored runs: typed records, the folder that holds them, and every record the repository stores."""

import json

from lora_tutorial.study.report import result_rows
from lora_tutorial.study.store import ResultStore, default_results


def test_the_results_folder_is_found_from_a_chapter_folder(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / "book").mkdir()
    monkeypatch.delenv("LORA_TUTORIAL_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path / "book")
    assert default_results() == tmp_path / "results"


def test_every_stored_record_of_the_repository_loads():
    root = default_results()
    profiles = [p.name for p in root.iterdir() if p.is_dir() and p.name != "bench"]
    assert "cpu" in profiles
    for profile in profiles:
        store = ResultStore(profile, root)
        on_disk = list(store.folder.glob("*.json")) + list(store.folder.glob("superseded/*/*.json"))
        loaded = store.records(superseded=True)
        assert len(loaded) == len(on_disk) > 0
        assert all(r.experiment and r.accuracy is not None for _, r in loaded)


def test_the_results_table_lists_every_record_with_its_stored_numbers():
    """Over the whole repository folder: one row per stored file, with the accuracy, parameter count and
    time per epoch the file holds (nothing recomputed or reshaped on the way into a chapter's table)."""
    root = default_results()
    for profile in [p.name for p in root.iterdir() if p.is_dir() and p.name != "bench"]:
        rows = {row["file"]: row for row in result_rows(profile, root, superseded=True)}
        files = list((root / profile).glob("*.json")) + list((root / profile).glob("superseded/*/*.json"))
        assert sorted(rows) == sorted(map(str, files))
        for file in files:
            stored, row = json.loads(file.read_text()), rows[str(file)]
            assert row["validation_accuracy"] == stored["metrics"]["validation_accuracy"]
            assert row["trainable_params"] == stored["params"]["trainable"]
            assert row["train_seconds_per_epoch"] == stored["timing"]["train_seconds_per_epoch"]
            assert row["name"] == stored["experiment"]
