"""Several adapters on one base: each computes what it computes alone, and what peft's named adapters do."""

import copy

import pytest
import torch
from helpers import randomize_lora
from peft import PeftModel

from lora_tutorial import AdapterSet, LoRAConfig, apply_lora, load_adapter, save_adapter

CONFIG = LoRAConfig(r=4, alpha=8, trainable=("classifier",))


def two_adapters(tiny, tmp_path, config=CONFIG):
    """The base model and two adapters saved from it, trained to different values."""
    paths = []
    for seed in (1, 2):
        model = copy.deepcopy(tiny)
        apply_lora(model, config)
        randomize_lora(model, seed=seed)
        paths.append(save_adapter(model, tmp_path / f"adapter{seed}"))
    return paths


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_each_adapter_computes_what_it_computes_alone_and_what_peft_does(tiny, batch, tmp_path):
    one, two = two_adapters(tiny, tmp_path)
    alone = [logits(load_adapter(copy.deepcopy(tiny), p), batch) for p in (one, two)]
    assert (alone[0] - alone[1]).abs().max() > 1e-3  # two different adapters
    adapters = AdapterSet(load_adapter(copy.deepcopy(tiny), one)).add("one", one).add("two", two)
    theirs = PeftModel.from_pretrained(copy.deepcopy(tiny), one, adapter_name="one")
    theirs.load_adapter(two, adapter_name="two")
    for _ in range(2):  # back and forth
        for name, expected in zip(("one", "two"), alone):
            torch.testing.assert_close(logits(adapters.use(name), batch), expected, atol=1e-6, rtol=0)
            theirs.set_adapter(name)
            torch.testing.assert_close(logits(theirs, batch), expected, atol=1e-5, rtol=0)
    assert adapters.active == "two"


def test_disabled_lora_computes_the_base_model_as_peft_does(tiny, batch, tmp_path):
    config = LoRAConfig(r=4, alpha=8, trainable=())  # no trained head: disabled is the base model itself
    [one, _] = two_adapters(tiny, tmp_path, config)
    base = logits(copy.deepcopy(tiny), batch)
    adapters = AdapterSet(load_adapter(copy.deepcopy(tiny), one)).add("one", one)
    with adapters.disabled() as model:
        torch.testing.assert_close(logits(model, batch), base, atol=1e-6, rtol=0)
    assert (logits(adapters.model, batch) - base).abs().max() > 1e-3  # on again afterwards
    theirs = PeftModel.from_pretrained(copy.deepcopy(tiny), one)
    with theirs.disable_adapter():
        torch.testing.assert_close(logits(theirs, batch), base, atol=1e-6, rtol=0)


def test_the_adapter_in_the_model_can_be_kept_under_a_name(tiny, batch, tmp_path):
    [one, _] = two_adapters(tiny, tmp_path)
    model = load_adapter(copy.deepcopy(tiny), one)
    adapters = AdapterSet(model).add("trained")
    randomize_lora(model, seed=7)
    torch.testing.assert_close(
        logits(adapters.use("trained"), batch), logits(load_adapter(copy.deepcopy(tiny), one), batch)
    )
    assert adapters.nbytes("trained") == sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "act, says",
    [
        (lambda s, other: s.add("other", other), "differs from the adapter"),
        (lambda s, other: s.use("missing"), "No adapter named 'missing'; loaded: one"),
        (lambda s, other: s.add("one", other), "named 'one' is loaded already"),
    ],
)
def test_mistakes_are_one_line(tiny, tmp_path, act, says):
    [one, _] = two_adapters(tiny, tmp_path)
    [other, _] = two_adapters(tiny, tmp_path / "r8", LoRAConfig(r=8, alpha=16, trainable=("classifier",)))
    adapters = AdapterSet(load_adapter(copy.deepcopy(tiny), one)).add("one", one)
    with pytest.raises(ValueError, match=says):
        act(adapters, other)


def test_merged_layers_are_neither_switched_nor_disabled(tiny, tmp_path):
    [one, _] = two_adapters(tiny, tmp_path)
    adapters = AdapterSet(load_adapter(copy.deepcopy(tiny), one)).add("one", one)
    for layer in adapters.model.modules():
        if hasattr(layer, "merge"):
            layer.merge()
    with pytest.raises(ValueError, match="merged; call unmerge"):
        adapters.use("one")
    with pytest.raises(ValueError, match="merged; call unmerge"), adapters.disabled():
        pass
    with pytest.raises(ValueError, match="no LoRA layers"):
        AdapterSet(copy.deepcopy(tiny))
