"""The efficiency benchmarks: a small timing and memory harness, what training keeps in memory, and the
ratios ``python -m lora_tutorial bench`` measures. They train the study's LoRA configurations."""
