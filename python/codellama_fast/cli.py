"""``codellama-fast`` command line: argument parsing only; the work is done by the packages."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from .errors import EngineError, TokenizerError


def _tokenizer(path: str | None, **kwargs: Any):
    from .tokenizer import CodeLlamaTokenizerFast

    return CodeLlamaTokenizerFast.from_pretrained(path, **kwargs)


def _utf8(data: bytes, source: str) -> str:
    """Bytes read as they are (line endings kept: CR LF is two characters of text) and decoded as
    UTF-8; other bytes are an error naming the first bad one."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None


def _stdin_text() -> str:
    """Standard input as UTF-8 text (Python's own text reading would turn other bytes into
    surrogates that no tokenizer takes, and CR LF into LF)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream put in its place (tests, embedding programs)
        return sys.stdin.read()
    return _utf8(buffer.read(), "standard input")


def _read_text(args: argparse.Namespace) -> str:
    if getattr(args, "file", None):
        return _utf8(Path(args.file).read_bytes(), args.file)
    if args.text is not None:
        return args.text
    if sys.stdin.isatty():
        raise SystemExit("error: give TEXT, --file FILE, or text on standard input")
    return _stdin_text()


def cmd_tokenize(args: argparse.Namespace) -> int:
    tok = _tokenizer(args.tokenizer, split_special_tokens=args.plain, **({"fill_token": None} if args.plain else {}))
    text = _read_text(args)
    ids = tok.encode(text, add_special_tokens=not args.no_special)
    out: dict[str, Any] = {"ids": ids, "count": len(ids)}
    if args.tokens:
        out["tokens"] = tok.convert_ids_to_tokens(ids)
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _ids_from_json(raw: str) -> list[int]:
    """A JSON list of ids, or tokenize's {"ids": [...]} object."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"standard input is not JSON ({exc}); give a list of ids such as [1, 822, 285]") from None
    if isinstance(data, dict):
        data = data.get("ids")
    if not isinstance(data, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in data):
        raise ValueError('decode reads a JSON list of int ids, or tokenize\'s {"ids": [...]} object')
    return data


def cmd_decode(args: argparse.Namespace) -> int:
    tok = _tokenizer(args.tokenizer)
    ids = args.ids or _ids_from_json(_stdin_text())
    sys.stdout.write(tok.decode(ids, skip_special_tokens=args.skip_special_tokens))
    sys.stdout.write("\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the bundled defaults: tokenize a sample file, then generate with the demo model."""
    tok = _tokenizer(None, fill_token=None, split_special_tokens=True)  # a source file is plain text
    sample = Path(args.file) if args.file else Path(__file__).with_name("engine") / "model.py"
    text = sample.read_text(encoding="utf-8")
    start = time.perf_counter()
    ids = tok.encode(text)
    first = time.perf_counter() - start
    rounds, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.5:
        tok.encode(text)
        rounds += 1
    elapsed = (time.perf_counter() - start) / rounds
    mb = len(text.encode("utf-8")) / 1e6
    print(f"tokenizer: bundled Code Llama ({tok.vocab_size} pieces)")
    print(f"sample: {sample} ({len(text.encode('utf-8'))} bytes) -> {len(ids)} ids")
    print(f"first ids: {ids[:24]}")
    print(f"round trip exact: {tok.decode(ids, skip_special_tokens=True) == text.replace(chr(0x2581), ' ')}")
    print(f"encode speed: {mb / elapsed:.1f} MB/s ({elapsed * 1e3:.2f} ms per encode, first call {first * 1e3:.2f} ms)")
    try:
        from .demo import run_generation_demo
    except ImportError:
        return 0
    return run_generation_demo(max_new_tokens=args.max_new_tokens)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codellama-fast", description="Fast Code Llama tokenizer and inference engine.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"codellama-fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tokenize", help="text or file -> ids (JSON on stdout)")
    t.add_argument("text", nargs="?", help="text to tokenize (default: --file or stdin)")
    t.add_argument("--file", help="read the text from this file")
    t.add_argument("--tokenizer", help="tokenizer folder or file (default: bundled Code Llama)")
    t.add_argument("--tokens", action="store_true", help="also print the pieces")
    t.add_argument("--no-special", action="store_true", help="no BOS/EOS")
    t.add_argument("--plain", action="store_true", help="treat special-token strings and <FILL_ME> in the text as plain text")
    t.set_defaults(func=cmd_tokenize)

    d = sub.add_parser("decode", help="ids -> text")
    d.add_argument("ids", nargs="*", type=int, help="token ids (default: a JSON list or {'ids': [...]} on stdin)")
    d.add_argument("--tokenizer", help="tokenizer folder or file (default: bundled Code Llama)")
    d.add_argument("--skip-special-tokens", action="store_true")
    d.set_defaults(func=cmd_decode)

    m = sub.add_parser("demo", help="the main job on the bundled defaults (tokenizer speed, demo generation)")
    m.add_argument("--file", help="sample file to tokenize (default: a source file of this package)")
    m.add_argument("--max-new-tokens", type=int, default=200)
    m.set_defaults(func=cmd_demo)

    try:
        from .cli_engine import add_engine_commands
    except ImportError:
        pass
    else:
        add_engine_commands(sub)
    return p


def _print_warning(message: Warning | str, category: type[Warning], *_args: object, **_kwargs: object) -> None:
    # A command-line user needs the message, not the library line that raised it.
    print(f"warning: {message}", file=sys.stderr)


def _reader_gone() -> int:
    """stdout's reader closed the pipe (``| head``): stop quietly, as a Unix tool that SIGPIPE ends
    does (status 128 + 13). stdout now points at /dev/null, so the flush at exit has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (embedded, captured)
        pass
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning
        try:
            return int(args.func(args) or 0)
        except BrokenPipeError:  # (an OSError: before the handler below)
            return _reader_gone()
        except (TokenizerError, EngineError, OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C: stop quietly with the shell's code for SIGINT
            print(file=sys.stderr)
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
