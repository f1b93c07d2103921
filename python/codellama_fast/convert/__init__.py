"""Checkpoint conversion to HF Llama folders: Meta originals (``meta``), llama2.c (``llama2c``),
and a base folder with a LoRA adapter merged in (``merge_lora``)."""

from .llama2c import convert_llama2c
from .lora_merge import merge_lora
from .meta import convert_meta

__all__ = ["convert_llama2c", "convert_meta", "merge_lora"]
