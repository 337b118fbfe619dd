"""lora_tutorial: LoRA from first principles, the library behind the book."""

from . import dora, pissa  # noqa: F401  (register the DoRA variant and PiSSA's initialisation)
from .adapter_io import copy_to_peft, load_adapter, read_adapter_config, save_adapter
from .adapters import AdapterSet
from .lora import LoRAConfig, LoRALinear, LoRASummary, apply_lora, lora_layers, merge_lora, remove_lora
from .params import ParameterCount, count_parameters

__version__ = "0.1.0"
__all__ = [
    "AdapterSet",
    "LoRAConfig",
    "LoRALinear",
    "LoRASummary",
    "ParameterCount",
    "apply_lora",
    "copy_to_peft",
    "count_parameters",
    "load_adapter",
    "lora_layers",
    "merge_lora",
    "read_adapter_config",
    "remove_lora",
    "save_adapter",
]
