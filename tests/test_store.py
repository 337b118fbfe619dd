"""Stored runs: typed records, and the migration of the earlier flat layout (nothing lost on the way)."""

import hashlib
import json
import shutil
from dataclasses import replace

import pytest

from lora_tutorial import runner
from lora_tutorial.experiments import PROFILES
from lora_tutorial.store import ResultStore, RunRecord, default_results, load_results, migrate


def legacy(record: RunRecord, name: str, profile: str, settings: dict) -> dict:
    """The same record in the layout results were stored in before typed records."""
    d = record.to_json()
    config = d["config"] | {"experiment": name, "profile": profile}
    flat = {
        "config": config,
        "metrics": d["metrics"],
        "trainable_params": d["params"]["trainable"],
        "total_params": d["params"]["total"],
        "lora_params": d["params"]["lora"],
        "settings": settings,
        **d["timing"],
        "peak_memory_bytes": d["memory"]["peak_bytes"],
        "memory_baseline_bytes": d["memory"]["baseline_bytes"],
        **{k: v for k, v in d["provenance"].items() if v is not None},
        "predictions": d["predictions"],
        "validation_labels": d["validation_labels"],
    }
    return flat | ({"adapter": f"adapters/{name}__seed0"} if d["adapter"] else {})


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def flat_tree(learnable, tmp_path):
    """A results folder in the earlier layout: a current LoRA run with its adapter, a stale one, and a
    run of the old 20,000-example tuning profile (here 128 examples)."""
    made = tmp_path / "made"
    lora, full = runner.run_suite(
        "smoke", ["lora-r2-e3", "full-e3-n128"], [0], made, learnable, progress=False
    )
    old = tmp_path / "old"
    (old / "smoke" / "adapters").mkdir(parents=True)
    (old / "smoke-tune").mkdir()
    settings = PROFILES["smoke"].fixed_settings("lora") | {"train_limit": 2048, "epochs": 3}
    tree = {
        old / "smoke" / "lora-r2__seed0.json": legacy(lora, "lora-r2", "smoke", settings),
        old / "smoke" / "lora-r2@0.003__seed0.json": legacy(
            lora, "lora-r2@0.003", "smoke", settings | {"lora_dropout": 0.3}
        ),  # stale
        old / "smoke-tune" / "full@0.001__seed0.json": legacy(
            full, "full@0.001", "smoke-tune", settings | {"train_limit": 128}
        ),
    }
    for path, record in tree.items():
        path.write_text(json.dumps(record))
        if "adapter" in record:
            shutil.copytree(made / "smoke" / lora.adapter, path.parent / record["adapter"])
    return old, lora, full, digest(made / "smoke" / lora.adapter), {p.name: r for p, r in tree.items()}


def test_migration_keeps_every_number_and_adapter(flat_tree, monkeypatch):
    old, lora, full, adapter_files, written = flat_tree
    monkeypatch.setitem(runner.PROFILES, "smoke", PROFILES["smoke"])
    monkeypatch.setattr("lora_tutorial.store.LEGACY_PROFILES", {"smoke-tune": "smoke"})
    moves = migrate(old)
    assert len(moves) == 3
    assert not (old / "smoke-tune").exists()
    store = ResultStore("smoke", old)
    current = {p.name: r for p, r in store.records()}
    assert sorted(current) == ["full-e3-n128@1e-3__seed0.json", "lora-r2-qv-e3-n2048@3e-3__seed0.json"]
    migrated = current["lora-r2-qv-e3-n2048@3e-3__seed0.json"]
    was = written["lora-r2__seed0.json"]
    assert (migrated.config, migrated.settings) == (
        was["config"],
        was["settings"],
    )  # kept as they were stored
    assert replace(migrated, migrated_from=None, config=lora.config, settings=lora.settings) == lora
    assert migrated.migrated_from == "smoke/lora-r2__seed0.json"
    tuned = current["full-e3-n128@1e-3__seed0.json"]
    assert tuned.config == written["full@0.001__seed0.json"]["config"]
    assert replace(tuned, migrated_from=None, config=full.config, settings=full.settings) == full
    assert digest(old / "smoke" / migrated.adapter) == adapter_files
    [(stale_path, stale)] = [(p, r) for p, r in store.records(superseded=True) if "superseded" in p.parts]
    assert stale.settings["lora_dropout"] == 0.3
    assert digest(stale_path.parent / stale.adapter) == adapter_files
    assert migrate(old) == []  # a second run has nothing to do


def test_records_of_the_earlier_layout_are_refused_with_the_fix(flat_tree):
    old = flat_tree[0]
    with pytest.raises(ValueError, match="python -m lora_tutorial migrate"):
        load_results(old, "smoke")


def test_the_results_folder_is_found_from_a_chapter_folder(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / "book").mkdir()
    monkeypatch.delenv("LORA_TUTORIAL_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path / "book")
    assert default_results() == tmp_path / "results"


def test_the_repository_results_are_all_in_the_current_layout():
    for path in (default_results()).glob("*/**/*.json"):
        if "adapters" in path.parts or "bench" in path.parts:
            continue
        assert "experiment" in json.loads(path.read_text()), f"{path}: run python -m lora_tutorial migrate"
