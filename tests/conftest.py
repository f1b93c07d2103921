"""Test set-up: the Triton interpreter on machines without a GPU (set before any kernel is defined),
paths to the shared tokenizer/model files, and the reference tokenizers."""

from __future__ import annotations

import os
import random
from pathlib import Path

# Must precede any `import triton` so @triton.jit kernels run in the interpreter on CPU.
try:
    import torch as _torch

    _HAS_CUDA = _torch.cuda.is_available()
except ImportError:  # the tokenizer tests run without torch
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The shared data beside the checkout (CODELLAMA_FAST_SHARED points elsewhere, e.g. on a GPU box).
SHARED = Path(os.environ.get("CODELLAMA_FAST_SHARED", ROOT.parent / "shared"))
CODELLAMA_DIR = SHARED / "tokenizers" / "codellama"
LLAMA2_MODEL = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
STORIES_DIR = SHARED / "models" / "stories260K"
# A chat template other than Code Llama Instruct's (ChatML), as a fine-tune may carry
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def pytest_configure(config: pytest.Config) -> None:
    if not CODELLAMA_DIR.is_dir():
        raise pytest.UsageError(f"the shared data folder {SHARED} is missing; tests need it beside the checkout")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sp_codellama():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(CODELLAMA_DIR / "tokenizer.model"))


@pytest.fixture(scope="session")
def sp_llama2():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))


@pytest.fixture(scope="session")
def tok():
    from codellama_fast import CodeLlamaTokenizerFast

    return CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR)


@pytest.fixture(scope="session")
def tok_from_model():
    from codellama_fast import CodeLlamaTokenizerFast

    return CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR, use_json=False)


@pytest.fixture(scope="session")
def tok_llama2():
    from codellama_fast import CodeLlamaTokenizerFast

    return CodeLlamaTokenizerFast.from_pretrained(LLAMA2_MODEL)


@pytest.fixture(scope="session")
def stdlib_corpus():
    from codellama_fast.corpus import python_stdlib

    files = python_stdlib()
    assert len(files) > 500, "the standard library corpus looks incomplete"
    return files


@pytest.fixture
def rng() -> random.Random:
    """Fresh randomness every run; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("TEST_SEED", random.SystemRandom().randrange(2**32)))
    print(f"TEST_SEED={seed}")
    return random.Random(seed)
