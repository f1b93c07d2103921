"""Checkpoint conversion to HF Llama folders: Meta originals (``meta``) and llama2.c (``llama2c``)."""

from .llama2c import convert_llama2c
from .meta import convert_meta

__all__ = ["convert_llama2c", "convert_meta"]
