"""Tiny random Llama checkpoints written with transformers (the independent reference)."""

from __future__ import annotations

from pathlib import Path

import torch

CONFIGS = {
    # name: (hidden, layers, heads, kv_heads, ffn, rope_theta, vocab)
    "mha": (64, 2, 4, 4, 128, 1e4, 32016),
    "gqa4": (64, 2, 8, 2, 172, 1e6, 32016),
    "odd": (48, 3, 6, 3, 100, 1e6, 32016),
    "gqa8-small-vocab": (128, 2, 16, 2, 96, 1e4, 512),
    "gqa4-d16": (128, 2, 8, 2, 160, 1e6, 32016),
}


def hf_config(name: str, **over):
    from transformers import LlamaConfig

    hidden, layers, heads, kv, ffn, theta, vocab = CONFIGS[name]
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv, rope_theta=theta, max_position_embeddings=1024,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    kw.update(over)
    return LlamaConfig(**kw)


def make_hf_model(name: str, seed: int, **over):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(name, **over)).eval()
    # Random init has tiny weights; widen them so logits are not all near zero.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.08)
            else:
                p.uniform_(0.5, 1.5)
    return model


def save(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    return folder


def scripted(engine, script: list[int]) -> list[list[int]]:
    """Makes the model emit `script` token by token (then repeat its last token); returns the
    list of input batches it was called with."""
    calls: list[list[int]] = []
    vocab = engine.model.config.vocab_size

    def forward(tokens, ctx, caches, last_only=True):
        calls.append(tokens[0].tolist())
        k = min(len(calls) - 1, len(script) - 1)
        logits = torch.zeros(tokens.shape[0], vocab)
        logits[:, script[k]] = 10.0
        return logits

    engine.model.forward = forward  # type: ignore[method-assign]
    return calls


def logprobs_close(got, want, rel: float) -> bool:
    """Log-probability lists equal within ``rel`` of each value's size (at least 1): a random
    model's log-probabilities reach -30 and more, where fp32 rounding grows with the value."""
    return len(got) == len(want) and all(abs(a - b) <= rel * max(1.0, abs(b)) for a, b in zip(got, want))


def hf_logprobs(hf, prompt: list[int], generated: list[int]) -> list[float]:
    """transformers' log-probabilities (fp32) of `generated` after `prompt`, the whole sequence in one pass."""
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + generated])).logits[0].float()
    logp = logits[len(prompt) - 1 : -1].log_softmax(-1)
    return logp.gather(1, torch.tensor(generated)[:, None])[:, 0].tolist()


def fresh_seed() -> int:
    """A new random seed each run, printed so that a failure can be replayed."""
    import random

    seed = random.SystemRandom().randrange(2**31)
    print(f"random seed {seed}")
    return seed


def random_checkpoint(tmp_path_factory, name: str, label: str):
    """(seed, transformers model, saved folder) for a fresh random checkpoint of config `name`."""
    seed = fresh_seed()
    hf = make_hf_model(name, seed)
    return seed, hf, save(hf, tmp_path_factory.mktemp(label))


def hf_beams(hf, rows: list[list[int]], n: int, ends: list[int] | None, **kw) -> tuple[list[list[int]], list[float]]:
    """transformers' returned beams (generated part, cut before the first end token) and scores."""
    t = max(map(len, rows))
    x = torch.tensor([[0] * (t - len(r)) + r for r in rows])
    mask = (torch.arange(t)[None, :] >= torch.tensor([t - len(r) for r in rows])[:, None]).long()
    kw.setdefault("do_sample", False)
    out = hf.generate(x, attention_mask=mask, max_new_tokens=n, eos_token_id=ends, pad_token_id=0,
                      output_scores=True, return_dict_in_generate=True, **kw)
    seqs = []
    for row in out.sequences[:, t:].tolist():
        cuts = [row.index(e) for e in ends or () if e in row]
        row = row[: min(cuts)] if cuts else row
        while row and row[-1] == -1:  # the filler after a beam that a stopping criterion ended early
            row.pop()
        seqs.append(row)
    return seqs, out.sequences_scores.tolist()


def fp32_engine(path, tokenizer):
    """Our engine on the CPU in float32 for the checkpoint at `path`."""
    from codellama_fast.engine import Engine, load_model

    return Engine(load_model(path, dtype="float32", device="cpu"), tokenizer)


def spy_shapes(monkeypatch, owner, name: str) -> list[tuple[int, ...]]:
    """Replaces owner.name (a function taking a tensor first) with a wrapper that records that
    tensor's shape before each call; returns the list it fills."""
    calls: list[tuple[int, ...]] = []
    real = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls
