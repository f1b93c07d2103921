"""Code Llama Instruct prompts, exactly as Meta's ``chat_completion`` builds them: each finished
(user, assistant) exchange is ``[bos] + encode("[INST] {user} [/INST] {answer} ") + [eos]``, and the
last user turn ``[bos] + encode("[INST] {user} [/INST]")``; a system message is folded into the
first user turn between ``<<SYS>>`` markers. Text is encoded as plain text (special-token strings in
a message stay text)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from ..tokenizer import CodeLlamaTokenizerFast

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def chat_prompt_ids(tokenizer: "CodeLlamaTokenizerFast", messages: Sequence[Mapping[str, str]]) -> list[int]:
    if not messages:
        raise ValueError("a chat needs at least one user message")
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {k} must be a mapping with str 'role' and 'content'")
    dialog = [dict(m) for m in messages]
    if dialog[0]["role"] == "system":
        if len(dialog) < 2:
            raise ValueError("a system message must be followed by a user message")
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    for k, m in enumerate(dialog):
        want = "user" if k % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ValueError(f"roles must alternate user/assistant (after an optional system message); message {k} is {m['role']!r}, expected {want!r}")
    if dialog[-1]["role"] != "user":
        raise ValueError("the last message must be from the user")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert bos is not None and eos is not None

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    ids: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += [bos] + enc(f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ") + [eos]
    ids += [bos] + enc(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")
    return ids
