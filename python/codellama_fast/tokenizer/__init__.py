"""The Code Llama tokenizer: native core, transformers-compatible class, streaming decoder."""

from .added_token import AddedToken
from .batch_encoding import BatchEncoding
from .fast import FILL_MARKER, CodeLlamaTokenizerFast
from .streaming import StreamDecoder

__all__ = ["AddedToken", "BatchEncoding", "CodeLlamaTokenizerFast", "FILL_MARKER", "StreamDecoder"]
