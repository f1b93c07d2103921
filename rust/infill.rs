//! Meta's infilling prompt (`llama/generation.py: infilling_prompt_tokens`).
//!
//! PSM: `[bos, ▁<PRE>] + enc(prefix) + [▁<SUF>] + enc_noprefix(suffix) + [▁<MID>]`
//! SPM: `[bos, ▁<PRE>, ▁<SUF>] + enc_noprefix(suffix) + [▁<MID>] + enc(prefix)`
//! where `enc` is sentencepiece with its dummy prefix and `enc_noprefix` without it. Prefix and
//! suffix are plain text: special-token strings inside them stay text. No EOS is ever appended:
//! it would end generation before the middle is written.

use crate::error::{Result, TokenizerError};
use crate::tokenizer::CodeLlamaTokenizer;

/// Literal marker for the hole in a text (never an id).
pub const FILL_MARKER: &str = "<FILL_ME>";

impl CodeLlamaTokenizer {
    /// Infilling prompt ids; `add_bos` puts BOS first (as the post-processor would).
    pub fn encode_infill(&self, prefix: &str, suffix: &str, suffix_first: bool, add_bos: bool) -> Result<Vec<u32>> {
        let [pre, suf, mid, _eot] = self.special_ids().infilling().ok_or(TokenizerError::NoInfilling)?;
        let mut ids = Vec::with_capacity((prefix.len() + suffix.len()) / 3 + 5);
        if add_bos {
            ids.extend(self.special_ids().bos);
        }
        let dummy = self.add_dummy_prefix();
        if suffix_first {
            ids.extend([pre, suf]);
            self.encode_text(suffix, false, &mut ids)?;
            ids.push(mid);
            self.encode_text(prefix, dummy, &mut ids)?;
        } else {
            ids.push(pre);
            self.encode_text(prefix, dummy, &mut ids)?;
            ids.push(suf);
            self.encode_text(suffix, false, &mut ids)?;
            ids.push(mid);
        }
        Ok(ids)
    }
}

/// Splits a text with exactly one `<FILL_ME>` into (prefix, suffix); `None` when it has none.
pub fn split_fill_marker(text: &str) -> Result<Option<(&str, &str)>> {
    let count = text.matches(FILL_MARKER).count();
    match count {
        0 => Ok(None),
        1 => Ok(text.split_once(FILL_MARKER)),
        n => Err(TokenizerError::InvalidInput(format!(
            "the text contains {n} {FILL_MARKER} markers; infilling needs exactly one"
        ))),
    }
}
