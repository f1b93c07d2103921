"""The decode step the engine captures as a CUDA graph is safe to capture: run uncaptured here,
every step of every decode state reads nothing back to the host and launches the same ops and
Triton kernels, with the same host-side arguments, as every other step (tests/graph_safety.py
says why both matter). Covered, on the Triton ops (the interpreter on CPU; the only ops whose step
the engine captures): greedy, sampled and beam-search states; the plain and the fused step;
samples and beams reading their prompt's slots once; each decode attention launch the tuning can
pick. The tokens are checked against transformers too, so the steps recorded are steps that
decode correctly. And between the steps, the decode loop reads the device once per block of
steps, whatever rules choose the tokens (a beam search once per step)."""

from __future__ import annotations

import pytest
import torch

from tests.graph_safety import differences, record_decode_loop_reads, record_decode_steps

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROMPTS = ["def reverse(items):\n    return", "import os"]  # of different lengths: a left-padded batch
NEW = 5


def _engine(folder, **settings):
    """An fp32 engine on the Triton ops (the interpreter on CPU), the ops whose decode step the
    engine captures, with that step run uncaptured (``use_cuda_graph="eager"``)."""
    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import Engine, load_model
    from codellama_fast.kernels.triton_ops import TritonOps

    eng = Engine(load_model(folder, dtype="float32", device=DEVICE, backend="torch"), CodeLlamaTokenizerFast.from_pretrained())
    eng.model.ops = TritonOps()
    eng.use_cuda_graph = "eager"
    for name, value in settings.items():
        setattr(eng, name, value)
    return eng


def _assert_capturable(steps: dict, least_steps: int) -> None:
    assert steps, "no graph-decode step ran"
    for records in steps.values():
        # each state's first step uncaptured also sets up its logits buffer; a capture (after two
        # warm-up steps) records a later one, which every replay repeats
        assert len(records) >= least_steps, {k: len(v) for k, v in steps.items()}
        for i, record in enumerate(records):
            assert not record.host_reads, (i, record.host_reads)
        assert any(op[0].startswith("triton ") for op in records[1].ops), "no Triton kernel launched"
        for i, record in enumerate(records[2:], start=2):
            assert record.ops == records[1].ops, (i, differences(records[1], record))


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.engine_helpers import fresh_seed, make_hf_model, save

    seed = fresh_seed()
    hf = make_hf_model("gqa4-d16", seed=seed)  # GQA 4, heads of 16 (the kernels' smallest)
    return hf, save(hf, tmp_path_factory.mktemp("graph-safety") / "m"), seed


def _generate_and_check(eng, hf, kind: str):
    """One call of `kind` and its tokens (or beams) checked against transformers."""
    from tests.engine_helpers import hf_beams, hf_logprobs, logprobs_close

    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    if kind == "greedy":
        got = eng.generate(input_ids=ids, max_new_tokens=NEW, stop_at_eos=False)
        t = max(map(len, ids))
        x = torch.tensor([[0] * (t - len(r)) + r for r in ids])
        want = hf.generate(x, attention_mask=(x != 0).long(), max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
        assert got.token_ids == want[:, t:].tolist()
    elif kind == "samples":
        got = eng.generate(input_ids=ids, num_return_sequences=3, max_new_tokens=NEW, temperature=1.0, seed=3,
                           stop_at_eos=False, return_logprobs=True)
        for row, (out, lps) in enumerate(zip(got.token_ids, got.token_logprobs)):
            assert logprobs_close(lps, hf_logprobs(hf, ids[row // 3], out), 1e-4), row
    else:
        want, want_scores = hf_beams(hf, ids, NEW, None, num_beams=3, num_return_sequences=2)
        got = eng.generate(input_ids=ids, max_new_tokens=NEW, stop_at_eos=False, num_beams=3, num_return_sequences=2)
        assert got.token_ids == want
        assert logprobs_close(got.sequence_scores, want_scores, 1e-4)


@pytest.mark.parametrize("kind", ["greedy", "samples", "beams"])
@pytest.mark.parametrize("step", ["plain", "fused"])
def test_every_decode_step_is_the_same_launches_with_no_host_read(hf_model, monkeypatch, step, kind):
    from codellama_fast.kernels import attention_shared_decode

    hf, folder, seed = hf_model
    monkeypatch.setattr(attention_shared_decode, "MIN_SAVED_BYTES", 1)  # samples and beams read their prompt once
    eng = _engine(folder, decode_step=step)
    with record_decode_steps() as steps:
        _generate_and_check(eng, hf, kind)
    _assert_capturable(steps, NEW - 1)
    assert eng.decode_step_used == step, seed
    if kind != "greedy":
        assert [s.runs for s in eng._graphs._states] == [3], seed  # the step reads each run's prompt once


@pytest.mark.parametrize("launch", [("last", 2), ("last", 3), ("kernel", 2), ("kernel", 3)])
def test_each_tuned_decode_attention_launch_is_capturable(hf_model, launch):
    """The launch the tuning picks is the one the step captures; each of them alike."""
    from codellama_fast.kernels.decode_tuning import DecodeLaunches, label

    hf, folder, seed = hf_model
    eng = _engine(folder)
    eng.model.ops.decode_launches = DecodeLaunches(timer=lambda fn: 1.0 if (fn.keywords["merge"], fn.keywords["stages"]) == launch else 2.0)
    with record_decode_steps() as steps:
        _generate_and_check(eng, hf, "greedy")
    _assert_capturable(steps, NEW - 1)
    assert eng.decode_attention_used == label(launch), seed
    kernels = [op for op in next(iter(steps.values()))[1].ops if op[0].startswith("triton ")]
    attention = [op for op in kernels if op[0] == "triton _decode_kernel"]
    layers = eng.model.config.num_hidden_layers
    assert len(attention) == layers, kernels
    assert all(("MERGE_LAST", repr(launch[0] == "last")) in op[3] and ("num_stages", repr(launch[1])) in op[3] for op in attention)
    assert sum(op[0] == "triton _merge_kernel" for op in kernels) == (layers if launch[0] == "kernel" else 0)


@pytest.mark.parametrize("guess", ["prompt_lookup", "assistant"])
def test_the_steps_of_guessing_calls_are_capturable(hf_model, monkeypatch, guess):
    """Prompt lookup's steps without guesses and an assistant's draft steps run on captured decode
    steps too (the draft on its own engine's): each alike, with no host read."""
    from codellama_fast.engine.prompt_lookup import NgramIndex

    hf, folder, seed = hf_model
    eng = _engine(folder)
    ids = eng.tokenizer.encode(PROMPTS[0])
    asked = []
    real = NgramIndex.candidates  # every other step without guesses (a random model's text repeats)
    monkeypatch.setattr(NgramIndex, "candidates", lambda self, *a: asked.append(1) or (real(self, *a) if len(asked) % 2 else []))
    if guess == "prompt_lookup":
        kw = dict(prompt_lookup_num_tokens=3)
    else:  # every guess after a draft's first is its one-token step (sure or not: the threshold is 0)
        kw = dict(assistant_model=_engine(folder), num_assistant_tokens=3, assistant_confidence_threshold=0.0)
    new = 16
    with record_decode_steps() as steps:
        got = eng.generate(input_ids=[ids], max_new_tokens=new, stop_at_eos=False, **kw)
    want = hf.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got.token_ids == want[:, len(ids):].tolist(), seed
    _assert_capturable(steps, 2)


def test_the_recording_sees_a_length_read_on_the_host(hf_model, monkeypatch):
    """A decode attention handed its cache length as a host int (read from the step's device
    buffer, then made a tensor again for the kernel) is caught at every step: the check can fail."""
    from codellama_fast.kernels import triton_ops

    hf, folder, _ = hf_model
    eng = _engine(folder)
    real = triton_ops.rope_attention_decode
    monkeypatch.setattr(triton_ops, "rope_attention_decode",
                        lambda *a, **k: real(*a[:9], int(a[9]), **k))  # kv_len as an int
    with record_decode_steps() as steps:
        eng.generate(PROMPTS, max_new_tokens=NEW, stop_at_eos=False)
    records = next(iter(steps.values()))
    layers = eng.model.config.num_hidden_layers
    for record in records:
        reads = [r for r in record.host_reads if "test_graph_safety.py" in r]
        built = [r for r in record.host_reads if "lift_fresh" in r and "attention_decode.py" in r]
        assert len(reads) == layers and len(built) == layers, record.host_reads


def test_the_recording_sees_a_launch_that_changes_between_steps(hf_model, monkeypatch):
    """A decode attention whose split count follows a count the host keeps (a grid a capture would
    freeze) is caught as steps that differ, with no host read to show for it."""
    from codellama_fast.kernels import attention_decode

    hf, folder, _ = hf_model
    eng = _engine(folder)
    layers = eng.model.config.num_hidden_layers
    calls = []  # one per layer and step: the split count alternates between steps
    monkeypatch.setattr(attention_decode, "num_splits", lambda *a: calls.append(1) or 2 + (len(calls) - 1) // layers % 2)
    with record_decode_steps() as steps:
        eng.generate(PROMPTS, max_new_tokens=NEW, stop_at_eos=False)
    records = next(iter(steps.values()))
    assert len(calls) >= layers * len(records) and all(not r.host_reads for r in records)
    assert any(differences(records[1], r) for r in records[2:]), "a grid the host changed went unseen"


RULES = {
    "greedy": {},
    "sampled": dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=1),
    "filters": dict(temperature=1.0, min_p=0.02, typical_p=0.95, epsilon_cutoff=1e-5, seed=2),
    "rules": dict(no_repeat_ngram_size=2, sequence_bias={(29871,): -1.0}, bad_words_ids=[[13]], suppress_tokens=[0],
                  min_new_tokens=20, exponential_decay_length_penalty=(10, 1.05), forced_eos_token_id=2,
                  stop=["\x00\x00\x00"]),  # a stop string: checked in the text the blocks read
    "logprobs": dict(temperature=0.7, seed=3, return_logprobs=True, top_logprobs=2),
    "samples": dict(num_return_sequences=3, temperature=1.0, seed=4),
}


@pytest.mark.parametrize("rules", list(RULES))
def test_the_decode_loop_reads_the_device_once_per_block(hf_model, monkeypatch, rules):
    """Between its graph steps the decode loop chooses tokens (sampling, filters, penalties,
    log-probabilities) on the device: the host reads the generated ids, the note of non-finite
    logits and the log-probabilities once per block of `check_every` steps, never per token."""
    from codellama_fast.kernels import attention_shared_decode

    hf, folder, seed = hf_model
    monkeypatch.setattr(attention_shared_decode, "MIN_SAVED_BYTES", 1)
    eng = _engine(folder)
    eng.check_every = every = 8
    new = 33  # the first token comes from the prefill; 32 steps make 4 blocks
    with record_decode_loop_reads() as loops:
        got = eng.generate(PROMPTS, max_new_tokens=new, stop_at_eos=False, **RULES[rules])
    assert all(len(row) == new for row in got.token_ids), seed
    assert len(loops) == 1, loops
    sites = {}
    for read in loops[0]:
        sites[read] = sites.get(read, 0) + 1
    blocks = -(-(new - 1) // every)
    assert sites and all(count == blocks for count in sites.values()), (blocks, sites)
    assert len(sites) <= 3, sites  # ids, the non-finite note, log-probabilities


def test_the_recording_sees_a_buffer_from_outside_the_step_that_changes(hf_model, monkeypatch):
    """A launch handed, at each step, another buffer made outside the step (here: the split counters
    of the one-launch decode attention, from a pool made before the call) is caught as steps that
    differ: a capture would keep the first one's address."""
    from codellama_fast.kernels import triton_ops
    from codellama_fast.kernels.attention_decode import new_counters
    from codellama_fast.kernels.decode_tuning import DecodeLaunches

    hf, folder, _ = hf_model
    eng = _engine(folder)  # the launch that merges its splits with the counters
    eng.model.ops.decode_launches = DecodeLaunches(timer=lambda fn: 1.0 if fn.keywords["merge"] == "last" else 2.0)
    pool = [new_counters(256, torch.device(DEVICE)) for _ in range(64)]
    monkeypatch.setattr(triton_ops.TritonOps, "_decode_counters", lambda self, n, device: pool.pop())
    with record_decode_steps() as steps:
        eng.generate(PROMPTS, max_new_tokens=NEW, stop_at_eos=False)
    records = next(iter(steps.values()))
    assert all(not r.host_reads for r in records)
    found = differences(records[1], records[2])
    assert found and "outside" in found[0], found


def test_beam_search_reads_the_device_once_per_step(hf_model, monkeypatch):
    """A beam search on the captured step reads one value per step (whether any beam goes on), and
    its result once at the end: the reads past one per step do not grow with the steps."""
    from codellama_fast.engine import cuda_graph

    hf, folder, seed = hf_model
    eng = _engine(folder)
    reads, replays = {}, {}
    real = cuda_graph.GraphDecoder.replay
    count = [0]
    monkeypatch.setattr(cuda_graph.GraphDecoder, "replay", lambda self: count.__setitem__(0, count[0] + 1) or real(self))
    for new in (6, 12):
        count[0] = 0
        with record_decode_loop_reads() as loops:
            got = eng.generate(PROMPTS, max_new_tokens=new, stop_at_eos=False, num_beams=3)
        assert len(loops) == 1 and all(len(row) == new for row in got.token_ids), seed
        reads[new], replays[new] = loops[0], count[0]
    assert replays[6] == 5 and replays[12] == 11  # one replay per step after the prefill's token
    # each step adds exactly one read, from one line of the beam loop
    extra = [r for r in reads[12] if reads[12].count(r) > reads[6].count(r)]
    assert len(reads[12]) - len(reads[6]) == replays[12] - replays[6], (reads[6], reads[12])
    # (every step but the last, which ends the search without asking)
    assert len(set(extra)) == 1 and reads[12].count(extra[0]) == replays[12] - 1, set(extra)
