"""Files bundled inside the wheel: the Code Llama tokenizer and the demo model."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
CODELLAMA_TOKENIZER_DIR = DATA_DIR / "codellama"
DEMO_MODEL_DIR = DATA_DIR / "stories260K"
# Pieces in the bundled tokenizer: a model with this vocabulary and no tokenizer files uses it.
BUNDLED_VOCAB_SIZE = 32016

# Names that mean "the bundled Code Llama tokenizer" in from_pretrained().
BUNDLED_TOKENIZER_NAMES = frozenset(
    {
        "codellama",
        "codellama/CodeLlama-7b-hf",
        "codellama/CodeLlama-13b-hf",
        "codellama/CodeLlama-7b-Instruct-hf",
        "codellama/CodeLlama-13b-Instruct-hf",
    }
)
