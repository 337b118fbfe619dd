"""Our LoRA against peft's: same outputs, and adapters that travel both ways."""

import copy
from dataclasses import replace

import pytest
import torch
from helpers import randomize_lora
from peft import LoraConfig, PeftModel, get_peft_model

from lora_tutorial import (
    LoRAConfig,
    apply_lora,
    copy_to_peft,
    load_adapter,
    lora_layers,
    read_adapter_config,
    save_adapter,
)
from lora_tutorial.study.experiments import Experiment
from lora_tutorial.study.report import load_results


def peft_config(cfg: LoRAConfig) -> LoraConfig:
    return LoraConfig(**cfg.to_peft())


CONFIGS = [
    LoRAConfig(r=4, alpha=8),
    LoRAConfig(r=8, alpha=16, variant="rslora", target_modules=("query", "key", "value", "dense")),
    LoRAConfig(r=2, alpha=3, layers=[1], trainable=("classifier", "pooler")),
    LoRAConfig(r=4, alpha=8, variant="dora"),
]
IDS = ["qv", "rslora-all-linear", "layer1-pooler", "dora"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_same_logits_as_peft_tiny(tiny, batch, cfg):
    ours, theirs = tiny, get_peft_model(copy.deepcopy(tiny), peft_config(cfg)).eval()
    apply_lora(ours, cfg)
    randomize_lora(ours)
    copy_to_peft(ours, theirs)
    assert (ours(**batch).logits - theirs(**batch).logits).abs().max() <= 1e-5
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == sum(
        p.numel() for p in theirs.parameters() if p.requires_grad
    )


def test_same_logits_as_peft_minilm(minilm, batch):
    cfg = LoRAConfig(r=16, alpha=32, trainable=("classifier", "pooler"))
    theirs = get_peft_model(copy.deepcopy(minilm), peft_config(cfg)).eval()
    apply_lora(minilm, cfg)
    randomize_lora(minilm)
    copy_to_peft(minilm, theirs)
    assert (minilm(**batch).logits - theirs(**batch).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_our_adapter_loads_in_peft(tiny, batch, tmp_path, cfg):
    base = copy.deepcopy(tiny)
    apply_lora(tiny, cfg)
    randomize_lora(tiny)
    save_adapter(tiny, tmp_path)
    theirs = PeftModel.from_pretrained(base, tmp_path).eval()
    assert (tiny(**batch).logits - theirs(**batch).logits).abs().max() <= 1e-5


def test_our_adapter_loads_in_peft_minilm(minilm, batch, tmp_path):
    base = copy.deepcopy(minilm)
    apply_lora(minilm, LoRAConfig(r=16, trainable=("classifier", "pooler")))
    randomize_lora(minilm)
    save_adapter(minilm, tmp_path)
    theirs = PeftModel.from_pretrained(base, tmp_path).eval()
    assert (minilm(**batch).logits - theirs(**batch).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_peft_adapter_loads_in_ours(tiny, batch, tmp_path, cfg):
    theirs = get_peft_model(copy.deepcopy(tiny), peft_config(cfg)).eval()
    randomize_lora(theirs)
    theirs.save_pretrained(tmp_path)
    assert read_adapter_config(tmp_path).r == cfg.r
    load_adapter(tiny, tmp_path)
    assert len(lora_layers(tiny)) == len([n for n, _ in theirs.named_modules() if n.endswith("lora_A")])
    assert (tiny(**batch).logits - theirs(**batch).logits).abs().max() <= 1e-5


STORED = {  # one stored adapter of each kind the study trains
    "q-v-r16": lambda e: e.kind == "lora" and e.r == 16 and e.alpha is None,
    "all-linear-r4": lambda e: e.kind == "lora-qkvo-ffn" and e.r == 4,
    "all-linear-r16": lambda e: e.kind == "lora-qkvo-ffn" and e.r == 16,
    "alpha-over-r": lambda e: e.scaling_rule == "alpha / r" and e.r != 16,
    "rslora-alpha-8": lambda e: e.scaling_rule == "alpha / sqrt(r)" and e.r != 16,
    "dora": lambda e: e.variant == "dora",
    "pissa": lambda e: e.variant == "pissa",
    "loraplus": lambda e: e.optimizer == "loraplus",
}


@pytest.mark.parametrize("kind", list(STORED))
def test_the_studys_stored_adapters_load_in_peft(minilm, batch, kind):
    """The study's adapters, as stored in results/cpu, load in peft.PeftModel on the embedded model: of
    each kind, one trained on the full split where there is one, else one of a sweep's."""
    runs = load_results(None, "cpu")
    runs = runs[runs["current"] & runs["adapter"].notna()]
    runs = runs.sort_values("train_examples", ascending=False, kind="stable")
    paths = [a for n, a in zip(runs["name"], runs["adapter"]) if STORED[kind](Experiment.parse(n))]
    assert paths, f"no stored {kind} adapter in results/cpu"
    theirs = PeftModel.from_pretrained(copy.deepcopy(minilm), paths[0]).eval()
    ours = load_adapter(copy.deepcopy(minilm), paths[0]).eval()
    assert (ours(**batch).logits - theirs(**batch).logits).abs().max() <= 1e-5


def test_an_adapter_that_trains_no_head_loads_in_peft(tiny, batch, tmp_path):
    base = copy.deepcopy(tiny)
    apply_lora(tiny, LoRAConfig(r=4, trainable=()))
    randomize_lora(tiny)
    save_adapter(tiny, tmp_path)
    theirs = PeftModel.from_pretrained(base, tmp_path).eval()
    torch.testing.assert_close(theirs(**batch).logits, tiny.eval()(**batch).logits, atol=1e-6, rtol=0)


def test_pissa_starts_at_w_and_matches_peft(tiny, batch):
    """PiSSA's A, B are W's top singular directions and the base keeps the rest: at the start the model
    computes what it did before, and the same as peft's init_lora_weights="pissa", before and after the
    update moves."""
    before = tiny.eval()(**batch).logits
    theirs = get_peft_model(
        copy.deepcopy(tiny), LoraConfig(**LoRAConfig(r=4, variant="pissa").to_peft())
    ).eval()
    apply_lora(tiny, LoRAConfig(r=4, variant="pissa"))
    torch.testing.assert_close(tiny(**batch).logits, before, atol=1e-5, rtol=0)
    layer = next(iter(lora_layers(tiny).values()))
    w = layer.base.weight + layer.delta_weight()
    s = torch.linalg.svdvals(w)
    torch.testing.assert_close(torch.linalg.svdvals(layer.delta_weight())[:4], s[:4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs(**batch).logits, tiny(**batch).logits, atol=1e-5, rtol=0)
    randomize_lora(tiny)
    copy_to_peft(tiny, theirs)
    torch.testing.assert_close(theirs(**batch).logits, tiny(**batch).logits, atol=1e-5, rtol=0)


def test_a_pissa_adapter_travels_both_ways(tiny, batch, tmp_path):
    base = copy.deepcopy(tiny)
    apply_lora(tiny, LoRAConfig(r=4, variant="pissa", trainable=("classifier",)))
    randomize_lora(tiny)
    save_adapter(tiny, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    torch.testing.assert_close(theirs(**batch).logits, tiny.eval()(**batch).logits, atol=1e-5, rtol=0)
    theirs.save_pretrained(tmp_path / "theirs")
    back = load_adapter(copy.deepcopy(base), tmp_path / "theirs").eval()
    assert back.lora_config.variant == "pissa"
    torch.testing.assert_close(back(**batch).logits, tiny(**batch).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora", "pissa"])
def test_every_variant_maps_to_peft_and_back_without_loss(variant):
    from lora_tutorial.lora import VARIANTS

    assert set(VARIANTS) == {"lora", "rslora", "dora", "pissa"}  # a new variant joins this test
    ours = LoRAConfig(r=4, alpha=8, variant=variant, init="kaiming")
    theirs = peft_config(ours)  # peft accepts every field (and keeps target_modules as a set)
    back = LoRAConfig.from_peft(theirs.to_dict())
    assert replace(back, target_modules=ours.target_modules) == ours
    assert set(back.target_modules) == set(ours.target_modules)
    assert (theirs.use_rslora, theirs.use_dora) == (variant == "rslora", variant == "dora")
    assert (theirs.init_lora_weights == "pissa") == (variant == "pissa")


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"use_dora": True, "use_rslora": True}, "combines the variants rslora and dora"),
        ({"use_dora": True, "init_lora_weights": "pissa"}, "combines the variants dora and pissa"),
        ({"init_lora_weights": "olora"}, "init_lora_weights='olora' is not one of"),
    ],
)
def test_a_peft_config_this_library_cannot_compute_is_refused(fields, says):
    with pytest.raises(ValueError, match=says):
        LoRAConfig.from_peft(LoRAConfig(r=4).to_peft() | fields)


def test_a_gaussian_init_travels_to_peft_and_back():
    ours = LoRAConfig(r=4, init="gaussian")
    assert LoRAConfig.from_peft(peft_config(ours).to_dict()).init == "gaussian"


def test_an_adapter_whose_targets_peft_reordered_loads_into_an_adapted_model(tiny, tmp_path):
    apply_lora(tiny, LoRAConfig(r=4))
    save_adapter(tiny, tmp_path)
    config = tmp_path / "adapter_config.json"
    config.write_text(config.read_text().replace('"query",\n    "value"', '"value",\n    "query"'))
    assert read_adapter_config(tmp_path).target_modules == ("value", "query")
    load_adapter(tiny, tmp_path)  # the same modules in another order: the same adapter
