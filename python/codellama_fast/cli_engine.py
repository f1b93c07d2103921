"""Engine commands of the ``codellama-fast`` CLI: generate, infill, chat, score, convert (argument parsing only).
Generated text goes to stdout; speed and progress go to stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from .data import DEMO_MODEL_DIR

DEFAULT_MAX_NEW_TOKENS = 256


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF model folder, or a name fetched earlier into the local Hugging Face cache "
                   "(codellama/CodeLlama-7b-hf; never downloaded) (default: the bundled demo model)")
    p.add_argument("--revision", default=None, help="with a name from the Hugging Face cache: its branch, tag or commit (default: main)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model folder's, else the bundled Code Llama one)")
    p.add_argument("--dtype", default=None, help="float16 | bfloat16 | float32 | auto (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--adapter", default=None, help="a PEFT LoRA adapter folder (or a name in the local Hugging Face cache), merged into the "
                   "model's weights as they load")


def _engine_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    # Unset sampling options fall back to the model's generation_config.json, else greedy.
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"default: the model's generation_config, else {DEFAULT_MAX_NEW_TOKENS}")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default, unless the model's generation_config samples)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None, help="drop tokens less likely than this fraction of the likeliest (sampling)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 makes repeats less likely (transformers' rule)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N", help="never repeat an N-token sequence")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=None, metavar="K", help="beam search with K beams (beam sample with --temperature > 0; not with --stream)")
    p.add_argument("--prompt-lookup", type=int, default=None, metavar="K",
                   help="guess K tokens per step from the prompt's n-grams (same output; faster when it repeats its context)")
    p.add_argument("--assistant", default=None, metavar="MODEL",
                   help="a smaller model of the same vocabulary (e.g. Code Llama 7B for 34B) that guesses tokens for this one to check (same output)")
    p.add_argument("--assistant-tokens", type=int, default=None, metavar="K", help="most tokens the assistant guesses per step (default 20)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--guidance-scale", type=float, default=None, metavar="S",
                   help="classifier-free guidance: S > 1 pushes away from the negative prompt (or, without one, the prompt's last token)")
    p.add_argument("--negative-prompt", default=None, metavar="TEXT", help="what --guidance-scale steers away from")
    p.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds, keeping what was generated (finish reason 'time')")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")


def _load(args: argparse.Namespace):
    from .engine import Engine

    model = args.model or str(DEMO_MODEL_DIR)
    return Engine.from_pretrained(model, dtype=args.dtype, device=args.device, backend=args.backend, tokenizer=args.tokenizer,
                                  adapter=args.adapter, revision=args.revision)


def _assistant(args: argparse.Namespace) -> Any:
    """The --assistant engine (loaded once per command, on the main model's device and dtype)."""
    if args.assistant is None:
        return None
    if getattr(args, "assistant_engine", None) is None:
        from .engine import Engine

        args.assistant_engine = Engine.from_pretrained(args.assistant, dtype=args.dtype, device=args.device, backend=args.backend)
    return args.assistant_engine


def _given(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The generation options the command line sets, as the engine's keywords, over the model's
    generation_config.json `defaults`; the assistant and the negative prompt, which need a loaded
    model, are the callers'."""
    if args.assistant_tokens is not None and args.assistant is None:
        raise ValueError("--assistant-tokens needs --assistant MODEL")
    given = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                 repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size, num_beams=args.num_beams, seed=args.seed, prompt_lookup_num_tokens=args.prompt_lookup,
                 num_assistant_tokens=args.assistant_tokens, max_time=args.max_time, guidance_scale=args.guidance_scale)
    out: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if "max_new_tokens" not in out and "max_new_tokens" not in defaults:
        out["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
    out["stop"] = tuple(args.stop)
    return out


def _gen_kwargs(args: argparse.Namespace, engine: Any) -> dict[str, Any]:
    out = _given(args, engine.defaults)
    if args.assistant is not None:
        out["assistant_model"] = _assistant(args)
    if args.negative_prompt is not None:
        out["negative_prompt_ids"] = engine.tokenizer.encode(args.negative_prompt)
    return out


def _check_before_loading(args: argparse.Namespace, many: bool = False, streams: bool = False, **extra: Any) -> None:
    """The command's generation options checked as the engine checks them at the call, over the
    model's generation_config.json, before any weight is read: a bad value is an error in a moment
    instead of after a model load (a minute and more for 34B). `many`/`streams`: as the engine
    method the command calls; `extra`: the call's other keywords."""
    from .engine import options
    from .engine.folders import generation_defaults, model_folder

    defaults = generation_defaults(model_folder(args.model or str(DEMO_MODEL_DIR), args.revision))
    kwargs = _given(args, defaults)
    # stand-ins for what needs a loaded model, valid where the real values are: the checks read
    # only whether they are there (an encoded text always has a token, its BOS)
    if args.assistant is not None:
        model_folder(args.assistant)  # there (or in the cache), before the main model loads
        kwargs["assistant_model"] = object()
    if args.negative_prompt is not None:
        kwargs["negative_prompt_ids"] = [[1]]
    options.resolve(defaults, {**kwargs, **extra}, many, streams)


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    from .cli import _stdin_text

    return _stdin_text()


def _report(result) -> None:
    print(f"[{result.summary()}]", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    if args.num_return_sequences is not None and args.num_return_sequences < 1:
        raise ValueError(f"--num-return-sequences must be >= 1, got {args.num_return_sequences}")
    if args.num_return_sequences is not None and args.num_return_sequences > 1 and not args.json:
        raise ValueError("--num-return-sequences above 1 prints several texts: add --json")
    if args.json and args.stream:
        raise ValueError("--json prints the whole result at the end; leave out --stream")
    if args.top_logprobs and not args.json:
        raise ValueError("--top-logprobs goes with --json")
    healing = {"token_healing": True} if args.token_healing else {}
    n = {"num_return_sequences": args.num_return_sequences} if args.json and args.num_return_sequences is not None else {}
    _check_before_loading(args, many=not args.stream, streams=args.stream, **healing, **n)
    engine = _load(args)
    prompt = _prompt(args)
    if args.json:
        kwargs = {**_gen_kwargs(args, engine), **healing, **n}
        result = engine.generate(prompt, top_logprobs=args.top_logprobs, **kwargs)
        out = {"texts": result.texts, "token_ids": result.token_ids, "finish_reasons": result.finish_reasons,
               "prompt_tokens": result.prompt_tokens[0], "time_to_first_token_s": result.time_to_first_token_s,
               "decode_tokens_per_s": result.decode_tokens_per_s}
        if result.sequence_scores is not None:
            out["sequence_scores"] = result.sequence_scores
        if result.top_logprobs is not None:
            piece = engine.tokenizer.convert_ids_to_tokens
            out["token_logprobs"] = result.token_logprobs
            out["top_logprobs"] = [[[{"id": i, "token": piece(i), "logprob": v} for i, v in pairs] for pairs in row]
                                   for row in result.top_logprobs]
        print(json.dumps(out, ensure_ascii=False))
        _report(result)
        return 0
    if args.stream:
        import time

        t0 = time.perf_counter()
        n = 0
        for delta in engine.stream(prompt, **_gen_kwargs(args, engine), **healing):
            sys.stdout.write(delta)
            sys.stdout.flush()
            n += 1
        sys.stdout.write("\n")
        print(f"[streamed {n} deltas in {time.perf_counter() - t0:.2f} s]", file=sys.stderr)
        return 0
    result = engine.generate(prompt, **_gen_kwargs(args, engine), **healing)
    sys.stdout.write(result.text + "\n")
    _report(result)
    return 0


def _write_stream(deltas: Iterator[str]) -> str:
    """Writes text deltas as they come; returns the whole text."""
    parts = []
    for delta in deltas:
        sys.stdout.write(delta)
        sys.stdout.flush()
        parts.append(delta)
    return "".join(parts)


def cmd_infill(args: argparse.Namespace) -> int:
    text = _prompt(args)
    if args.suffix is not None:
        prefix, suffix = text, args.suffix
    else:
        from .tokenizer import FILL_MARKER

        count = text.count(FILL_MARKER)
        if count != 1:
            raise ValueError(f"the text must contain exactly one {FILL_MARKER} (found {count}), or pass --suffix")
        prefix, _, suffix = text.partition(FILL_MARKER)
    _check_before_loading(args, many=not args.stream, streams=args.stream)
    engine = _load(args)
    if args.stream:
        ids = engine.infill_prompt_ids(prefix, suffix, args.suffix_first)
        if args.full:
            sys.stdout.write(prefix)
        _write_stream(engine.stream(ids, **_gen_kwargs(args, engine)))  # an infilling prompt ends at ▁<EOT>
        sys.stdout.write(suffix if args.full else "\n")
        return 0
    res = engine.infill(prefix, suffix, suffix_first=args.suffix_first, **_gen_kwargs(args, engine))
    sys.stdout.write((res.text if args.full else res.middle) + ("\n" if not args.full else ""))
    _report(res.generation)
    return 0


def _answer(engine: Any, messages: list[dict[str, str]], args: argparse.Namespace) -> str:
    """The assistant's reply, printed (as it is generated with --stream); returns it."""
    if not args.stream:
        answer = engine.chat(messages, **_gen_kwargs(args, engine))
        print(answer)
        return answer
    answer = _write_stream(engine.stream_chat(messages, **_gen_kwargs(args, engine)))
    sys.stdout.write("\n")
    return answer


def cmd_chat(args: argparse.Namespace) -> int:
    _check_before_loading(args, streams=args.stream)
    engine = _load(args)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    if args.messages_json:
        try:
            messages = json.loads(Path(args.messages_json).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{args.messages_json} is not valid JSON ({exc}); it holds the dialog as [{{\"role\": ..., \"content\": ...}}, ...]") from None
        _answer(engine, messages, args)
        return 0
    if args.prompt is not None or not sys.stdin.isatty():
        messages.append({"role": "user", "content": _prompt(args)})
        _answer(engine, messages, args)
        return 0
    print("chat: an empty line ends the conversation", file=sys.stderr)
    while True:
        try:
            user = input("you> ")
        except EOFError:
            break
        if not user.strip():
            break
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": _answer(engine, messages, args)})
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """How likely the model finds a text: JSON with its token count, total log-probability and
    perplexity (and each token's log-probability with --tokens)."""
    from .cli import _read_text

    if args.top_logprobs and not args.tokens:
        raise ValueError("--top-logprobs lists alternatives per token: add --tokens")
    text = _read_text(args)
    engine = _load(args)
    result = engine.score(text, top_logprobs=args.top_logprobs)
    ids, logprobs = result.token_ids[0], result.token_logprobs[0]
    out: dict[str, Any] = {"tokens": len(ids), "logprob": result.logprob[0], "perplexity": result.perplexity[0]}
    if args.tokens:
        piece = engine.tokenizer.convert_ids_to_tokens
        pieces = piece(ids)
        out["per_token"] = [{"token": p, "logprob": lp} for p, lp in zip(pieces[1:], logprobs)]
        if result.top_logprobs is not None:
            for entry, pairs in zip(out["per_token"], result.top_logprobs[0]):
                entry["top"] = [{"token": piece(i), "logprob": v} for i, v in pairs]
    print(json.dumps(out, ensure_ascii=False))
    return 0


def _checkpoint_kind(path: Path) -> str:
    """--from when not given: a file is a llama2.c checkpoint, a folder Meta's layout."""
    if path.is_file():
        return "llama2c"
    if path.is_dir():
        return "meta"
    raise FileNotFoundError(f"--input {path} does not exist")


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from .convert import convert_llama2c, convert_meta

    dtype = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32}.get(args.dtype)
    if dtype is None:
        raise ValueError(f"unknown --dtype {args.dtype}; use float16, bfloat16 or float32")
    source = args.source or _checkpoint_kind(Path(args.input))
    if source == "llama2c":
        out = convert_llama2c(args.input, args.tokenizer, args.output, dtype=dtype, rope_theta=args.rope_theta, force=args.force, progress=True)
    else:
        out = convert_meta(args.input, args.output, model_size=args.model_size, dtype=dtype, force=args.force, progress=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from .convert import merge_lora

    out = merge_lora(args.model, args.adapter, args.output, dtype=args.dtype, force=args.force, progress=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def add_engine_commands(sub: Any) -> None:
    g = sub.add_parser("generate", help="continue a prompt with a model")
    g.add_argument("prompt", nargs="?", default=None, help="prompt text (default: stdin; empty = from BOS)")
    _engine_args(g)
    g.add_argument("-n", "--num-return-sequences", type=int, default=None, metavar="N",
                   help="N continuations (samples, or the N best beams); needs --json")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object: texts, token_ids, finish_reasons (and sequence_scores with beams), timings")
    g.add_argument("--top-logprobs", type=int, default=0, metavar="K",
                   help="with --json: each token's log-probability and the K likeliest tokens at its position")
    g.add_argument("--token-healing", action="store_true",
                   help="let the model redo the prompt's last token (a prompt cut mid-word, or ending in a space); "
                        "prints what follows the prompt")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("infill", help="fill the <FILL_ME> in a text (7B/13B Code Llama)")
    i.add_argument("prompt", nargs="?", default=None, help="text with one <FILL_ME> (default: stdin)")
    i.add_argument("--suffix", default=None, help="give the suffix explicitly (the prompt is then the prefix)")
    i.add_argument("--suffix-first", action="store_true", help="SPM prompt order")
    i.add_argument("--full", action="store_true", help="print prefix + middle + suffix instead of the middle only")
    _engine_args(i)
    i.set_defaults(func=cmd_infill)

    c = sub.add_parser("chat", help="talk to a Code Llama Instruct model")
    c.add_argument("prompt", nargs="?", default=None, help="one user message (default: interactive, or stdin)")
    c.add_argument("--system", default=None, help="system message")
    c.add_argument("--messages-json", default=None, help="a JSON file with the whole dialog [{role, content}, ...]")
    _engine_args(c)
    c.set_defaults(func=cmd_chat)

    s = sub.add_parser("score", help="log-probability and perplexity of a text under a model (JSON on stdout)")
    s.add_argument("text", nargs="?", default=None, help="the text (default: --file or stdin)")
    s.add_argument("--file", default=None, help="score a file's text")
    s.add_argument("--tokens", action="store_true", help="also list each token with its log-probability")
    s.add_argument("--top-logprobs", type=int, default=0, metavar="K", help="with --tokens: the K tokens the model expected at each position")
    _model_args(s)
    s.set_defaults(func=cmd_score)

    m = sub.add_parser("merge-lora", help="write a model folder with a PEFT LoRA adapter merged into its weights")
    m.add_argument("--model", required=True, help="the base HF model folder, or a name in the local Hugging Face cache")
    m.add_argument("--adapter", required=True, help="the PEFT LoRA adapter folder")
    m.add_argument("--output", required=True, help="the merged folder to write")
    m.add_argument("--dtype", default="auto", help="float16 | bfloat16 | float32 | auto (the base's, default)")
    m.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    m.set_defaults(func=cmd_merge_lora)

    v = sub.add_parser("convert", help="convert Meta (consolidated.*.pth) or llama2.c checkpoints to an HF folder")
    v.add_argument("--input", required=True, help="Meta checkpoint folder, or a llama2.c .bin file")
    v.add_argument("--output", required=True, help="HF folder to create")
    v.add_argument("--from", dest="source", choices=["meta", "llama2c"], default=None,
                   help="checkpoint kind (default: llama2c for a file, meta for a folder)")
    v.add_argument("--model-size", default=None, help="7B | 13B | 34B (checked against params.json; inferred when omitted)")
    v.add_argument("--dtype", default="float16", help="float16 (default) | bfloat16 | float32")
    v.add_argument("--tokenizer", default=None, help="llama2c: the sentencepiece tokenizer.model to ship with the model")
    v.add_argument("--rope-theta", type=float, default=10000.0, help="llama2c: rotary base (llama2.c uses 10000)")
    v.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    v.set_defaults(func=cmd_convert)
