"""Repository names read from the local Hugging Face cache, against huggingface_hub and
transformers themselves: a cache laid out as huggingface_hub lays it out (blobs, snapshots of
symlinks, refs) is built here from random checkpoints; where the cache folder is, which snapshot a
name and revision mean, and what the model computes must equal what huggingface_hub's offline
``snapshot_download`` and transformers' ``from_pretrained(..., local_files_only=True)`` find."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
hub = pytest.importorskip("huggingface_hub")

from codellama_fast import CheckpointError, CodeLlamaTokenizerFast
from codellama_fast.cli import main as cli_main
from codellama_fast.convert import merge_lora
from codellama_fast.engine import Engine
from codellama_fast.hub_cache import cached_snapshot

from tests.conftest import LLAMA2_MODEL
from tests.engine_helpers import fresh_seed, make_hf_model, save

REPO = "test-org/tiny-llama"
_HUB_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HF_HUB_OFFLINE")


def _commit(seed: int) -> str:
    return hashlib.sha1(str(seed).encode()).hexdigest()  # 40 hex digits, as the Hub's commit ids


def put_in_cache(cache: Path, repo_id: str, files: Path, commit: str, refs: tuple[str, ...] = ()) -> Path:
    """Stores the files of folder `files` as huggingface_hub does: content-named blobs, a snapshot
    folder of relative symlinks for `commit`, and each ref (branch or tag) naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache holding REPO at two commits, "main" at the first and tag "v2" at the second (two
    different random checkpoints); returns (cache folder, {revision: transformers model})."""
    root = tmp_path_factory.mktemp("hub")
    models = {}
    for rev in ("main", "v2"):
        seed = fresh_seed()
        hf = make_hf_model("mha", seed)
        put_in_cache(root, REPO, save(hf, tmp_path_factory.mktemp(rev)), _commit(seed), refs=(rev,))
        models[rev] = hf
    return root, models


@pytest.fixture
def hub_env(cache, monkeypatch):
    for var in _HUB_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # transformers, the reference, must not look online either
    return cache


def _logits(hf_or_engine, ids: list[int]) -> torch.Tensor:
    if isinstance(hf_or_engine, Engine):
        return torch.tensor(hf_or_engine.score(input_ids=[[1] + ids], top_logprobs=0).token_logprobs[0])
    with torch.no_grad():
        logp = torch.log_softmax(hf_or_engine(torch.tensor([[1] + ids])).logits[0, :-1].float(), dim=-1)
    return logp.gather(1, torch.tensor(ids)[:, None])[:, 0]


@pytest.mark.parametrize("env", [
    {},
    {"HF_HOME": "/x/hf-home"},
    {"HF_HOME": "~/hf-home"},
    {"XDG_CACHE_HOME": "/x/xdg"},
    {"XDG_CACHE_HOME": "/x/xdg", "HF_HOME": "/x/hf-home"},
    {"HUGGINGFACE_HUB_CACHE": "/x/legacy", "HF_HOME": "/x/hf-home"},
    {"HF_HUB_CACHE": "/x/hub", "HUGGINGFACE_HUB_CACHE": "/x/legacy"},
    {"HF_HUB_CACHE": "$CLF_BASE/hub", "CLF_BASE": "/x/expanded"},
])
def test_cache_folder_is_the_one_huggingface_hub_uses(env):
    clean = {k: v for k, v in os.environ.items() if k not in _HUB_VARS}
    code = ("from huggingface_hub import constants; from codellama_fast.hub_cache import hub_cache_dir; "
            "print(constants.HF_HUB_CACHE); print(hub_cache_dir())")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    theirs, ours = out.stdout.splitlines()
    assert ours == theirs
    if env:  # the variables were read at all
        assert "/x/" in ours or "hf-home" in ours


def test_names_and_revisions_mean_the_snapshots_huggingface_hub_finds(hub_env):
    root, _ = hub_env
    revisions = [None, "main", "v2", *sorted(p.name for p in (root / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir()),
                 "no-such-branch", "0" * 40]
    found = 0
    for rev in revisions:
        try:
            theirs = Path(hub.snapshot_download(REPO, revision=rev, cache_dir=root, local_files_only=True))
        except hub.errors.LocalEntryNotFoundError:
            theirs = None
        found += theirs is not None
        assert cached_snapshot(REPO, rev, cache_dir=root) == theirs, rev
        assert cached_snapshot(REPO, rev) == theirs, rev  # the cache folder from HF_HUB_CACHE
    assert found == 5
    assert cached_snapshot("test-org/absent", None) is None


def test_engine_loads_a_cached_name_as_transformers_does(hub_env):
    from transformers import LlamaForCausalLM

    root, models = hub_env
    ids = torch.randint(3, 32016, (12,)).tolist()
    for rev in ("main", "v2"):
        theirs = LlamaForCausalLM.from_pretrained(REPO, revision=rev, cache_dir=root, local_files_only=True).eval()
        # the reference did read the checkpoint written at that revision
        assert torch.equal(theirs.lm_head.weight, models[rev].lm_head.weight)
        engine = Engine.from_pretrained(REPO, revision=None if rev == "main" else rev, dtype="float32", device="cpu")
        assert torch.allclose(_logits(engine, ids), _logits(theirs, ids), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_logits(models["main"], ids), _logits(models["v2"], ids), atol=1e-2)


def test_cli_generates_with_a_cached_name_and_revision(hub_env, capsys):
    _, models = hub_env
    code = cli_main(["generate", "--model", REPO, "--revision", "v2", "--max-new-tokens", "6", "--json", "def f(x):"])
    assert code == 0
    got = json.loads(capsys.readouterr().out)
    tok = CodeLlamaTokenizerFast.from_pretrained()  # the cached folder has no tokenizer files: Code Llama's vocabulary
    prompt = torch.tensor([tok.encode("def f(x):")])
    want = models["v2"].generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                                 eos_token_id=2, pad_token_id=0)[0, prompt.shape[1]:].tolist()
    want = want[: want.index(2)] if 2 in want else want
    assert got["token_ids"][0] == want


def test_a_local_folder_of_the_same_name_wins(hub_env, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    local = make_hf_model("mha", fresh_seed())
    save(local, tmp_path / REPO)
    monkeypatch.chdir(tmp_path)
    ids = torch.randint(3, 32016, (8,)).tolist()
    engine = Engine.from_pretrained(REPO, dtype="float32", device="cpu")
    theirs = LlamaForCausalLM.from_pretrained(REPO, local_files_only=True).eval()  # transformers, too, takes the folder
    assert torch.equal(theirs.lm_head.weight, local.lm_head.weight)
    assert torch.allclose(_logits(engine, ids), _logits(theirs, ids), rtol=1e-4, atol=1e-4)


def test_tokenizer_loads_a_cached_name(hub_env, tmp_path, sp_llama2):
    root, _ = hub_env
    files = tmp_path / "tok"
    files.mkdir()
    shutil.copy(LLAMA2_MODEL, files / "tokenizer.model")
    put_in_cache(root, "test-org/llama2-tokenizer", files, _commit(7), refs=("main",))
    tok = CodeLlamaTokenizerFast.from_pretrained("test-org/llama2-tokenizer")
    assert len(tok) == sp_llama2.get_piece_size() == 32000  # not the bundled 32016
    for text in ("def f(x):\n    return x", " Hello  world", "naïve 🦙"):
        assert tok.encode(text) == [1] + sp_llama2.encode(text)
    # the bundled names still mean the bundled files
    assert len(CodeLlamaTokenizerFast.from_pretrained("codellama/CodeLlama-7b-hf")) == 32016


def test_adapter_from_a_cached_name(hub_env, tmp_path):
    peft = pytest.importorskip("peft")
    root, _ = hub_env
    seed = fresh_seed()
    torch.manual_seed(seed)
    base_folder = save(make_hf_model("mha", seed), tmp_path / "base")
    lora = peft.get_peft_model(make_hf_model("mha", seed), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                          init_lora_weights=False)).eval()
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    lora.save_pretrained(tmp_path / "adapter")
    put_in_cache(root, "test-org/tiny-lora", tmp_path / "adapter", _commit(seed + 1), refs=("main",))
    engine = Engine.from_pretrained(base_folder, adapter="test-org/tiny-lora", dtype="float32", device="cpu")
    ids = torch.randint(3, 32016, (8,)).tolist()
    assert torch.allclose(_logits(engine, ids), _logits(lora, ids), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_logits(engine, ids), _logits(make_hf_model("mha", seed), ids), atol=1e-3)
    # merge-lora takes the names too: transformers on the merged folder computes PEFT's model
    from transformers import LlamaForCausalLM

    put_in_cache(root, "test-org/lora-base", base_folder, _commit(seed + 2), refs=("main",))
    merged = merge_lora("test-org/lora-base", "test-org/tiny-lora", tmp_path / "merged", progress=False)
    assert torch.allclose(_logits(LlamaForCausalLM.from_pretrained(merged).eval(), ids), _logits(lora, ids), rtol=1e-4, atol=1e-4)


def test_names_not_in_the_cache_say_where_they_were_looked_for(hub_env):
    root, _ = hub_env
    with pytest.raises(CheckpointError) as err:
        Engine.from_pretrained("test-org/absent", device="cpu")
    assert "hf download test-org/absent" in str(err.value) and str(root) in str(err.value)
    with pytest.raises(CheckpointError, match="at revision 'v9'"):
        Engine.from_pretrained(REPO, revision="v9", device="cpu")
    with pytest.raises(CheckpointError, match="hf download test-org/no-adapter"):
        Engine.from_pretrained(REPO, adapter="test-org/no-adapter", device="cpu")
    with pytest.raises(FileNotFoundError, match="hf download test-org/absent"):
        CodeLlamaTokenizerFast.from_pretrained("test-org/absent")
    with pytest.raises(CheckpointError) as err:  # a path is not a name: no cache advice
        Engine.from_pretrained("./no/such/folder", device="cpu")
    assert "hf download" not in str(err.value)
    with pytest.raises(TypeError, match="revision"):
        Engine.from_pretrained(REPO, revision=2, device="cpu")


def test_cache_dir_names_another_cache(hub_env, tmp_path, monkeypatch, sp_llama2):
    """cache_dir=, as transformers takes it, looks there and not in the default cache."""
    from transformers import LlamaForCausalLM

    root, models = hub_env
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="empty"):
        Engine.from_pretrained(REPO, device="cpu")
    ids = torch.randint(3, 32016, (8,)).tolist()
    engine = Engine.from_pretrained(REPO, cache_dir=root, revision="v2", dtype="float32", device="cpu")
    theirs = LlamaForCausalLM.from_pretrained(REPO, cache_dir=root, revision="v2", local_files_only=True).eval()
    assert torch.equal(theirs.lm_head.weight, models["v2"].lm_head.weight)
    assert torch.allclose(_logits(engine, ids), _logits(theirs, ids), rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError) as err:
        Engine.from_pretrained("test-org/absent", cache_dir=tmp_path, device="cpu")
    assert f"Hugging Face cache ({tmp_path}):" in str(err.value) and f"--cache-dir {tmp_path}`" in str(err.value)
    files = tmp_path / "tok"
    files.mkdir()
    shutil.copy(LLAMA2_MODEL, files / "tokenizer.model")
    put_in_cache(tmp_path / "other", "test-org/tok-elsewhere", files, _commit(11), refs=("main",))
    tok = CodeLlamaTokenizerFast.from_pretrained("test-org/tok-elsewhere", cache_dir=tmp_path / "other")
    assert tok.encode("def f(): pass") == [1] + sp_llama2.encode("def f(): pass")
