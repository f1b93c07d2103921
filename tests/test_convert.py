"""Checkpoint conversion: synthetic Meta checkpoints (1/2/4 shards, MHA/GQA) against a Meta-style
reference forward; the real stories260K llama2.c model against a reference written here on its
raw weights; interrupted and broken conversions."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from codellama_fast import ConversionError  # noqa: E402
from codellama_fast.convert import convert_llama2c, convert_meta  # noqa: E402
from codellama_fast.engine import Engine, load_model  # noqa: E402
from codellama_fast.engine.cache import KVCache  # noqa: E402
from codellama_fast.engine.model import StepContext  # noqa: E402
from tests.conftest import CODELLAMA_DIR, STORIES_DIR  # noqa: E402
from tests.meta_reference import meta_forward, random_meta_weights, save_meta_checkpoint  # noqa: E402

CASES = {  # name: (dim, layers, heads, kv_heads, ffn, shards)
    "mha-1shard": (64, 2, 4, 4, 96, 1),
    "mha-2shards": (64, 2, 4, 4, 96, 2),
    "gqa-4shards": (128, 2, 8, 4, 128, 4),
    "gqa8-2shards": (128, 3, 16, 2, 160, 2),
}


def _params(dim, layers, heads, kv):
    return {"dim": dim, "n_layers": layers, "n_heads": heads, "n_kv_heads": kv, "vocab_size": -1, "multiple_of": 16,
            "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 1000000.0}


def _ours_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    m = load_model(folder, dtype="float32", device="cpu")
    b, t = ids.shape
    cache = KVCache(m.config, b, t, torch.float32, torch.device("cpu"))
    ctx = StepContext(torch.arange(t).expand(b, t), torch.arange(t), 0, torch.zeros(b, dtype=torch.long), t)
    with torch.no_grad():
        return m(ids, ctx, cache.layers, last_only=False)


@pytest.mark.parametrize("case", list(CASES))
def test_meta_conversion_matches_meta_reference(tmp_path, case):
    dim, layers, heads, kv, ffn, shards = CASES[case]
    w = random_meta_weights(dim, layers, heads, kv, ffn, 32016, seed=int.from_bytes(os.urandom(4), "little"))
    src = tmp_path / "meta"
    save_meta_checkpoint(src, w, shards, _params(dim, layers, heads, kv), CODELLAMA_DIR / "tokenizer.model")
    out = convert_meta(src, tmp_path / "hf", dtype=torch.float32)
    ids = torch.randint(0, 32016, (2, 13))
    with torch.no_grad():
        ref = meta_forward(w, ids, heads, kv, 1e-5, 1e6)
    rel = lambda a: ((a - ref).abs().max() / ref.abs().max()).item()  # noqa: E731
    assert rel(_ours_logits(out, ids)) < 1e-4
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        assert rel(hf(ids).logits) < 1e-4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_theta"] == 1e6 and cfg["vocab_size"] == 32016 and cfg["num_key_value_heads"] == kv
    assert (out / "tokenizer.model").is_file() and (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".hf.partial-*"))


def test_meta_conversion_bf16_output_and_sharded_files(tmp_path):
    dim, layers, heads, kv, ffn, shards = CASES["gqa-4shards"]
    w = random_meta_weights(dim, layers, heads, kv, ffn, 32016, seed=3)
    save_meta_checkpoint(tmp_path / "meta", w, shards, _params(dim, layers, heads, kv), CODELLAMA_DIR / "tokenizer.model", dtype=torch.bfloat16)
    out = convert_meta(tmp_path / "meta", tmp_path / "hf", dtype=torch.bfloat16, max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    m = load_model(out, dtype="auto", device="cpu")
    assert m.embed.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 32016, (1, 9))
    ref = meta_forward({k: v.to(torch.bfloat16).float() for k, v in w.items()}, ids, heads, kv, 1e-5, 1e6)
    got = _ours_logits(out, ids)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4  # bf16 weights, fp32 compute


def _stories_reference(path: Path, steps: int) -> list[int]:
    """Greedy decoding written here on the raw llama2.c weights (legacy v0 layout, interleaved RoPE)."""
    raw = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    data = torch.frombuffer(bytearray(raw[28:]), dtype=torch.float32)
    hd = dim // n_heads
    pos = 0

    def take(*shape):
        nonlocal pos
        n = 1
        for s in shape:
            n *= s
        t = data[pos : pos + n].view(*shape)
        pos += n
        return t

    emb = take(abs(vocab), dim)
    att_norm = take(n_layers, dim)
    wq, wk, wv = take(n_layers, dim, dim), take(n_layers, n_kv * hd, dim), take(n_layers, n_kv * hd, dim)
    wo = take(n_layers, dim, dim)
    ffn_norm = take(n_layers, dim)
    w1, w2, w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    final = take(dim)
    w = {"tok_embeddings.weight": emb, "norm.weight": final, "output.weight": emb}
    for i in range(n_layers):
        p = f"layers.{i}."
        w.update({p + "attention.wq.weight": wq[i], p + "attention.wk.weight": wk[i], p + "attention.wv.weight": wv[i],
                  p + "attention.wo.weight": wo[i], p + "feed_forward.w1.weight": w1[i], p + "feed_forward.w2.weight": w2[i],
                  p + "feed_forward.w3.weight": w3[i], p + "attention_norm.weight": att_norm[i], p + "ffn_norm.weight": ffn_norm[i]})
    tokens = [1]
    with torch.no_grad():
        for _ in range(steps):
            logits = meta_forward(w, torch.tensor([tokens]), n_heads, n_kv, 1e-5, 10000.0)
            tokens.append(int(logits[0, -1].argmax()))
    return tokens[1:]


def test_stories260k_conversion_greedy_matches_reference(tmp_path):
    out = convert_llama2c(STORIES_DIR / "stories260K.bin", STORIES_DIR / "tok512.model", tmp_path / "st", dtype=torch.float32)
    engine = Engine.from_pretrained(out, device="cpu")
    steps = 210
    ours = engine.generate("", max_new_tokens=steps, stop_at_eos=False).token_ids[0]
    assert ours == _stories_reference(STORIES_DIR / "stories260K.bin", steps)
    # and the text llama2.c's documentation shows for this model (shared/models/stories260K/README.md)
    assert engine.tokenizer.decode(ours).startswith("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.")


def test_bundled_demo_model_is_the_converted_stories260k():
    from codellama_fast.data import DEMO_MODEL_DIR

    engine = Engine.from_pretrained(DEMO_MODEL_DIR, device="cpu")
    assert engine.generate("", max_new_tokens=30, stop_at_eos=False).token_ids[0] == _stories_reference(STORIES_DIR / "stories260K.bin", 30)


def _write_v1(path: Path, h, w: dict[str, torch.Tensor], version: int = 1, group: int = 32) -> None:
    """llama2.c export.py version1/version2 layouts, written here from the v0 weights."""
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = h
    head = struct.pack("<I", 0x616B3432) + struct.pack("<i", version) + struct.pack("<7i", dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) + struct.pack("B", 1)
    if version == 2:
        head += struct.pack("<i", group)
    out = bytearray(head + b"\0" * (256 - len(head)))
    for t in (w["att_norm"], w["ffn_norm"], w["final"]):
        out += t.contiguous().numpy().astype("<f4").tobytes()
    mats = [w["emb"]] + [w[n][i] for n in ("wq", "wk", "wv", "wo", "w1", "w2", "w3") for i in range(n_layers)]
    for m in mats:
        if version == 1:
            out += m.contiguous().numpy().astype("<f4").tobytes()
        else:
            g = m.reshape(-1, group)
            scale = g.abs().max(dim=1).values / 127.0
            q = torch.round(g / scale[:, None]).to(torch.int8)
            out += q.numpy().tobytes() + scale.numpy().astype("<f4").tobytes()
    path.write_bytes(bytes(out))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.filterwarnings("ignore:.*has no tokenizer:RuntimeWarning")  # weights only: compared tensor by tensor
def test_llama2c_versioned_formats(tmp_path, version):
    raw = (STORIES_DIR / "stories260K.bin").read_bytes()
    h = struct.unpack("<7i", raw[:28])
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = h
    hd = dim // n_heads
    data = torch.frombuffer(bytearray(raw[28:]), dtype=torch.float32)
    sizes = [("emb", (vocab, dim)), ("att_norm", (n_layers, dim)), ("wq", (n_layers, dim, dim)), ("wk", (n_layers, n_kv * hd, dim)),
             ("wv", (n_layers, n_kv * hd, dim)), ("wo", (n_layers, dim, dim)), ("ffn_norm", (n_layers, dim)),
             ("w1", (n_layers, hidden, dim)), ("w2", (n_layers, dim, hidden)), ("w3", (n_layers, hidden, dim)), ("final", (dim,))]
    w, pos = {}, 0
    for name, shape in sizes:
        n = 1
        for s in shape:
            n *= s
        w[name] = data[pos : pos + n].view(shape).clone()
        pos += n
    src = tmp_path / f"v{version}.bin"
    _write_v1(src, h, w, version)
    v0 = load_model(convert_llama2c(STORIES_DIR / "stories260K.bin", None, tmp_path / "v0"), device="cpu")
    vn = load_model(convert_llama2c(src, None, tmp_path / "vn"), device="cpu")
    for (n0, p0), (n1, p1) in zip(v0.state_dict().items(), vn.state_dict().items()):
        assert n0 == n1
        tol = 0 if version == 1 else 0.6 * p0.abs().max().item() / 127  # int8 groups: half a quantisation step
        assert (p0 - p1).abs().max().item() <= tol + 1e-7, n0


def _make_two_shard(tmp_path):
    dim, layers, heads, kv, ffn, _ = CASES["mha-2shards"]
    w = random_meta_weights(dim, layers, heads, kv, ffn, 32016, seed=1)
    src = tmp_path / "meta"
    save_meta_checkpoint(src, w, 2, _params(dim, layers, heads, kv), CODELLAMA_DIR / "tokenizer.model")
    return src


def test_interrupted_conversion_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    src = _make_two_shard(tmp_path)
    from codellama_fast.convert import safetensors_writer

    calls = {"n": 0}
    original = safetensors_writer.SafetensorsWriter.write

    def failing(self, name, tensor):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        return original(self, name, tensor)

    monkeypatch.setattr(safetensors_writer.SafetensorsWriter, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        convert_meta(src, tmp_path / "hf", dtype=torch.float32)
    assert not (tmp_path / "hf").exists()
    assert not list(tmp_path.glob(".hf.partial-*"))


def test_killed_conversion_leaves_no_model(tmp_path):
    """A conversion killed outright (no cleanup possible) leaves only a hidden partial folder
    without config.json, never an output folder."""
    src = _make_two_shard(tmp_path)
    code = (
        "import os, signal, torch\n"
        "from codellama_fast.convert import safetensors_writer, convert_meta\n"
        "orig = safetensors_writer.SafetensorsWriter.write\n"
        "n = [0]\n"
        "def w(self, name, t):\n"
        "    n[0] += 1\n"
        "    if n[0] == 5: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return orig(self, name, t)\n"
        "safetensors_writer.SafetensorsWriter.write = w\n"
        f"convert_meta({str(src)!r}, {str(tmp_path / 'hf')!r}, dtype=torch.float32)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert res.returncode != 0
    assert not (tmp_path / "hf").exists()
    partial = list(tmp_path.glob(".hf.partial-*"))
    assert partial and not (partial[0] / "config.json").exists()


def _copy_of(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_broken_meta_checkpoints(tmp_path):
    src = _make_two_shard(tmp_path)
    # missing shard
    gap = _copy_of(src, tmp_path / "gap")
    (gap / "consolidated.00.pth").unlink()
    with pytest.raises(ConversionError, match=r"consolidated\.00\.pth are missing"):
        convert_meta(gap, tmp_path / "o1")
    # a missing last shard shows up as shapes that do not add up
    last = _copy_of(src, tmp_path / "last")
    (last / "consolidated.01.pth").unlink()
    with pytest.raises(ConversionError, match="a shard may be missing"):
        convert_meta(last, tmp_path / "o2")
    # truncated shard
    trunc = _copy_of(src, tmp_path / "trunc")
    data = (trunc / "consolidated.01.pth").read_bytes()
    (trunc / "consolidated.01.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="consolidated.01.pth"):
        convert_meta(trunc, tmp_path / "o3")
    # inconsistent shard shapes
    bad = _copy_of(src, tmp_path / "bad")
    sd = torch.load(bad / "consolidated.01.pth", weights_only=True)
    sd["layers.0.attention.wo.weight"] = sd["layers.0.attention.wo.weight"][:-1]
    torch.save(sd, bad / "consolidated.01.pth")
    with pytest.raises(ConversionError, match="disagree"):
        convert_meta(bad, tmp_path / "o4")
    # unknown params
    params = json.loads((src / "params.json").read_text())
    params["moe_experts"] = 8
    (src / "params.json").write_text(json.dumps(params))
    with pytest.raises(ConversionError, match="moe_experts"):
        convert_meta(src, tmp_path / "o5")
    # model size that does not fit
    with pytest.raises(ConversionError, match="unknown model size"):
        convert_meta(last, tmp_path / "o6", model_size="70B")
    # output exists
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    params.pop("moe_experts")
    (src / "params.json").write_text(json.dumps(params))
    with pytest.raises(ConversionError, match="not empty"):
        convert_meta(src, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_cli_convert_llama2c(tmp_path):
    res = subprocess.run([sys.executable, "-m", "codellama_fast.cli", "convert", "--from", "llama2c", "--input", str(STORIES_DIR / "stories260K.bin"),
                          "--tokenizer", str(STORIES_DIR / "tok512.model"), "--output", str(tmp_path / "st"), "--dtype", "float32"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    gen = subprocess.run([sys.executable, "-m", "codellama_fast.cli", "generate", "--model", str(tmp_path / "st"), "--max-new-tokens", "20", "--temperature", "0"],
                         capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("Once upon a time")
    assert "tokens/s" in gen.stderr and "tokens/s" not in gen.stdout


def test_cli_convert_reads_the_kind_from_the_input_and_warns_without_a_tokenizer(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "codellama_fast.cli", *args], capture_output=True, text=True)

    res = cli("convert", "--input", str(STORIES_DIR / "stories260K.bin"), "--output", str(tmp_path / "st"))  # no --from
    assert res.returncode == 0, res.stderr
    assert "warning: " in res.stderr and "has no tokenizer" in res.stderr
    assert (tmp_path / "st" / "model.safetensors").is_file() and not (tmp_path / "st" / "tokenizer.model").exists()
    gen = cli("generate", "--model", str(tmp_path / "st"), "--max-new-tokens", "5")
    assert gen.returncode == 2 and "--tokenizer" in gen.stderr
    gen = cli("generate", "--model", str(tmp_path / "st"), "--tokenizer", str(STORIES_DIR / "tok512.model"), "--max-new-tokens", "8")
    assert gen.returncode == 0 and gen.stdout.startswith("Once upon a time"), gen.stderr
    missing = cli("convert", "--input", str(tmp_path / "absent.bin"), "--output", str(tmp_path / "x"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "x").exists()
    folder = cli("convert", "--input", str(STORIES_DIR), "--output", str(tmp_path / "y"))  # a folder reads as Meta's layout
    assert folder.returncode == 2 and "params.json" in folder.stderr


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", b"\xff\xfe{}"])
def test_json_files_that_are_not_objects_raise_each_callers_error(tmp_path, text):
    """config.json, params.json and tokenizer_config.json share one reader; each caller's typed
    error names the file, for broken JSON, bytes that are not UTF-8, and a JSON value that is not
    an object."""
    import shutil

    from codellama_fast import CodeLlamaTokenizerFast, InvalidTokenizerFile
    from codellama_fast.convert.meta import read_params
    from codellama_fast.engine.config import LlamaConfig
    from codellama_fast.errors import CheckpointError, ConversionError
    from tests.conftest import CODELLAMA_DIR

    def put(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    with pytest.raises(CheckpointError, match="config.json"):
        LlamaConfig.from_file(put(tmp_path / "model" / "config.json"))
    put(tmp_path / "meta" / "params.json")
    with pytest.raises(ConversionError, match="params.json"):
        read_params(tmp_path / "meta")
    tok_dir = tmp_path / "tok"
    shutil.copytree(CODELLAMA_DIR, tok_dir)
    put(tok_dir / "tokenizer_config.json")
    with pytest.raises(InvalidTokenizerFile, match="tokenizer_config.json"):
        CodeLlamaTokenizerFast.from_pretrained(tok_dir)
