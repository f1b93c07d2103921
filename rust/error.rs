//! One error type for the whole core. The Python glue maps each variant to a typed exception,
//! so every message here names the file or value involved and, where there is one, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read at all (missing, permissions, a directory...).
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file was read but its content is not a usable tokenizer.
    #[error("{path} is not a valid {kind}: {reason}")]
    InvalidFile {
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },

    /// A token id outside `0..vocab_size` was passed to decode or a lookup.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} pieces (valid ids are 0 to {last})", last = .vocab_size.saturating_sub(1))]
    IdOutOfRange { id: i64, vocab_size: usize },

    /// Input the caller gave is not acceptable (message says why and what to do).
    #[error("{0}")]
    InvalidInput(String),

    /// The tokenizer has no infilling pieces (Llama 2 / 34B / Python vocabularies).
    #[error("this tokenizer's vocabulary has no infilling pieces (▁<PRE>, ▁<SUF>, ▁<MID>, ▁<EOT>); infilling needs a 7B/13B Code Llama tokenizer with 32016 pieces")]
    NoInfilling,
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

impl TokenizerError {
    pub(crate) fn invalid(path: &std::path::Path, kind: &'static str, reason: impl Into<String>) -> Self {
        TokenizerError::InvalidFile { path: path.to_path_buf(), kind, reason: reason.into() }
    }
}
