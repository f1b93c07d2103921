"""Rendering a ``chat_template`` (Jinja) as transformers renders it, for fine-tunes whose template is
not Code Llama Instruct's: a sandboxed environment with ``trim_blocks``/``lstrip_blocks``, loop
controls, ``raise_exception``, ``strftime_now`` and a ``tojson`` that does not escape HTML.
jinja2 is needed only here."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..errors import TokenizerError

# Marks the end of the final message so the text can be cut there (continue_final_message).
_OPEN_END_TAG = "CODELLAMA_FAST_OPEN_END "


class ChatTemplateError(TokenizerError):
    """A chat template refused the conversation (its ``raise_exception``) or could not be rendered."""


def _generation_extension(jinja2: Any) -> Any:
    """transformers' ``{% generation %}...{% endgeneration %}`` block: renders its body and, while
    a render is tracked, records where that text lies in the output (the assistant's tokens)."""
    from jinja2.ext import Extension

    class GenerationBlocks(Extension):
        tags = {"generation"}

        def __init__(self, environment: Any) -> None:
            super().__init__(environment)
            self._local = threading.local()  # a render tracked in one thread records nothing of another's

        @property
        def tracked(self) -> tuple[list[str], list[tuple[int, int]]] | None:
            return getattr(self._local, "tracked", None)

        @tracked.setter
        def tracked(self, value: tuple[list[str], list[tuple[int, int]]] | None) -> None:
            self._local.tracked = value

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_block"), [], [], body).set_lineno(lineno)

        def _block(self, caller: Any) -> str:
            text = caller()
            if self.tracked is not None:
                blocks, spans = self.tracked
                start = sum(map(len, blocks))
                spans.append((start, start + len(text)))
            return text

    return GenerationBlocks


@lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TokenizerError("rendering this chat template needs jinja2: pip install 'codellama-fast[templates]' (or jinja2)") from None

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"the chat template refused the conversation: {message}")

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _generation_extension(jinja2)])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not parse: {exc}") from None


def has_generation_blocks(template: str) -> bool:
    """Whether the template marks the assistant's text with ``{% generation %}`` blocks."""
    return re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def render_with_generation_spans(template: str, messages: Sequence[Mapping[str, Any]], variables: Mapping[str, Any],
                                 add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
    """The text and the character spans ``[start, end)`` its ``{% generation %}`` blocks wrote."""
    compiled = _compiled(template)
    tracker = next(e for e in compiled.environment.extensions.values() if hasattr(e, "tracked"))
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    tracker.tracked = (blocks, spans)

    def run() -> None:
        # block by block: a generation block's start is the length written before it
        for block in compiled.generate(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **variables):
            blocks.append(block)

    try:
        _guarded(run)
    finally:
        tracker.tracked = None
    return "".join(blocks), spans


def _guarded(run: Any) -> Any:
    """`run()` with any template runtime error as one ChatTemplateError."""
    try:
        return run()
    except ChatTemplateError:
        raise
    except Exception as exc:  # noqa: BLE001  (any template runtime error: one typed error, with its message)
        raise ChatTemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from None


def render(template: str, messages: Sequence[Mapping[str, Any]], variables: Mapping[str, Any],
           add_generation_prompt: bool, open_end: bool) -> str:
    """The conversation as the template writes it. `variables`: the special tokens (bos_token...)
    and the caller's extra template arguments. `open_end`: cut after the final message's text."""
    chat = [dict(m) for m in messages]
    if open_end:
        chat[-1]["content"] = chat[-1]["content"] + _OPEN_END_TAG
    compiled = _compiled(template)
    text = _guarded(lambda: compiled.render(messages=chat, add_generation_prompt=add_generation_prompt, **variables))
    if not open_end:
        return text
    tag = _OPEN_END_TAG.strip()
    if tag not in text:
        raise ChatTemplateError("continue_final_message: the template does not keep the final message's text")
    at = text.rindex(tag)
    return text[:at] if text[at : at + len(_OPEN_END_TAG)] == _OPEN_END_TAG else text[:at].rstrip()
