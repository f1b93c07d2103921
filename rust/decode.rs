//! Decoding: ids to text with `▁` turned into spaces, byte pieces reassembled into UTF-8 (one
//! U+FFFD per byte that is not part of a valid character, as sentencepiece) and, for a full
//! decode, the first token's leading space removed.

use crate::error::Result;
use crate::tokenizer::{CodeLlamaTokenizer, PieceText};

impl CodeLlamaTokenizer {
    /// Text of `ids`: `▁` → space, byte pieces reassembled into UTF-8 (an invalid or incomplete
    /// sequence gives U+FFFD per byte), one leading space removed.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let mut out = String::with_capacity(ids.len() * 4);
        self.decode_into(ids, skip_special_tokens, &mut out)?;
        if out.starts_with(' ') {
            out.remove(0);
        }
        Ok(out)
    }

    /// Decoded text of `ids` without removing the leading space (for infilling and streaming).
    pub fn decode_into(&self, ids: &[i64], skip_special_tokens: bool, out: &mut String) -> Result<()> {
        let mut pending: Vec<u8> = Vec::new();
        for &raw in ids {
            let id = self.check_id(raw)?;
            if skip_special_tokens && self.is_special[id as usize] {
                continue;
            }
            match &self.decode_table[id as usize] {
                PieceText::Byte(b) => pending.push(*b),
                PieceText::Text(t) => {
                    flush_bytes(&mut pending, out);
                    out.push_str(t);
                }
            }
        }
        flush_bytes(&mut pending, out);
        Ok(())
    }
}

/// Appends `bytes` as UTF-8, one U+FFFD for each byte that is not part of a valid character.
pub(crate) fn flush_bytes(bytes: &mut Vec<u8>, out: &mut String) {
    let mut rest: &[u8] = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&rest[..valid]).expect("checked valid prefix"));
                let bad = e.error_len().unwrap_or(rest.len() - valid);
                for _ in 0..bad {
                    out.push('\u{FFFD}');
                }
                rest = &rest[valid + bad..];
            }
        }
    }
    bytes.clear();
}
