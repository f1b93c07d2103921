"""Where a model's files are and what its ``generation_config.json`` asks, without torch: the
command line checks a call's options against them before it loads anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..hub_cache import local_folder, not_found_hint
from ..jsonfile import read_json_object
from .options import HF_TEMPERATURE, HF_TOP_K, HF_TOP_P


def model_folder(path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None, kind: str = "model") -> Path:
    """The local folder of a model (or an adapter, ``kind``): ``path`` itself, or a repository
    name's cached snapshot."""
    folder = local_folder(path, revision, cache_dir)
    if folder.is_file():
        holder, config = folder.resolve().parent, "adapter_config.json" if kind == "adapter" else "config.json"
        hint = f"; its folder {holder} holds {config}" if (holder / config).is_file() else ""
        raise CheckpointError(f"{kind} folder {path} is a file, not a folder: pass the folder that holds the {kind}'s "
                              f"{config} and weights{hint}")
    if not folder.is_dir():
        raise CheckpointError(f"{kind} folder {path} does not exist{not_found_hint(path, revision, cache_dir)} "
                              "(this package never downloads)")
    return folder


def generation_defaults(path: str | Path) -> dict[str, Any]:
    """Generation defaults from the folder's ``generation_config.json``, read as transformers reads
    it: ``max_new_tokens``, the logits rules (repetition penalties, n-gram and word bans, biases,
    suppressed tokens, ``min_new_tokens``) and the beam settings always; the sampling settings only when ``do_sample`` is
    true (otherwise generation is greedy), with transformers' defaults for what the file leaves out
    (temperature 1.0, top_k 50, top_p 1.0; a top_k of 0 or a top_p of 1.0 filters nothing). The
    values are checked when a call uses them, as a call's own are."""
    f = Path(path) / "generation_config.json"
    if not f.is_file():
        return {}
    gen = read_json_object(f, CheckpointError)
    out: dict[str, Any] = {}
    if isinstance(gen.get("max_new_tokens"), int):
        out["max_new_tokens"] = gen["max_new_tokens"]
    for key in ("repetition_penalty", "no_repeat_ngram_size", "encoder_repetition_penalty", "encoder_no_repeat_ngram_size",
                "bad_words_ids", "sequence_bias", "suppress_tokens", "begin_suppress_tokens", "min_new_tokens", "num_beams",
                "length_penalty", "early_stopping"):
        if gen.get(key) is not None and gen[key] != _NO_EFFECT.get(key):
            out[key] = gen[key]
    if gen.get("do_sample") is True:
        out["temperature"] = float(gen.get("temperature", HF_TEMPERATURE))
        top_k = gen.get("top_k", HF_TOP_K)
        out["top_k"] = int(top_k) if top_k else None
        top_p = float(gen.get("top_p", HF_TOP_P))
        out["top_p"] = top_p if top_p < 1.0 else None
        for key in ("min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"):
            if gen.get(key) is not None and gen[key] != _NO_EFFECT.get(key):
                out[key] = gen[key]
    return out


# the values transformers writes for "not set" (GenerationConfig's defaults)
_NO_EFFECT: dict[str, Any] = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                              "encoder_no_repeat_ngram_size": 0, "min_new_tokens": 0, "typical_p": 1.0,
                              "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "num_beams": 1, "length_penalty": 1.0, "early_stopping": False}
