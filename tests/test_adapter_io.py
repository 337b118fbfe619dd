"""save_adapter / load_adapter: the file format, round trips and errors."""

import copy
import json
import re

import pytest
import torch
from helpers import randomize_lora
from safetensors.torch import load_file

from lora_tutorial import LoRAConfig, apply_lora, load_adapter, lora_layers, save_adapter
from lora_tutorial.models import load_model


def test_file_format(tiny, tmp_path):
    apply_lora(tiny, LoRAConfig(r=4, layers=[0]))
    save_adapter(tiny, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == 4
    assert config["layers_to_transform"] == [0]
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == {
        f"base_model.model.bert.encoder.layer.0.attention.self.{m}.lora_{ab}.weight"
        for m in ("query", "value")
        for ab in "AB"
    } | {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}


def test_round_trip(tiny, batch, tmp_path):
    base = copy.deepcopy(tiny)
    apply_lora(tiny, LoRAConfig(r=4, variant="rslora", trainable=("classifier", "pooler")))
    randomize_lora(tiny)
    save_adapter(tiny, tmp_path)
    load_adapter(base, tmp_path)
    assert base.lora_config == tiny.lora_config
    torch.testing.assert_close(base(**batch).logits, tiny(**batch).logits, atol=1e-6, rtol=0)


def test_save_without_adapter(tiny, tmp_path):
    with pytest.raises(ValueError, match="has no LoRA adapter; call apply_lora"):
        save_adapter(tiny, tmp_path)


def test_missing_folder(tiny, tmp_path):
    with pytest.raises(ValueError, match="No adapter_config.json in"):
        load_adapter(tiny, tmp_path / "nope")


def test_rank_mismatch(tiny, tmp_path):
    other = copy.deepcopy(tiny)
    apply_lora(tiny, LoRAConfig(r=4))
    save_adapter(tiny, tmp_path)
    apply_lora(other, LoRAConfig(r=8))
    with pytest.raises(ValueError, match=r"differs from the adapter in .* \(r=8 vs 4; the model's first\)"):
        load_adapter(other, tmp_path)


def test_shape_mismatch_leaves_model_untouched(tiny, batch, tmp_path):
    wider = load_model("tiny", seed=0)
    wider = type(wider)(
        type(wider.config)(**{**wider.config.to_dict(), "hidden_size": 32, "intermediate_size": 64})
    )
    apply_lora(wider, LoRAConfig(r=4))
    save_adapter(wider, tmp_path)
    before = tiny(**batch).logits
    with pytest.raises(ValueError, match=r"Shape mismatch for .*: adapter \(4, 32\) vs model \(4, 64\)"):
        load_adapter(tiny, tmp_path)
    assert not lora_layers(tiny)
    assert all(p.requires_grad for p in tiny.parameters())
    assert torch.equal(tiny(**batch).logits, before)


def test_merged_model_refuses_load(tiny, tmp_path):
    apply_lora(tiny, LoRAConfig(r=4))
    randomize_lora(tiny)
    save_adapter(tiny, tmp_path)
    for layer in lora_layers(tiny).values():
        layer.merge()
    with pytest.raises(ValueError, match="are merged; call unmerge"):
        load_adapter(tiny, tmp_path)


def test_non_lora_adapter(tiny, tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="is a IA3 adapter; only LoRA"):
        load_adapter(tiny, tmp_path)


@pytest.mark.parametrize(
    "saved, adapted, says",
    [
        (LoRAConfig(r=4, alpha=64), LoRAConfig(r=4, alpha=8), "alpha=8 vs 64"),
        (LoRAConfig(r=4, variant="rslora"), LoRAConfig(r=4), "variant='lora' vs 'rslora'"),
        (LoRAConfig(r=4), LoRAConfig(r=4, variant="dora"), "variant='dora' vs 'lora'"),
        (LoRAConfig(r=4), LoRAConfig(r=4, target_modules=("query",)), "target_modules="),
        (LoRAConfig(r=4), LoRAConfig(r=4, layers=[1]), "layers=[1] vs None"),
    ],
)
def test_an_adapted_model_takes_only_an_adapter_that_computes_the_same_function(
    tiny, tmp_path, saved, adapted, says
):
    other = copy.deepcopy(tiny)
    apply_lora(tiny, saved)
    save_adapter(tiny, tmp_path)
    apply_lora(other, adapted)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=re.escape(says)):
        load_adapter(other, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("alpha_pattern", {"query": 64}, "sets alpha_pattern"),
        ("rank_pattern", {"value": 2}, "sets rank_pattern"),
        ("bias", "all", "sets bias='all'"),
        ("init_lora_weights", "olora", "init_lora_weights='olora' is not one of this library's"),
    ],
)
def test_a_peft_setting_this_library_lacks_is_refused_not_ignored(tiny, tmp_path, field, value, says):
    base = copy.deepcopy(tiny)
    apply_lora(tiny, LoRAConfig(r=4))
    save_adapter(tiny, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text()) | {field: value}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(says)):
        load_adapter(base, tmp_path)
    assert not lora_layers(base)


def test_a_damaged_adapter_is_refused_with_its_path_and_the_model_left_as_it_was(tiny, tmp_path):
    base = copy.deepcopy(tiny)
    apply_lora(tiny, LoRAConfig(r=4))
    save_adapter(tiny, tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=f"No adapter_model.safetensors in {re.escape(str(tmp_path))}"):
        load_adapter(base, tmp_path)
    assert not lora_layers(base)
    save_adapter(tiny, tmp_path)
    config = tmp_path / "adapter_config.json"
    config.write_text(config.read_text()[:40])  # cut short
    with pytest.raises(ValueError, match=f"{re.escape(str(config))} is not valid JSON"):
        load_adapter(base, tmp_path)
    assert not lora_layers(base)
    assert all(p.requires_grad for p in base.parameters())
