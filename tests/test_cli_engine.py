"""The engine commands of the CLI on the bundled demo model: stdout holds only generated text,
speed goes to stderr, errors are one clear line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codellama_fast.cli", *args], input=stdin, capture_output=True, text=True, timeout=300)


def _cli_all(*calls: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several independent commands, run at the same time (each spends its first seconds importing
    torch); results in the order given."""
    procs = [subprocess.Popen([sys.executable, "-m", "codellama_fast.cli", *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in calls]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def test_generate_stream_and_plain_agree():
    from codellama_fast.data import DEMO_MODEL_DIR

    base = ("generate", "Lily", "--max-new-tokens", "24")
    plain, stream, lookup, assisted = _cli_all(base, (*base, "--stream"), (*base, "--prompt-lookup", "4"),
                                               (*base, "--assistant", str(DEMO_MODEL_DIR), "--assistant-tokens", "3", "--stream"))
    assert plain.returncode == stream.returncode == 0, plain.stderr + stream.stderr
    assert plain.stdout == stream.stdout and plain.stdout.strip()
    assert "tokens/s" in plain.stderr and "tokens/s" not in plain.stdout
    assert lookup.returncode == 0 and lookup.stdout == plain.stdout, lookup.stderr
    assert assisted.returncode == 0 and assisted.stdout == plain.stdout, assisted.stderr


def test_generate_token_healing_prints_what_follows_the_prompt():
    from codellama_fast import Engine
    from codellama_fast.data import DEMO_MODEL_DIR

    want = Engine.from_pretrained(DEMO_MODEL_DIR).generate("Once upon a ti", max_new_tokens=12, token_healing=True).text
    extras = ((), ("--stream",), ("--json",))
    healed = _cli_all(*(("generate", "Once upon a ti", "--max-new-tokens", "12", "--token-healing", *e) for e in extras))
    for extra, res in zip(extras, healed, strict=True):
        assert res.returncode == 0, res.stderr
        assert (json.loads(res.stdout)["texts"][0] if extra == ("--json",) else res.stdout) == (want if extra == ("--json",) else want + "\n")


def test_generate_from_stdin_and_empty_prompt():
    piped = _cli("generate", "--max-new-tokens", "8", stdin="Tom")
    assert piped.returncode == 0 and piped.stdout.strip()
    empty = _cli("generate", "", "--max-new-tokens", "12")
    assert empty.returncode == 0 and empty.stdout.startswith("Once upon a time")


def test_unset_options_follow_the_models_generation_config(tmp_path):
    """Without --max-new-tokens or sampling options the model's generation_config.json decides, as
    in the Python API; options given on the command line win."""
    import json
    import shutil

    from codellama_fast import Engine
    from codellama_fast.data import DEMO_MODEL_DIR

    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL_DIR, folder)
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 9}))
    engine = Engine.from_pretrained(folder)
    base = ("generate", "Lily", "--model", str(folder))
    res, penalised, banned, beams, min_p = _cli_all(
        base, (*base, "--repetition-penalty", "1.5", "--max-new-tokens", "30"),
        (*base, "--no-repeat-ngram-size", "1", "--max-new-tokens", "30"), (*base, "--num-beams", "3", "--max-new-tokens", "30"),
        (*base, "--temperature", "1", "--min-p", "0.2", "--seed", "4", "--max-new-tokens", "30"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == engine.generate("Lily").text + "\n"
    assert len(engine.generate("Lily").token_ids[0]) == 9
    assert penalised.stdout == engine.generate("Lily", repetition_penalty=1.5, max_new_tokens=30).text + "\n"
    assert banned.stdout == engine.generate("Lily", no_repeat_ngram_size=1, max_new_tokens=30).text + "\n"
    assert banned.stdout != engine.generate("Lily", max_new_tokens=30).text + "\n"  # a 30-token story repeats a token
    assert beams.stdout == engine.generate("Lily", num_beams=3, max_new_tokens=30).text + "\n"
    assert min_p.stdout == engine.generate("Lily", temperature=1.0, min_p=0.2, seed=4, max_new_tokens=30).text + "\n"


def test_engine_errors_are_one_line_with_exit_code_2(tmp_path):
    dialog = tmp_path / "dialog.json"
    dialog.write_text("nope")
    cases = [
        (("infill", "a<FILL_ME>b", "--max-new-tokens", "4"), "no infilling pieces"),
        (("generate", "x", "--model", str(tmp_path / "absent")), "does not exist"),
        (("generate", "x", "--model", str(dialog)), "is a file, not a folder"),
        (("generate", "x", "--top-p", "0"), "top_p"),
        (("generate", "x", "--assistant-tokens", "4"), "--assistant-tokens needs --assistant"),
        (("generate", "x", "--max-time", "0"), "max_time must be"),
        (("generate", "x", "--negative-prompt", "y"), "negative_prompt_ids needs guidance_scale"),
        (("infill", "abc"), "exactly one <FILL_ME>"),
        (("generate", "x", "-n", "0"), "--num-return-sequences must be >= 1, got 0"),
        (("chat", "--messages-json", str(dialog)), f"{dialog} is not valid JSON"),
    ]
    for (args, message), res in zip(cases, _cli_all(*(args for args, _ in cases)), strict=True):
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)


def test_bad_options_are_errors_before_the_weights_are_read(tmp_path):
    """Generation options are checked over the model's generation_config.json before its weights
    load: in a folder whose weights are unreadable, a bad option is the error, and a good one
    reaches the weights. The check needs no torch: a bad option is refused before it is imported."""
    import shutil

    from codellama_fast.data import DEMO_MODEL_DIR

    folder = tmp_path / "broken"
    shutil.copytree(DEMO_MODEL_DIR, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    # the model samples by default, so that several sequences need no --temperature
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.7}))
    m = ("--model", str(folder))
    cases = [
        (("generate", "x", "--top-p", "0", *m), "top_p must be in (0, 1]"),
        (("generate", "x", "--negative-prompt", "y", *m), "negative_prompt_ids needs guidance_scale"),
        (("generate", "x", "--num-beams", "2", "--stream", *m), "does not stream"),
        (("generate", "x", "--json", "-n", "3", "--num-beams", "2", *m), "num_return_sequences (3) must be <= num_beams (2)"),
        (("chat", "hi", "--num-beams", "2", "--stream", *m), "does not stream"),
        (("infill", "a<FILL_ME>b", "--max-time", "0", *m), "max_time must be"),
        (("score", "x", "--top-logprobs", "2", *m), "--top-logprobs lists alternatives per token"),
        (("generate", "x", "--assistant", str(tmp_path / "absent"), *m), "absent does not exist"),
    ]
    # good options (n samples: the model's own do_sample) get as far as the weights
    good = [("generate", "x", "--json", "-n", "3", *m),
            ("generate", "x", "--negative-prompt", "y", "--guidance-scale", "1.5", *m)]
    results = _cli_all(*(args for args, _ in cases), *good)
    for (args, message), res in zip(cases, results[: len(cases)], strict=True):
        assert res.returncode == 2 and message in res.stderr and "model.safetensors" not in res.stderr, (args, res.stderr)
    for args, res in zip(good, results[len(cases):], strict=True):
        assert res.returncode == 2 and "model.safetensors" in res.stderr, (args, res.stderr)
    probe = ("import json, sys\nfrom codellama_fast.cli import main\n"
             "codes = [main(args) for args in json.loads(sys.argv[1])]\n"
             "print(json.dumps({'codes': codes, 'torch imported': 'torch' in sys.modules}))")
    res = subprocess.run([sys.executable, "-c", probe, json.dumps([list(args) for args, _ in cases])], capture_output=True,
                         text=True, timeout=300)
    assert json.loads(res.stdout.splitlines()[-1]) == {"codes": [2] * len(cases), "torch imported": False}, res.stderr


def test_chat_runs_on_a_message():
    res = _cli("chat", "Tell me a story", "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr


def test_device_and_backend_errors_are_one_line():
    import os

    import torch

    absent = f"cuda:{torch.cuda.device_count() + 3}" if torch.cuda.is_available() else "cuda"
    res = _cli("generate", "x", "--device", absent)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert ("does not exist" if torch.cuda.is_available() else "no CUDA GPU") in res.stderr
    if not torch.cuda.is_available():
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        res = subprocess.run([sys.executable, "-m", "codellama_fast.cli", "generate", "x", "--backend", "triton"],
                             capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 2 and "Traceback" not in res.stderr and "runs on CUDA devices" in res.stderr


def test_past_the_trained_length_is_a_one_line_warning():
    res = _cli("generate", "Lily", "--max-new-tokens", "520")  # the demo model was trained on 512 positions
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "max_position_embeddings (512)" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "RuntimeWarning" not in res.stderr


def test_ctrl_c_stops_quietly():
    import select
    import signal

    # SIGINT at its default in the child: a shell's background job (CI) would pass it on ignored,
    # and Python then installs no Ctrl-C handler at all
    proc = subprocess.Popen([sys.executable, "-m", "codellama_fast.cli", "generate", "Lily", "--max-new-tokens", "100000", "--stream"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)  # the first streamed text: generating now
    assert ready, "no output"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err


@pytest.mark.parametrize("command", [["tokenize", "--tokens"], ["generate", "--stream", "--max-new-tokens", "2000"]])
def test_a_reader_that_goes_away_ends_it_quietly(tmp_path, command):
    """``codellama-fast ... | head -c 20``: once the reader closes the pipe, the command stops with
    a SIGPIPE'd tool's status (141) and writes nothing to stderr (no error line, no traceback)."""
    text = "def f(x): return x\n" * 20000  # tokenize's JSON is far larger than a pipe's buffer
    (tmp_path / "big.py").write_text(text)
    args = [*command, "--file", str(tmp_path / "big.py")] if command[0] == "tokenize" else [*command, "Once"]
    proc = subprocess.Popen([sys.executable, "-m", "codellama_fast.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(20)  # the reader takes a little, then leaves
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "rror" not in err and "Traceback" not in err and "Exception ignored" not in err, err


def test_score_prints_the_log_probability_transformers_gives(tmp_path):
    """`score` on the bundled demo model: JSON whose log-probability and perplexity equal those of
    transformers' LlamaForCausalLM on the same folder; --file and --tokens."""
    import json
    import math

    transformers = pytest.importorskip("transformers")
    import torch

    from codellama_fast.data import DEMO_MODEL_DIR
    from codellama_fast.tokenizer import CodeLlamaTokenizerFast

    text = "Once upon a time, there was a little girl named Lily."
    (tmp_path / "story.txt").write_text(text, encoding="utf-8")
    by_arg, by_file = _cli("score", text, "--tokens"), _cli("score", "--file", str(tmp_path / "story.txt"))
    assert by_arg.returncode == by_file.returncode == 0, by_arg.stderr + by_file.stderr
    got, got_file = json.loads(by_arg.stdout), json.loads(by_file.stdout)
    tok = CodeLlamaTokenizerFast.from_pretrained(DEMO_MODEL_DIR)
    ids = tok.encode(text)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(DEMO_MODEL_DIR), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].log_softmax(-1)
    per_token = [ref[k, ids[k + 1]].item() for k in range(len(ids) - 1)]
    assert got["tokens"] == len(ids) and [p["token"] for p in got["per_token"]] == tok.convert_ids_to_tokens(ids)[1:]
    assert max(abs(p["logprob"] - r) for p, r in zip(got["per_token"], per_token)) < 1e-3
    assert got["logprob"] == pytest.approx(sum(per_token), abs=1e-2) and got_file["logprob"] == pytest.approx(got["logprob"])
    assert got["perplexity"] == pytest.approx(math.exp(-sum(per_token) / len(per_token)), rel=1e-3)
    tops = json.loads(_cli("score", text, "--tokens", "--top-logprobs", "3").stdout)
    want = ref[:-1].topk(3).indices.tolist()  # transformers' 3 likeliest at each position
    assert [[e["token"] for e in p["top"]] for p in tops["per_token"]] == [tok.convert_ids_to_tokens(row) for row in want]
    empty = _cli("score", "")
    assert empty.returncode == 2 and "at least two" in empty.stderr and "Traceback" not in empty.stderr


def test_chat_and_infill_stream_print_what_the_plain_commands_print(tmp_path):
    """--stream prints the same text as the plain command: a chat answer (stripped as Engine.chat
    strips it), an infilled middle (ended at ▁<EOT>) and, with --full, the whole filled text."""
    pytest.importorskip("transformers")
    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("mha", seed=2), tmp_path / "codellama-vocab")  # a 32016-piece model: infilling works
    infill = ("infill", "def f(x):\n    <FILL_ME>\n    return y\n", "--model", str(folder), "--max-new-tokens", "12")
    # (plain, streamed) pairs: a chat answer, an infilled middle, a whole filled text
    pairs = [("chat", "Tell me a story", "--max-new-tokens", "24"), infill, (*infill, "--full")]
    results = _cli_all(*(c for pair in pairs for c in (pair, (*pair, "--stream"))))
    for plain, streamed in zip(results[::2], results[1::2], strict=True):
        assert plain.returncode == streamed.returncode == 0, plain.stderr + streamed.stderr
        assert plain.stdout == streamed.stdout and plain.stdout.strip()


def test_generate_json_gives_the_python_result():
    from codellama_fast import Engine
    from codellama_fast.data import DEMO_MODEL_DIR

    engine = Engine.from_pretrained(DEMO_MODEL_DIR)
    j = ("generate", "Lily", "--json")
    res, beam_sample, sampled, tops, guided, rushed = _cli_all(
        (*j, "-n", "2", "--num-beams", "3", "--max-new-tokens", "12"),
        (*j, "-n", "2", "--num-beams", "3", "--temperature", "1.3", "--seed", "5", "--max-new-tokens", "12"),
        (*j, "-n", "3", "--temperature", "1", "--seed", "2", "--max-new-tokens", "9"),
        (*j, "--top-logprobs", "3", "--max-new-tokens", "6"),
        (*j, "--guidance-scale", "3", "--negative-prompt", "Tom was sad", "--max-new-tokens", "12"),
        (*j, "--max-time", "1e-6", "--max-new-tokens", "12"))
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    want = engine.generate("Lily", num_beams=3, num_return_sequences=2, max_new_tokens=12)
    assert (got["texts"], got["token_ids"], got["finish_reasons"]) == (want.texts, want.token_ids, want.finish_reasons)
    assert got["sequence_scores"] == pytest.approx(want.sequence_scores, rel=1e-5)
    assert json.loads(beam_sample.stdout)["token_ids"] == engine.generate(
        "Lily", num_beams=3, num_return_sequences=2, temperature=1.3, seed=5, max_new_tokens=12).token_ids
    assert json.loads(sampled.stdout)["texts"] == engine.generate(
        "Lily", num_return_sequences=3, temperature=1.0, seed=2, max_new_tokens=9).texts
    tops = json.loads(tops.stdout)
    ref = engine.generate("Lily", top_logprobs=3, max_new_tokens=6)
    assert [[[e["id"] for e in pairs] for pairs in row] for row in tops["top_logprobs"]] == \
        [[[i for i, _ in pairs] for pairs in row] for row in ref.top_logprobs]
    assert tops["top_logprobs"][0][0][0]["token"] == engine.tokenizer.convert_ids_to_tokens(ref.top_logprobs[0][0][0][0])
    assert tops["token_logprobs"][0] == pytest.approx(ref.token_logprobs[0], rel=1e-5)
    want = engine.generate("Lily", guidance_scale=3.0, negative_prompt_ids=engine.tokenizer.encode("Tom was sad"),
                           max_new_tokens=12)
    assert json.loads(guided.stdout)["token_ids"] == want.token_ids != engine.generate("Lily", max_new_tokens=12).token_ids
    rushed = json.loads(rushed.stdout)
    assert rushed["finish_reasons"] == ["time"] and len(rushed["token_ids"][0]) == 1
    lonely = _cli("generate", "Lily", "-n", "2")
    assert lonely.returncode == 2 and "add --json" in lonely.stderr
