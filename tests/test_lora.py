"""LoRA adapters merged at load time against PEFT itself: adapters trained nowhere but with random
(non-zero) B matrices, saved by PEFT, loaded here on their base folder; the logits equal those of
PEFT's model in fp32, and greedy tokens equal its generate."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from codellama_fast import (
    CheckpointError,
    UnsupportedConfigError,
)
from codellama_fast.engine import Engine
from codellama_fast.engine.cache import KVCache
from codellama_fast.engine.model import StepContext

from tests.engine_helpers import make_hf_model, random_checkpoint


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    seed, _, path = random_checkpoint(tmp_path_factory, "gqa4", "base")
    return seed, path


def _adapter(seed: int, folder, **config):
    """PEFT's model for `config` on the base of `seed`, with random LoRA weights, saved to `folder`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed + 1)
    model = get_peft_model(make_hf_model("gqa4", seed), LoraConfig(init_lora_weights=False, **config)).eval()
    with torch.no_grad():  # PEFT's random init leaves B small: make the update as large as the weights
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(folder)
    return model


def _logits(engine, ids: list[int]) -> torch.Tensor:
    model = engine.model
    t = len(ids)
    cache = KVCache(model.config, 1, t, torch.float32, torch.device("cpu"))
    ctx = StepContext(torch.arange(t)[None], torch.arange(t), 0, torch.zeros(1, dtype=torch.long), t)
    with torch.no_grad():
        return model(torch.tensor([ids]), ctx, cache.layers, last_only=False)[0]


@pytest.mark.parametrize(
    "config",
    [
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        # per-module ranks and alphas, rsLoRA scaling, the output head and the embedding table
        {"r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": ["q_proj", "v_proj", "lm_head", "embed_tokens"],
         "rank_pattern": {"layers.1.self_attn.q_proj": 2}, "alpha_pattern": {"v_proj": 5}},
        # a module saved whole (modules_to_save) beside a LoRA
        {"r": 2, "lora_alpha": 4, "target_modules": ["down_proj"], "modules_to_save": ["embed_tokens"]},
    ],
)
def test_merged_adapter_equals_peft(base, tok, tmp_path, config):
    seed, folder = base
    peft_model = _adapter(seed, tmp_path / "adapter", **config)
    if config.get("modules_to_save"):  # give the saved module weights of its own, as training would
        with torch.no_grad():
            peft_model.base_model.model.model.embed_tokens.modules_to_save["default"].weight.normal_(0, 0.08)
        peft_model.save_pretrained(tmp_path / "adapter")
    engine = Engine.from_pretrained(folder, dtype="float32", device="cpu", tokenizer=tok, adapter=tmp_path / "adapter")
    plain = Engine.from_pretrained(folder, dtype="float32", device="cpu", tokenizer=tok)
    ids = tok.encode("def quicksort(items):\n    return sorted(items)")
    with torch.no_grad():
        want = peft_model(torch.tensor([ids])).logits[0]
    got = _logits(engine, ids)
    assert (got - want).abs().max() / want.abs().max() < 1e-4
    assert (_logits(plain, ids) - want).abs().max() / want.abs().max() > 1e-2  # the adapter changed the model
    x = torch.tensor([ids])
    with torch.no_grad():
        out = peft_model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)
    assert engine.generate(input_ids=[ids], max_new_tokens=24, stop_at_eos=False).token_ids[0] == out[0, len(ids):].tolist()


def test_adapter_errors_are_named(base, tok, tmp_path):
    seed, folder = base
    _adapter(seed, tmp_path / "ok", r=2, lora_alpha=4, target_modules=["q_proj"])

    def load(adapter):
        return Engine.from_pretrained(folder, dtype="float32", device="cpu", tokenizer=tok, adapter=adapter)

    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "absent")
    holder = f"its folder {tmp_path / 'ok'} holds adapter_config.json"
    with pytest.raises(CheckpointError, match=f"adapter folder .* is a file, not a folder: .*; {holder}"):
        load(tmp_path / "ok" / "adapter_config.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load(tmp_path / "empty")
    cfg = json.loads((tmp_path / "ok" / "adapter_config.json").read_text())
    for change, words in (({"use_dora": True}, "DoRA"), ({"bias": "all"}, "bias='all'"), ({"peft_type": "IA3"}, "peft_type 'IA3'")):
        bad = tmp_path / f"bad{len(words)}"
        bad.mkdir()
        (bad / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
        (bad / "adapter_model.safetensors").write_bytes((tmp_path / "ok" / "adapter_model.safetensors").read_bytes())
        with pytest.raises(UnsupportedConfigError, match=words):
            load(bad)
    # an adapter of another model: its update has the wrong shape
    other = make_hf_model("mha", seed)
    from peft import LoraConfig, get_peft_model

    get_peft_model(other, LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj"], init_lora_weights=False)).save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="belongs to another base model"):
        load(tmp_path / "other")
    # a LoRA on a module the base does not have (a layer past its last)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "ok" / "adapter_model.safetensors"))
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "adapter_config.json").write_text(json.dumps(cfg))
    save_file({**tensors, **{k.replace("layers.0.", "layers.7."): v.clone() for k, v in tensors.items() if "layers.0." in k}},
              str(extra / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="match no weight of this model, e.g. base_model.model.model.layers.7"):
        load(extra)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "adapter_config.json").write_text(json.dumps(cfg))
    (truncated / "adapter_model.safetensors").write_bytes((tmp_path / "ok" / "adapter_model.safetensors").read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(truncated)


def test_cli_adapter_generates_what_the_python_api_does(base, tok, tmp_path):
    import subprocess
    import sys

    seed, folder = base
    _adapter(seed, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    engine = Engine.from_pretrained(folder, device="cpu", tokenizer=tok, adapter=tmp_path / "adapter")
    res = subprocess.run([sys.executable, "-m", "codellama_fast.cli", "generate", "def f(x):", "--model", str(folder), "--adapter",
                          str(tmp_path / "adapter"), "--max-new-tokens", "12", "--device", "cpu"], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == engine.generate("def f(x):", max_new_tokens=12).text + "\n"


def test_merge_lora_writes_a_folder_transformers_loads_as_peft_merges(base, tok, tmp_path):
    """The merged folder: transformers' logits on it equal PEFT's merge_and_unload; this engine on
    it equals this engine with the adapter applied at load; a bad adapter leaves no output."""
    import subprocess
    import sys

    from transformers import LlamaForCausalLM

    seed, folder = base
    peft_model = _adapter(seed, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj", "up_proj", "lm_head"])
    res = subprocess.run([sys.executable, "-m", "codellama_fast.cli", "merge-lora", "--model", str(folder), "--adapter",
                          str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    ids = torch.tensor([tok.encode("def quicksort(items):\n    return sorted(items)")])
    with torch.no_grad():
        want = peft_model.merge_and_unload()(ids).logits[0]
        got = LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()(ids).logits[0]
    assert (got - want).abs().max() / want.abs().max() < 1e-5
    merged = Engine.from_pretrained(tmp_path / "merged", dtype="float32", device="cpu", tokenizer=tok)
    applied = Engine.from_pretrained(folder, dtype="float32", device="cpu", tokenizer=tok, adapter=tmp_path / "adapter")
    assert merged.generate("def f(x):", max_new_tokens=16, stop_at_eos=False).token_ids == \
        applied.generate("def f(x):", max_new_tokens=16, stop_at_eos=False).token_ids
    # an adapter for another model fails before anything is left at the output
    from peft import LoraConfig, get_peft_model

    get_peft_model(make_hf_model("mha", seed), LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj"], init_lora_weights=False)
                   ).save_pretrained(tmp_path / "other")
    from codellama_fast.convert import merge_lora

    with pytest.raises(CheckpointError, match="belongs to another base model"):
        merge_lora(folder, tmp_path / "other", tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.partial-*"))
