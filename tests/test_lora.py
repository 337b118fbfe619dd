"""LoRALinear and apply_lora/merge_lora: init, scaling, merging, freezing, errors."""

import copy
import math

import pytest
import torch
from helpers import randomize_lora
from torch import nn

from lora_tutorial import LoRAConfig, LoRALinear, apply_lora, lora_layers, merge_lora, remove_lora
from lora_tutorial.lora import FFN, is_lora_param


def make_layer(**kw):
    torch.manual_seed(0)
    return LoRALinear(nn.Linear(12, 7), **{"r": 4, "alpha": 8, **kw})


def test_shapes_and_zero_init():
    layer = make_layer()
    assert layer.lora_A.shape == (4, 12)
    assert layer.lora_B.shape == (7, 4)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert torch.count_nonzero(layer.lora_A) > 0
    x = torch.randn(5, 12)
    assert torch.equal(layer(x), layer.base(x))


def test_forward_is_base_plus_scaled_low_rank_update():
    layer = make_layer()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 12)
    expected = x @ (layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A).T + layer.base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), layer.scaling * layer.lora_B @ layer.lora_A)
    assert torch.linalg.matrix_rank(layer.delta_weight()) <= 4


@pytest.mark.parametrize(
    "variant, expected", [("lora", 8 / 4), ("rslora", 8 / math.sqrt(4)), ("dora", 8 / 4)]
)
def test_scaling(variant, expected):
    assert make_layer(variant=variant).scaling == pytest.approx(expected)
    assert LoRAConfig(r=4, alpha=8, variant=variant).scaling == pytest.approx(expected)


def test_gaussian_init_std_is_one_over_r():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(2000, 10), r=4, alpha=4, init="gaussian")
    assert layer.lora_A.std().item() == pytest.approx(1 / 4, rel=0.05)


def test_dropout_only_on_lora_path():
    layer = make_layer(dropout=0.5).train()
    x = torch.randn(64, 12)
    assert torch.equal(
        layer(x), layer.base(x)
    )  # B = 0: dropout on the LoRA path cannot touch the base output
    nn.init.normal_(layer.lora_B)
    assert not torch.allclose(layer(x), layer(x))  # the LoRA path is stochastic in training
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_merge_unmerge_round_trip():
    layer = make_layer()
    nn.init.normal_(layer.lora_B)
    w0, x = layer.base.weight.clone(), torch.randn(6, 12)
    y = layer(x)
    layer.merge()
    assert layer.merged
    assert torch.allclose(layer(x), y, atol=1e-5)
    torch.testing.assert_close(layer.base.weight, w0 + layer.delta_weight())
    layer.merge()  # a second merge is a no-op, not a double merge
    torch.testing.assert_close(layer.base.weight, w0 + layer.delta_weight())
    layer.unmerge()
    assert not layer.merged
    assert (layer.base.weight - w0).abs().max() <= 1e-6
    layer.unmerge()
    assert (layer.base.weight - w0).abs().max() <= 1e-6


def test_apply_lora_keeps_outputs_identical(minilm, batch):
    before = minilm(**batch).logits
    summary = apply_lora(minilm, LoRAConfig(r=8))
    assert len(summary.wrapped) == 12
    assert summary.trainable == ["classifier"]
    assert torch.equal(minilm(**batch).logits, before)


def test_layers_and_targets_select_modules(tiny):
    summary = apply_lora(tiny, LoRAConfig(target_modules=("query", "key", "value"), layers=[1]))
    assert summary.wrapped == [f"bert.encoder.layer.1.attention.self.{m}" for m in ("query", "key", "value")]
    assert set(lora_layers(tiny)) == set(summary.wrapped)


def test_gradients_reach_only_lora_and_trainable_modules(minilm, batch):
    apply_lora(minilm, LoRAConfig(r=4, trainable=("classifier", "pooler")))
    randomize_lora(minilm)
    minilm.train()
    minilm(**batch, labels=torch.tensor([1, 0, 1])).loss.backward()
    with_grad = {n for n, p in minilm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    allowed = {
        n
        for n, _ in minilm.named_parameters()
        if is_lora_param(n) or n.startswith(("classifier.", "bert.pooler."))
    }
    assert with_grad == allowed
    assert {n for n, p in minilm.named_parameters() if p.requires_grad} == allowed


def test_merged_model_matches_and_is_plain(minilm, batch):
    apply_lora(minilm, LoRAConfig(r=8))
    randomize_lora(minilm)
    adapted = minilm(**batch).logits
    merge_lora(minilm)
    assert not lora_layers(minilm)
    assert not hasattr(minilm, "lora_config")
    assert isinstance(minilm.bert.encoder.layer[0].attention.self.query, nn.Linear)
    assert (minilm(**batch).logits - adapted).abs().max() <= 1e-5


def test_remove_lora_restores_base(tiny, batch):
    before = tiny(**batch).logits
    apply_lora(tiny, LoRAConfig(r=2, trainable=()))
    randomize_lora(tiny)
    remove_lora(tiny)
    assert not lora_layers(tiny)
    assert torch.equal(tiny(**batch).logits, before)


def test_merge_save_load_merge_does_not_double_merge(tiny, batch):
    """loralib's double-merge bug (microsoft/LoRA #34, #61): a reloaded merged state stays merged once."""
    import copy

    fresh = copy.deepcopy(tiny)
    apply_lora(tiny, LoRAConfig(r=4))
    randomize_lora(tiny)
    for layer in lora_layers(tiny).values():
        layer.merge()
    merged_logits = tiny(**batch).logits
    state = tiny.state_dict()
    apply_lora(fresh, LoRAConfig(r=4))
    fresh.load_state_dict(state)
    for layer in lora_layers(fresh).values():
        assert layer.merged
        layer.merge()
    torch.testing.assert_close(fresh(**batch).logits, merged_logits, atol=1e-5, rtol=0)
    q = "bert.encoder.layer.0.attention.self.query"
    torch.testing.assert_close(lora_layers(fresh)[q].base.weight, lora_layers(tiny)[q].base.weight)
    for layer in lora_layers(fresh).values():
        layer.unmerge()
    torch.testing.assert_close(fresh(**batch).logits, merged_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(r=0), "rank r must be a positive integer"),
        (dict(r=-2), "rank r must be a positive integer"),
        (dict(alpha=0), "alpha must be > 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(init="xavier"), "Unknown LoRA init 'xavier'; choose one of"),
        (dict(variant="vera"), "Unknown LoRA variant 'vera'; choose one of"),
        (dict(variant="pissa", init="gaussian"), "sets A and B itself; drop init='gaussian'"),
        (dict(alpha=float("nan")), "alpha must be > 0"),
        (dict(alpha=float("inf")), "alpha must be > 0"),
        (dict(r=True), "rank r must be a positive integer"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        LoRALinear(nn.Linear(4, 4), **{"r": 2, "alpha": 2, **kwargs})


def test_no_module_matched(tiny):
    with pytest.raises(ValueError, match=r"No nn.Linear matched target_modules=\['q_proj'\]; print\(model\)"):
        apply_lora(tiny, LoRAConfig(target_modules=("q_proj",)))
    assert not lora_layers(tiny)
    assert all(p.requires_grad for p in tiny.parameters())


def test_a_target_string_is_a_whole_name_pattern_not_its_letters(tiny):
    with pytest.raises(
        ValueError, match=r"target_modules='query', a pattern the whole module name must match"
    ):
        apply_lora(tiny, LoRAConfig(target_modules="query"))
    summary = apply_lora(tiny, LoRAConfig(target_modules=r".*\.query", trainable="classifier"))
    assert len(summary.wrapped) == 2  # one query per layer
    assert summary.trainable == ["classifier"]
    with pytest.raises(ValueError, match="names the layers itself"):
        LoRAConfig(target_modules=FFN, layers=[0])


def test_the_ffn_set_wraps_exactly_the_two_feed_forward_matrices_per_layer(tiny):
    from peft import LoraConfig, get_peft_model

    suffix = apply_lora(
        copy.deepcopy(tiny), LoRAConfig(target_modules=("intermediate.dense", "output.dense"))
    )
    assert any(n.endswith("attention.output.dense") for n in suffix.wrapped)  # why a suffix cannot say it
    config = LoRAConfig(target_modules=FFN)
    theirs = get_peft_model(copy.deepcopy(tiny), LoraConfig(**config.to_peft()))
    wrapped = apply_lora(tiny, config).wrapped
    assert wrapped == [
        f"bert.encoder.layer.{i}.{m}.dense" for i in range(2) for m in ("intermediate", "output")
    ]
    peft_wrapped = [
        n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if hasattr(m, "lora_A")
    ]
    assert peft_wrapped == wrapped  # the same rule as peft's
    assert LoRAConfig.from_peft(config.to_peft()) == config


def test_a_misspelt_trainable_module_is_an_error_not_an_untrained_head(tiny):
    with pytest.raises(ValueError, match=r"no module is named 'classifer'; print\(model\)"):
        apply_lora(tiny, LoRAConfig(trainable=("classifer",)))
    with pytest.raises(ValueError, match="no module is named 'score'"):  # BERT's head is the classifier
        apply_lora(tiny, LoRAConfig(trainable=("score",)))
    assert not lora_layers(tiny)
    assert all(p.requires_grad for p in tiny.parameters())


def test_layer_out_of_range(tiny):
    with pytest.raises(ValueError, match=r"out of range: this model has 2 layers \(0..1\)"):
        apply_lora(tiny, LoRAConfig(layers=[0, 2]))


def test_apply_twice(tiny):
    apply_lora(tiny, LoRAConfig())
    with pytest.raises(ValueError, match="already has LoRA layers; call merge_lora"):
        apply_lora(tiny, LoRAConfig())


def test_wrapping_a_non_linear():
    with pytest.raises(ValueError, match="wraps an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(2, 2, 1), r=1, alpha=1)


def test_dora_merge_round_trip(tiny, batch):
    apply_lora(tiny, LoRAConfig(r=4, variant="dora"))
    randomize_lora(tiny)
    layer = lora_layers(tiny)["bert.encoder.layer.0.attention.self.value"]
    assert layer.variant.name == "dora"
    assert layer.lora_magnitude_vector.requires_grad
    w0, before = layer.base.weight.clone(), tiny(**batch).logits
    for lora in lora_layers(tiny).values():
        lora.merge()
    assert (tiny(**batch).logits - before).abs().max() <= 1e-5
    for lora in lora_layers(tiny).values():
        lora.unmerge()
    assert (layer.base.weight - w0).abs().max() <= 1e-6


def test_dora_starts_as_the_base_layer():
    base = nn.Linear(12, 7)
    x = torch.randn(3, 12)
    torch.testing.assert_close(
        LoRALinear(base, r=2, alpha=4, variant="dora")(x), base(x), atol=1e-6, rtol=1e-6
    )


def test_lora_dropout_distribution():
    from lora_tutorial.lora import LoRADropout

    torch.manual_seed(0)
    drop, x = LoRADropout(0.1).train(), torch.ones(1_000_000)
    y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.002  # P(drop) = p
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))  # survivors scaled by 1 / (1 - p)
    assert abs(y.mean().item() - 1) < 0.003  # unbiased
    assert torch.equal(drop.eval()(x), x)
