//! codellama-fast's tokenizer core: the Code Llama / Llama 2 sentencepiece tokenizer rebuilt on the
//! `tokenizers` crate's byte-fallback BPE, with sentencepiece-exact encoding, Meta's infilling
//! prompts and byte-reassembling decoding. Pure Rust; the Python glue lives in `py.rs` behind the
//! `python` feature so `cargo test` needs no interpreter.

pub mod added;
pub mod chunking;
mod decode;
pub mod error;
mod hub_json;
pub mod infill;
pub mod offsets;
pub mod parallel;
pub mod small_bpe;
pub mod special;
pub mod spm_model;
pub mod tokenizer;

#[cfg(feature = "python")]
mod py;

pub use added::{AddedPiece, NewToken};
pub use error::{Result, TokenizerError};
pub use infill::{split_fill_marker, FILL_MARKER};
pub use special::{MatchFlags, SpecialIds};
pub use spm_model::SpmModel;
pub use tokenizer::{CodeLlamaTokenizer, SpecialTokenMode};
