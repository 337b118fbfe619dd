"""Stored runs: typed records, the folder that holds them, and every record the repository stores."""

from lora_tutorial.store import ResultStore, default_results


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
