"""Code Llama Instruct prompts, exactly as Meta's ``chat_completion`` builds them: each finished
(user, assistant) exchange is ``[bos] + encode("[INST] {user} [/INST] {answer} ") + [eos]``, and the
last user turn ``[bos] + encode("[INST] {user} [/INST]")``; a system message is folded into the
first user turn between ``<<SYS>>`` markers. Text is encoded as plain text (special-token strings in
a message stay text).

The same conversation as text (``chat_prompt_text``) is what the Llama 2 chat template of the
Instruct models' ``tokenizer_config.json`` renders: ``<s>[INST] {user} [/INST] {answer} </s>``..."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..errors import TokenizerError

if TYPE_CHECKING:
    from .fast import CodeLlamaTokenizerFast

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def _turns(messages: Sequence[Mapping[str, str]], final: str) -> list[dict[str, str]]:
    """The dialog checked and with the system message folded into the first user turn.
    ``final``: who must speak last ("user", "assistant" or "any")."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("a chat is a non-empty list of {'role': ..., 'content': ...} messages")
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {k} must be a mapping with str 'role' and 'content'")
    dialog = [{"role": m["role"], "content": m["content"]} for m in messages]
    if dialog[0]["role"] == "system":
        if len(dialog) < 2:
            raise ValueError("a system message must be followed by a user message")
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    for k, m in enumerate(dialog):
        want = "user" if k % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ValueError(f"roles must alternate user/assistant (after an optional system message); message {k} is {m['role']!r}, expected {want!r}")
    if final != "any" and dialog[-1]["role"] != final:
        raise ValueError(f"the last message must be from the {final}")
    return dialog


def chat_prompt_ids(
    tokenizer: CodeLlamaTokenizerFast, messages: Sequence[Mapping[str, str]], final: str = "user", open_end: bool = False
) -> list[int]:
    """Meta's ids for a dialog. The last message is the user's (a prompt to answer), or with
    ``final="any"`` may be the assistant's (a finished exchange, ending in EOS); ``open_end``
    leaves the last message open (as written, without what closes it: the space and EOS after an
    answer, ``[/INST]`` after a user message) for the model to continue."""
    return [i for ids, _ in _chat_segments(tokenizer, messages, final, open_end) for i in ids]


def chat_assistant_mask(tokenizer: CodeLlamaTokenizerFast, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """(ids, mask) of a dialog in Meta's format: 1 for the tokens of each assistant answer and the
    EOS that closes it, 0 for the rest."""
    segments = _chat_segments(tokenizer, messages, "any", False)
    return [i for ids, _ in segments for i in ids], [int(answer) for ids, answer in segments for _ in ids]


def _chat_segments(
    tokenizer: CodeLlamaTokenizerFast, messages: Sequence[Mapping[str, str]], final: str, open_end: bool
) -> list[tuple[list[int], bool]]:
    """Meta's ids in pieces, each marked True where an assistant answer wrote it. Each exchange is
    encoded as one text, as Meta does; the answer's tokens are those that start at or after the
    space before it."""
    dialog = _turns(messages, final)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert bos is not None and eos is not None
    native, plain = tokenizer._native, tokenizer._mode(True)

    out: list[tuple[list[int], bool]] = []
    for k, (prompt, answer) in enumerate(zip(dialog[::2], dialog[1::2])):
        asked = f"{B_INST} {prompt['content'].strip()} {E_INST}"
        if open_end and 2 * k + 2 == len(dialog):
            # the answer to continue keeps its trailing whitespace, as transformers' continue_final_message does
            text, closing = f"{asked} {answer['content'].lstrip()}", []
        else:
            text, closing = f"{asked} {answer['content'].strip()} ", [eos]
        ids, offsets = tokenizer._call_native(native.encode_with_offsets, text, plain, False)
        n = next((j for j, (start, _) in enumerate(offsets) if start >= len(asked)), len(ids))
        out += [([bos] + ids[:n], False), (ids[n:] + closing, True)]
    if len(dialog) % 2:
        asking = dialog[-1]["content"]
        # an open user message ends where its text does (trailing whitespace kept), before [/INST]
        text = f"{B_INST} {asking.lstrip()}" if open_end else f"{B_INST} {asking.strip()} {E_INST}"
        out.append(([bos] + tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True), False))
    return out


def chat_prompt_text(tokenizer: CodeLlamaTokenizerFast, messages: Sequence[Mapping[str, str]], open_end: bool = False) -> str:
    """The dialog as the Llama 2 chat template writes it (any last speaker)."""
    return _llama2_text(messages, tokenizer.bos_token or "", tokenizer.eos_token or "", open_end)


def _llama2_text(messages: Sequence[Mapping[str, str]], bos: str, eos: str, open_end: bool = False) -> str:
    dialog = _turns(messages, "any")
    parts = []
    for k, m in enumerate(dialog):
        if m["role"] == "user":
            last = open_end and k == len(dialog) - 1
            parts.append(f"{bos}{B_INST} {m['content'].lstrip()}" if last else f"{bos}{B_INST} {m['content'].strip()} {E_INST}")
        elif open_end and k == len(dialog) - 1:
            parts.append(f" {m['content'].lstrip()}")
        else:
            parts.append(f" {m['content'].strip()} {eos}")
    return "".join(parts)


_PROBES = (
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}],
    [{"role": "user", "content": "U"}],
)


@lru_cache(maxsize=16)
def _writes_llama2(template: str, bos: str, eos: str) -> bool:
    """Whether `template` writes Code Llama Instruct's format (the probe dialogs render as Meta's
    text). Without jinja2, a template with [INST] markers is taken for it."""
    from . import chat_jinja

    variables = {"bos_token": bos, "eos_token": eos}
    try:
        return all(chat_jinja.render(template, probe, variables, False, False) == _llama2_text(probe, bos, eos) for probe in _PROBES)
    except chat_jinja.ChatTemplateError:
        return False
    except TokenizerError:  # no jinja2
        return "[INST]" in template and "[/INST]" in template


def _templates(value: Any) -> str | dict[str, str] | None:
    """A config's chat template: a str, a dict by name, or transformers' older list of
    ``{"name", "template"}`` entries (read as a dict); None otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    if isinstance(value, list) and value and all(isinstance(e, Mapping) and isinstance(e.get("name"), str) and isinstance(e.get("template"), str) for e in value):
        return {e["name"]: e["template"] for e in value}
    return None


class ChatMixin:
    """``apply_chat_template`` for `CodeLlamaTokenizerFast`: Code Llama Instruct's format built in
    (Meta's ids), any other ``chat_template`` rendered with Jinja as transformers renders it."""

    @property
    def chat_template(self) -> str | dict[str, str] | None:
        """The folder's chat template (``chat_template.jinja``, else the ``chat_template`` of
        ``tokenizer_config.json``): the Instruct models carry the Llama 2 template, a fine-tune may
        carry its own, or several by name (a dict, as transformers gives them). Settable."""
        return _templates(self._config.get("chat_template"))  # type: ignore[attr-defined]

    @chat_template.setter
    def chat_template(self, value: str | dict[str, str] | None) -> None:
        if value is not None and not isinstance(value, str) and _templates(value) is None:
            raise TypeError("a chat template is a str (Jinja), a dict of them by name, or None")
        self._config["chat_template"] = value  # type: ignore[attr-defined]

    def get_chat_template(self, chat_template: str | None = None) -> str | None:
        """The template to render: ``chat_template`` itself, or the name of one of the folder's
        templates; else the folder's ("default" of several). None: Code Llama Instruct's format."""
        templates = self.chat_template
        if isinstance(templates, dict):
            if chat_template is not None:
                return templates.get(chat_template, chat_template)
            if "default" not in templates:
                raise TokenizerError(f"this tokenizer has several chat templates and none named 'default'; "
                                     f"pass chat_template= one of {sorted(templates)}")
            return templates["default"]
        return chat_template if chat_template is not None else templates

    def _custom_template(self, chat_template: str | None) -> str | None:
        """The Jinja template to render, or None for Code Llama Instruct's format (no template, or
        one that writes that format)."""
        template = self.get_chat_template(chat_template)
        if template is None:
            return None
        bos, eos = self.bos_token or "", self.eos_token or ""  # type: ignore[attr-defined]
        return None if _writes_llama2(template, bos, eos) else template

    def _template_variables(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.special_tokens_map, **extra}  # type: ignore[attr-defined]

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The ids that prompt the model to answer a dialog ending with the user's message: Meta's
        ``chat_completion`` ids, or the tokenizer's own chat template with the generation prompt."""
        template = self._custom_template(None)
        if template is None:
            return chat_prompt_ids(self, messages)  # type: ignore[arg-type]
        from . import chat_jinja

        text = chat_jinja.render(template, messages, self._template_variables({}), True, False)
        return self.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, str]] | Sequence[Sequence[Mapping[str, str]]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = False,
        return_assistant_tokens_mask: bool = False,
        **template_kwargs: Any,
    ):
        """A conversation (or a list of them) as a chat prompt, as transformers writes it.

        With no ``chat_template`` (the base models) or one that writes Code Llama Instruct's format
        (the Instruct models'): the text that template renders with ``tokenize=False``, else Meta's
        ids (``chat_completion``), where special-token strings inside a message stay text. The last
        message may be the user's (a prompt) or the assistant's (a finished exchange, ending in EOS);
        ``continue_final_message=True`` leaves either open for the model to continue. Any other
        template (the config's or ``chat_template=``) is rendered with Jinja, as transformers does,
        with ``template_kwargs`` as extra variables, and its text tokenized.

        Returns ids (a list, or a tensor with ``return_tensors``), a `BatchEncoding` with
        ``return_dict=True``, or the text. ``return_assistant_tokens_mask=True`` (with
        ``return_dict``) adds ``assistant_masks``: 1 for the tokens the assistant wrote. In Code
        Llama Instruct's format those are each answer and the EOS closing it; a Jinja template
        marks them with ``{% generation %}`` blocks, as in transformers.

        >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
        '<s>[INST] Hi [/INST]'
        """
        if continue_final_message and add_generation_prompt:
            raise TokenizerError("continue_final_message and add_generation_prompt cannot both be set")
        if return_dict and not tokenize:
            raise TokenizerError("return_dict=True needs tokenize=True: the text has no ids or mask to return in a dict")
        batched = isinstance(conversation, Sequence) and bool(conversation) and not isinstance(conversation[0], Mapping)
        conversations = list(conversation) if batched else [conversation]
        mask_wanted = bool(return_assistant_tokens_mask) and tokenize
        if mask_wanted and not return_dict:
            raise TokenizerError("return_assistant_tokens_mask=True needs return_dict=True (the mask is returned beside the ids)")
        if mask_wanted and continue_final_message:
            raise TokenizerError("return_assistant_tokens_mask cannot be combined with continue_final_message (the last answer is unfinished)")
        masks: list[list[int]] | None = None
        template = self._custom_template(chat_template)
        if template is None:
            if template_kwargs:
                raise TypeError(f"Code Llama Instruct's chat format takes no template arguments: {', '.join(sorted(template_kwargs))}")
            # add_generation_prompt adds nothing: a user turn already ends with [/INST], the assistant's cue
            if not tokenize:
                texts = [chat_prompt_text(self, chat, open_end=continue_final_message) for chat in conversations]  # type: ignore[arg-type]
                return texts if batched else texts[0]
            if mask_wanted:
                pairs = [chat_assistant_mask(self, chat) for chat in conversations]  # type: ignore[arg-type]
                encoded, masks = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                encoded = [chat_prompt_ids(self, chat, final="any", open_end=continue_final_message) for chat in conversations]  # type: ignore[arg-type]
        else:
            from . import chat_jinja

            variables = self._template_variables(template_kwargs)
            if mask_wanted:
                encoded, masks = self._rendered_with_mask(template, conversations, variables, add_generation_prompt)
            else:
                texts = [chat_jinja.render(template, chat, variables, add_generation_prompt, continue_final_message) for chat in conversations]  # type: ignore[arg-type]
                if not tokenize:
                    return texts if batched else texts[0]
                encoded = [self.encode(text, add_special_tokens=False) for text in texts]  # type: ignore[attr-defined]
        limit = self._truncation_limit(truncation, max_length, padding, True)  # type: ignore[attr-defined]
        if limit is not None:
            encoded = [self._truncate(ids, limit, False, False) for ids in encoded]  # type: ignore[attr-defined]
            masks = None if masks is None else [self._truncate(m, limit, False, False) for m in masks]  # type: ignore[attr-defined]
        side = self.padding_side  # type: ignore[attr-defined]
        out = self._finish(encoded, batched, padding, max_length, side, None, return_tensors, None, False, False,  # type: ignore[attr-defined]
                           extra=None if masks is None else {"assistant_masks": masks})
        return out if return_dict else out["input_ids"]

    def _rendered_with_mask(self, template: str, conversations: list[Any], variables: dict[str, Any],
                            add_generation_prompt: bool) -> tuple[list[list[int]], list[list[int]]]:
        """Ids of each rendered conversation and the mask of the tokens its ``{% generation %}``
        blocks wrote (transformers' rule: from the token holding a block's first character to the
        one holding its last)."""
        from . import chat_jinja

        if not chat_jinja.has_generation_blocks(template):
            warnings.warn("the chat template has no {% generation %} blocks, so assistant_masks is all 0", UserWarning, stacklevel=3)
        rendered = [chat_jinja.render_with_generation_spans(template, chat, variables, add_generation_prompt) for chat in conversations]
        enc = self([text for text, _ in rendered], add_special_tokens=False)  # type: ignore[operator]
        encoded, masks = enc["input_ids"], []
        for row, (_, spans) in enumerate(rendered):
            mask = [0] * len(encoded[row])
            for start, end in spans:
                if end <= start:
                    continue
                first, last = enc.char_to_token(row, start), enc.char_to_token(row, end - 1)
                if first is None:
                    continue
                for t in range(first, len(mask) if last is None else last + 1):
                    mask[t] = 1
            masks.append(mask)
        return encoded, masks
