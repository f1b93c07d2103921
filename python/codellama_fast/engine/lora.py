"""LoRA adapters (a PEFT folder: ``adapter_config.json`` and ``adapter_model.safetensors``),
merged into the base weights while they load, so a fine-tune shipped as an adapter runs at the
base model's speed with no merged copy on disk.

Each adapted weight W [out, in] becomes W + s · B @ A with A [r, in], B [out, r] and
s = alpha / r (alpha / sqrt(r) with ``use_rslora``), r and alpha per module from ``rank_pattern``
and ``alpha_pattern`` as PEFT reads them; an embedding's LoRA adds s · (B @ A)^T. Modules the
adapter saved whole (``modules_to_save``, embedding layers) replace the base weight. Anything
else PEFT can express (DoRA, biases, resized vocabularies, other methods) is refused by name.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsupportedConfigError
from ..jsonfile import read_json_object
from .folders import model_folder
from .loader import load_state_dict

_PREFIX = "base_model.model."
# PEFT settings that change the merged weights in ways this merge does not follow
_UNSUPPORTED_FLAGS = {"use_dora": "DoRA", "lora_bias": "a LoRA bias", "fan_in_fan_out": "fan_in_fan_out (GPT-2 Conv1D layers)",
                      "use_qalora": "QA-LoRA", "layer_replication": "layer replication", "alora_invocation_tokens": "aLoRA",
                      "target_parameters": "LoRA on parameters", "trainable_token_indices": "trainable token indices",
                      "use_bdlora": "block-diagonal LoRA"}


class LoraAdapter:
    """The deltas and replacements an adapter folder holds, by the base model's tensor name."""

    def __init__(self, folder: str | Path, cache_dir: str | Path | None = None) -> None:
        # a folder, or a repository name fetched earlier into the local Hugging Face cache
        self.folder = model_folder(folder, None, cache_dir, kind="adapter")
        cfg_file = self.folder / "adapter_config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{self.folder} has no adapter_config.json: it is not a PEFT adapter folder")
        cfg = read_json_object(cfg_file, CheckpointError)
        if cfg.get("peft_type", "LORA") != "LORA":
            raise UnsupportedConfigError(f"{cfg_file}: peft_type {cfg.get('peft_type')!r} is not supported; only LoRA adapters merge here")
        for key, what in _UNSUPPORTED_FLAGS.items():
            if cfg.get(key):
                raise UnsupportedConfigError(f"{cfg_file}: {what} ({key}) is not supported; merge the adapter with PEFT "
                                             "(merge_and_unload) and load the merged folder")
        if cfg.get("bias", "none") != "none":
            raise UnsupportedConfigError(f"{cfg_file}: bias={cfg['bias']!r} trains biases the Llama layers do not have")
        self.alpha = _number(cfg, "lora_alpha", cfg_file)
        self.rslora = bool(cfg.get("use_rslora", False))
        self.alpha_pattern: dict[str, Any] = cfg.get("alpha_pattern") or {}
        self.tensors = _read_weights(self.folder)
        self.used: set[str] = set()

    def scaling(self, module: str, r: int) -> float:
        """s for the LoRA on `module` (the base model's name, e.g. model.layers.0.self_attn.q_proj)."""
        alpha = self.alpha
        for pattern, value in self.alpha_pattern.items():  # PEFT's get_pattern_key: the first key the name ends with
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = float(value)
                break
        return alpha / math.sqrt(r) if self.rslora else alpha / r

    def apply(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The base tensor `name` (e.g. model.layers.0.self_attn.q_proj.weight) with the adapter
        applied, in fp32 on the weight's device; the weight itself when the adapter leaves it."""
        module = name.removesuffix(".weight")
        whole = next((k for k in (_PREFIX + name, _PREFIX + module + ".base_layer.weight") if k in self.tensors), None)
        out = weight
        if whole is not None:
            self.used.add(whole)
            out = self.tensors[whole]
            if tuple(out.shape) != tuple(weight.shape):
                raise CheckpointError(f"{self.folder}: the adapter's {whole} has shape {list(out.shape)}, the model's {name} "
                                      f"{list(weight.shape)} (a resized vocabulary?); merge the adapter with PEFT and load the merged folder")
            out = out.to(weight.device)
        linear = (_PREFIX + module + ".lora_A.weight", _PREFIX + module + ".lora_B.weight")
        embedding = (_PREFIX + module + ".lora_embedding_A", _PREFIX + module + ".lora_embedding_B")
        for a_key, b_key, transpose in (linear + (False,), embedding + (True,)):
            if a_key not in self.tensors and b_key not in self.tensors:
                continue
            if a_key not in self.tensors or b_key not in self.tensors:
                raise CheckpointError(f"{self.folder}: {a_key if a_key not in self.tensors else b_key} is missing (its pair is there)")
            self.used.update((a_key, b_key))
            a = self.tensors[a_key].to(device=weight.device, dtype=torch.float32)  # [r, in]
            b = self.tensors[b_key].to(device=weight.device, dtype=torch.float32)  # [out, r]
            delta = b @ a  # [out, in]; an embedding's is [dim, vocab]
            delta = delta.T if transpose else delta
            if tuple(delta.shape) != tuple(weight.shape):
                raise CheckpointError(f"{self.folder}: the LoRA on {module} gives a {list(delta.shape)} update for a "
                                      f"{list(weight.shape)} weight: the adapter belongs to another base model")
            out = out.float() + self.scaling(module, a.shape[0]) * delta
        return out

    def check_all_used(self) -> None:
        """Every adapter tensor found its base weight (else the adapter targets modules this
        architecture does not have, or another model)."""
        left = sorted(set(self.tensors) - self.used)
        if left:
            raise CheckpointError(f"{self.folder}: {len(left)} adapter tensors match no weight of this model, e.g. {', '.join(left[:3])}")


def _number(cfg: dict[str, Any], key: str, where: Path) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    st, pt = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types for corrupt files)
            raise CheckpointError(f"{st} is not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if pt.is_file():
        return load_state_dict(pt)
    raise CheckpointError(f"{folder} holds no adapter_model.safetensors or adapter_model.bin")
