"""The Code Llama tokenizer: native core, transformers-compatible class, streaming decoder."""

from .batch_encoding import BatchEncoding
from .fast import FILL_MARKER, CodeLlamaTokenizerFast
from .streaming import StreamDecoder

__all__ = ["BatchEncoding", "CodeLlamaTokenizerFast", "FILL_MARKER", "StreamDecoder"]
