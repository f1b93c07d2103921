//! Character offsets of every token in the original text (Python `str` indices), as transformers'
//! fast tokenizers report them: a token's span is the union of the original characters its
//! normalized characters came from; the dummy-prefix `▁` belongs to the first character; byte
//! pieces carry the span of the character they encode; BOS/EOS are (0, 0).

use tokenizers::Model;

use crate::error::{Result, TokenizerError};
use crate::tokenizer::{CodeLlamaTokenizer, SpecialTokenMode};

const SPACE_MARK: char = '▁';

impl CodeLlamaTokenizer {
    /// (ids, offsets) of `text`; the ids equal `encode(text, mode, add_special_tokens)`.
    pub fn encode_with_offsets(&self, text: &str, mode: SpecialTokenMode, add_special_tokens: bool) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        if self.removes_extra_whitespace() {
            return Err(TokenizerError::InvalidInput(
                "offsets are not available for tokenizers that collapse whitespace (remove_extra_whitespaces)".into(),
            ));
        }
        // byte index -> char index of the original text
        let mut char_of_byte = vec![0usize; text.len() + 1];
        let mut n_chars = 0;
        for (b, _) in text.char_indices() {
            char_of_byte[b] = n_chars;
            n_chars += 1;
        }
        char_of_byte[text.len()] = n_chars;
        for b in 1..text.len() {
            if !text.is_char_boundary(b) {
                char_of_byte[b] = char_of_byte[b - 1];
            }
        }
        let (add_bos, add_eos) = if add_special_tokens { self.post_processor() } else { (false, false) };
        let mut ids = Vec::new();
        let mut offs = Vec::new();
        if add_bos {
            if let Some(b) = self.special_ids().bos {
                ids.push(b);
                offs.push((0, 0));
            }
        }
        let dummy = self.add_dummy_prefix();
        match mode {
            SpecialTokenMode::Plain => self.span_offsets(text, 0, text.len(), dummy, false, false, &char_of_byte, &mut ids, &mut offs)?,
            SpecialTokenMode::Match => {
                for (s, e, special) in self.special_matcher().split_ranges(text) {
                    match special {
                        Some(id) => {
                            ids.push(id);
                            offs.push((char_of_byte[s], char_of_byte[e]));
                        }
                        None => self.span_offsets(text, s, e, dummy, false, true, &char_of_byte, &mut ids, &mut offs)?,
                    }
                }
            }
            SpecialTokenMode::MatchNoPrefix => {
                // Same rules as `encode_body`: `▁` read as a space, "▁" prepended to the first text
                // span (a lone one before a special piece is dropped).
                let start = ids.len();
                let text_sp: String = text.chars().map(|c| if c == SPACE_MARK { ' ' } else { c }).collect();
                let matcher = self.added_matchers.raw_all.as_ref().unwrap_or(self.special_matcher());
                if matcher.has_flags() {
                    // the slow class's rules join and strip pieces across tokens; it has no offsets
                    return Err(TokenizerError::InvalidInput(
                        "offsets are not available with legacy=False when added tokens have lstrip, rstrip or single_word".into(),
                    ));
                }
                let ranges = matcher.split_ranges(&text_sp);
                for (k, (s, e, special)) in ranges.into_iter().enumerate() {
                    match special {
                        Some(id) => {
                            ids.push(id);
                            offs.push((char_of_byte[s], char_of_byte[e]));
                        }
                        None => self.span_offsets(&text_sp, s, e, false, k == 0 && dummy, false, &char_of_byte, &mut ids, &mut offs)?,
                    }
                }
                let lone = self.piece_to_id("▁");
                if ids.len() > start + 1 && Some(ids[start]) == lone && self.is_special_id(ids[start + 1]) {
                    ids.remove(start);
                    offs.remove(start);
                }
            }
        }
        if add_eos {
            if let Some(e) = self.special_ids().eos {
                ids.push(e);
                offs.push((0, 0));
            }
        }
        Ok((ids, offs))
    }

    /// Tokens of text[s..e] with offsets. `dummy`: sentencepiece's dummy prefix (only on a
    /// non-empty span); `lead_mark`: a literal leading "▁" (HF slow's prepended one);
    /// `match_added`: find the normalized added tokens in the normalized span.
    #[allow(clippy::too_many_arguments)]
    fn span_offsets(&self, text: &str, s: usize, e: usize, dummy: bool, lead_mark: bool, match_added: bool, char_of_byte: &[usize],
                    ids: &mut Vec<u32>, offs: &mut Vec<(usize, usize)>) -> Result<()> {
        let span = &text[s..e];
        if span.is_empty() {
            return Ok(());
        }
        // Normalized text and, per normalized byte, the original char span it came from.
        let mut normalized = String::with_capacity(span.len() + 3);
        let mut src: Vec<(usize, usize)> = Vec::with_capacity(span.len() + 3);
        let first_char = char_of_byte[s];
        if dummy || lead_mark {
            normalized.push(SPACE_MARK);
            src.extend(std::iter::repeat((first_char, first_char + 1)).take(SPACE_MARK.len_utf8()));
        }
        for (b, ch) in span.char_indices() {
            let c0 = char_of_byte[s + b];
            let out = if ch == ' ' { SPACE_MARK } else { ch };
            normalized.push(out);
            src.extend(std::iter::repeat((c0, c0 + 1)).take(out.len_utf8()));
        }
        let span_of = |a: usize, b: usize| {
            let lo = src[a..b].iter().map(|x| x.0).min().unwrap_or(first_char);
            let hi = src[a..b].iter().map(|x| x.1).max().unwrap_or(first_char);
            (lo, hi)
        };
        let pieces = match (&self.added_matchers.normalized, match_added) {
            (Some(m), true) => m.split_ranges(&normalized),
            _ => vec![(0, normalized.len(), None)],
        };
        for (a0, b0, added) in pieces {
            if let Some(id) = added {
                ids.push(id);
                offs.push(span_of(a0, b0));
                continue;
            }
            let tokens = self
                .bpe()
                .tokenize(&normalized[a0..b0])
                .map_err(|err| TokenizerError::InvalidInput(format!("BPE failed on the input: {err}")))?;
            for t in tokens {
                let (a, b) = t.offsets;
                ids.push(t.id);
                offs.push(span_of(a0 + a, a0 + b));
            }
        }
        Ok(())
    }
}
