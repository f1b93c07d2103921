"""A base HF Llama folder with a PEFT LoRA adapter merged in, written as a new HF folder (for tools
that cannot apply adapters), one tensor at a time: each base tensor is read memory-mapped, the
adapter's update added (engine.lora), and the result streamed to the output's safetensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..engine.config import LlamaConfig
from ..engine.folders import model_folder
from ..engine.loader import WeightSource, parse_dtype, validate
from ..engine.lora import LoraAdapter
from .hf_folder import finish_output, hf_plan, prepare_output, write_model

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def merge_lora(base: str | Path, adapter: str | Path, output: str | Path, dtype: str | torch.dtype | None = "auto",
               force: bool = False, progress: bool | None = None) -> Path:
    """Writes `base` + `adapter` to `output`; ``dtype`` "auto" keeps the base's stored dtype. The
    tokenizer files come from the adapter folder when it has them, else from the base; so does
    ``generation_config.json`` from the base. Returns the output folder."""
    base, output = model_folder(base), Path(output)  # a folder, or a name in the local Hugging Face cache
    lora = LoraAdapter(adapter)
    cfg = LlamaConfig.from_file(base / "config.json")
    src = WeightSource(base)
    validate(cfg, src)
    target = parse_dtype(dtype, torch.device("cpu"), src.dtypes["model.embed_tokens.weight"])
    tmp = prepare_output(output, force)
    try:
        write_model(tmp, cfg, hf_plan(cfg), lambda name: lora.apply(name, src.get(name)), target, progress=progress)
        lora.check_all_used()
        tokenizer_home = lora.folder if any((lora.folder / f).is_file() for f in _TOKENIZER_FILES[:2]) else base
        for name in _TOKENIZER_FILES:
            if (tokenizer_home / name).is_file():
                shutil.copyfile(tokenizer_home / name, tmp / name)
        if (base / "generation_config.json").is_file():
            shutil.copyfile(base / "generation_config.json", tmp / "generation_config.json")
        (tmp / "merged_from.json").write_text(json.dumps({"base": str(base.resolve()), "adapter": str(lora.folder.resolve())}, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finish_output(tmp, output)
    return output
