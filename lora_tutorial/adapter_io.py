"""Save and load adapters in peft's on-disk format (``adapter_config.json`` + ``adapter_model.safetensors``).

An adapter saved here loads with ``PeftModel.from_pretrained(base_model, path)``, and one saved by
peft loads here. Only the LoRA matrices and the fully trainable modules (the head) are stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UsageError
from .lora import LORA_PARAMS, LoRAConfig, apply_lora, is_lora_param, lora_layers, remove_lora

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."


def _to_peft_key(name: str) -> str:
    """``...query.lora_A`` -> ``base_model.model....query.lora_A.weight``; head params keep their names."""
    return PREFIX + (f"{name}.weight" if is_lora_param(name) else name)


def _from_peft_key(key: str) -> str:
    name = key.removeprefix(PREFIX)
    for ab in LORA_PARAMS:
        if name.endswith(f".{ab}.weight"):
            return name.removesuffix(".weight")
    return name


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under our parameter names: LoRA matrices and trainable modules."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad or is_lora_param(n)}


def copy_to_peft(model: nn.Module, peft_model: nn.Module) -> nn.Module:
    """Copy our adapter (A, B, DoRA magnitudes, trainable modules) into a peft model built from the
    same base and config, so that the two compute the same function; returns ``peft_model``."""
    theirs = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, tensor in adapter_state_dict(model).items():
            module, leaf = name.rsplit(".", 1)
            if leaf in (*LORA_PARAMS, "lora_magnitude_vector"):  # peft: one adapter per name, "default"
                keys = [f"{PREFIX}{module}.{leaf}.default.weight"]
            else:  # peft trains a copy of each module in modules_to_save
                parts = module.split(".")
                keys = [
                    f"{PREFIX}{'.'.join(parts[:i])}.modules_to_save.default.{'.'.join(parts[i:] + [leaf])}"
                    for i in range(1, len(parts) + 1)
                ] + [PREFIX + name]
            key = next((k for k in keys if k in theirs), None)
            if key is None:
                raise UsageError(
                    f"The peft model has no parameter for our {name!r}; build it with the same "
                    "target_modules, layers and modules_to_save."
                )
            theirs[key].copy_(tensor)
    return peft_model


def save_adapter(model: nn.Module, path: str | Path, task_type: str = "SEQ_CLS") -> Path:
    """Write the adapter of a LoRA-adapted model to folder ``path`` in peft's format."""
    config: LoRAConfig | None = getattr(model, "lora_config", None)
    if config is None:
        raise UsageError("This model has no LoRA adapter; call apply_lora(model, config) first.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {_to_peft_key(n): t.contiguous().cpu() for n, t in adapter_state_dict(model).items()}
    save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})
    # peft's SEQ_CLS task adds the classifier to modules_to_save and then expects its weights: an adapter
    # that trains no head is saved without a task type, which peft loads as a plain PeftModel
    peft_config = config.to_peft(
        task_type if config.trainable else None,
        getattr(getattr(model, "config", None), "_name_or_path", None),
        True,
    )
    (path / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2))
    return path


#: peft fields that change what an adapter computes and that this library does not implement, refused.
UNSUPPORTED = {
    "alpha_pattern": {},
    "rank_pattern": {},
    "bias": "none",
    "fan_in_fan_out": False,
    "layer_replication": None,
    "lora_bias": False,
}
#: The LoRAConfig fields that change the function an adapter computes; an adapted model must agree on all.
FUNCTION_FIELDS = ("r", "alpha", "variant", "target_modules", "layers", "trainable")


def _setting(config: LoRAConfig, field: str):
    value = getattr(config, field)  # names of target modules are a set (peft writes them in any order)
    return frozenset(value) if field == "target_modules" and not isinstance(value, str) else value


def read_adapter_config(path: str | Path) -> LoRAConfig:
    """Read a peft ``adapter_config.json`` as a :class:`~lora_tutorial.lora.LoRAConfig`; a setting this
    library cannot reproduce (e.g. ``alpha_pattern``, ``bias``) is refused, never ignored."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise UsageError(f"No {CONFIG_FILE} in {path}; point at the folder save_adapter or peft wrote.")
    try:
        c = json.loads(file.read_text())
    except ValueError as e:
        raise UsageError(f"{file} is not valid JSON ({e}); the file is damaged or cut short.") from None
    if c.get("peft_type") != "LORA":
        raise UsageError(
            f"{file} is a {c.get('peft_type')} adapter; only LoRA (and DoRA) adapters can be loaded here."
        )
    if not (Path(path) / WEIGHTS_FILE).is_file():
        raise UsageError(f"No {WEIGHTS_FILE} in {path}: the adapter's weights are missing; save it again.")
    for key, plain in UNSUPPORTED.items():
        if c.get(key) not in (plain, None):
            raise UsageError(f"{file} sets {key}={c[key]!r}, which this library does not implement.")
    try:
        return LoRAConfig.from_peft(c)
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{file}: {e}") from None


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter (ours or peft's) into ``model``. A base model is adapted first, using the
    adapter's config; an adapted model must already have the same LoRA (every setting that changes what
    it computes: rank, alpha, scaling rule, variant, targets, layers, trainable modules). On any error
    the model is left as it was."""
    config = read_adapter_config(path)
    current: LoRAConfig | None = getattr(model, "lora_config", None)
    if current is None:
        requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        apply_lora(model, config)
        try:
            return _load_weights(model, path)
        except Exception:  # leave the caller's model as it was
            remove_lora(model)
            for n, p in model.named_parameters():
                p.requires_grad_(requires_grad[n])
            raise
    check_same_lora(current, config, path)
    if any(layer.merged for layer in lora_layers(model).values()):
        raise UsageError(
            "The model's LoRA layers are merged; call unmerge() on them before loading an adapter."
        )
    return _load_weights(model, path)


def check_same_lora(current: LoRAConfig, config: LoRAConfig, path: str | Path) -> None:
    """Refuse an adapter whose LoRA computes something else than the model's (``FUNCTION_FIELDS``)."""
    differ = [f for f in FUNCTION_FIELDS if _setting(current, f) != _setting(config, f)]
    if differ:
        said = ", ".join(f"{f}={getattr(current, f)!r} vs {getattr(config, f)!r}" for f in differ)
        raise UsageError(
            f"The model's LoRA differs from the adapter in {path} ({said}; the model's first); "
            "load it into the base model instead (without apply_lora)."
        )


def _load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    return copy_into(model, adapter_tensors(model, path))


@torch.no_grad()
def copy_into(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Copy an adapter's tensors (by the model's parameter names) into ``model``; returns it."""
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        params[name].copy_(tensor)
    return model


def adapter_tensors(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """A saved adapter's tensors under the model's parameter names, checked against the model: every name
    it has, every shape it expects, every LoRA matrix it needs."""
    params = dict(model.named_parameters())
    loaded = {_from_peft_key(k): v for k, v in load_file(Path(path) / WEIGHTS_FILE).items()}
    for name, tensor in loaded.items():
        if name not in params:
            raise UsageError(
                f"The adapter has {name!r} but the model does not: it was saved for another "
                "architecture or other target_modules/layers."
            )
        if params[name].shape != tensor.shape:
            raise UsageError(
                f"Shape mismatch for {name!r}: adapter {tuple(tensor.shape)} vs model "
                f"{tuple(params[name].shape)}; the adapter was saved for another model size or rank."
            )
    missing = [n for n in params if is_lora_param(n) and n not in loaded]
    if missing:
        raise UsageError(
            f"The adapter in {path} lacks {len(missing)} LoRA matrices the model has "
            f"(first: {missing[0]!r}); its target_modules or layers differ."
        )
    return loaded
