"""One Engine shared by several threads (a web server's worker pool): every call returns what
transformers computes for it alone, whatever runs beside it: greedy generations, streams, beam
searches and scores, interleaved at random."""

from __future__ import annotations

import random
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.engine_helpers import (
    fp32_engine,
    hf_beams,
    logprobs_close,
    random_checkpoint,
)

PROMPTS = ["def quicksort(items):\n    ", "import os\n", "class Stack:\n    def push(self, x):", "x = [1, 2,"]
NEW = 12


@pytest.mark.parametrize("graph", [False, "eager"])
def test_threads_sharing_an_engine_each_get_their_own_answer(tmp_path_factory, tok, graph):
    """`graph="eager"`: the static-buffer decode step of CUDA, uncaptured, so the kept decode
    states, their leases and the overlapping calls' own caches are shared between the threads."""
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "threads")
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = graph
    ids = {p: tok.encode(p) for p in PROMPTS}
    # transformers, one prompt at a time: greedy tokens, the 2-beam search, each token's log-probability
    greedy = {p: hf.generate(torch.tensor([i]), max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(i):].tolist()
              for p, i in ids.items()}
    beams = {p: hf_beams(hf, [i], NEW, None, num_beams=2)[0][0] for p, i in ids.items()}
    with torch.no_grad():
        scored = {p: hf(torch.tensor([i])).logits[0, :-1].log_softmax(-1).gather(1, torch.tensor(i[1:])[:, None])[:, 0].tolist()
                  for p, i in ids.items()}

    def call(kind: str, p: str):
        if kind == "generate":
            return engine.generate(p, max_new_tokens=NEW, stop_at_eos=False).token_ids[0] == greedy[p]
        if kind == "batch":  # two prompts of different lengths, left-padded together
            q = PROMPTS[(PROMPTS.index(p) + 1) % len(PROMPTS)]
            got = engine.generate([p, q], max_new_tokens=NEW, stop_at_eos=False).token_ids
            return got == [greedy[p], greedy[q]]
        if kind == "stream":
            return "".join(engine.stream(p, max_new_tokens=NEW, stop_at_eos=False)) == tok._native.decode_keep_space(greedy[p], True)
        if kind == "beams":
            return engine.generate(p, max_new_tokens=NEW, stop_at_eos=False, num_beams=2).token_ids[0] == beams[p]
        return logprobs_close(engine.score(p).token_logprobs[0], scored[p], 1e-4)

    failures: list[str] = []

    def worker(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(12):
            kind, p = r.choice(["generate", "batch", "stream", "beams", "score"]), r.choice(PROMPTS)
            try:
                if not call(kind, p):
                    failures.append(f"{kind} {p!r}: a different answer")
            except Exception as exc:  # noqa: BLE001  (reported below with the call that raised)
                failures.append(f"{kind} {p!r}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(random.randrange(2**31),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    if graph:
        assert engine._graphs.builds >= 1  # the calls ran on kept decode states
    # the same calls alone, as a check that the references above are the engine's answers at all
    assert all(call(kind, PROMPTS[0]) for kind in ("generate", "batch", "stream", "beams", "score"))
