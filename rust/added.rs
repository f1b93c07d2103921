//! Tokens added beyond the sentencepiece vocabulary (a fine-tune's `<pad>`, custom markers), with
//! the Hugging Face added-vocabulary rules: ids follow the base vocabulary; a token with
//! `normalized: false` is matched in the raw text (as the special pieces are); one with
//! `normalized: true` is matched in the normalized text (spaces as `▁`, the dummy prefix included),
//! so `"<foo>"` matches where the normalized text reads `▁<foo>`; special ones are dropped by
//! `skip_special_tokens`. Each decodes to its content.

use serde_json::Value;

use crate::error::{Result, TokenizerError};
use crate::hub_json::added_token_entry;
use crate::special::SpecialMatcher;
use crate::tokenizer::{CodeLlamaTokenizer, PieceText, SPACE_MARK};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedPiece {
    pub content: String,
    pub id: u32,
    pub special: bool,
    pub normalized: bool,
}

/// The matchers the added pieces need, beside the special-piece matcher.
#[derive(Clone, Debug, Default)]
pub(crate) struct AddedMatchers {
    /// Pieces matched in the normalized text (`normalized: true`), by their normalized content.
    pub normalized: Option<SpecialMatcher>,
    /// Every matched piece by its raw content (the slow class's rule, `legacy=False`).
    pub raw_all: Option<SpecialMatcher>,
}

/// sentencepiece's normalization of a text span: spaces as `▁`, plus the dummy prefix.
pub(crate) fn normalize(text: &str, dummy_prefix: bool) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    if dummy_prefix && !text.is_empty() {
        out.push(SPACE_MARK);
    }
    out.extend(text.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }));
    out
}

/// The `added_tokens` entries of a hub JSON whose ids lie past the base vocabulary of `n` pieces.
pub(crate) fn parse_added(entries: &[Value], n: usize) -> std::result::Result<Vec<AddedPiece>, String> {
    let mut out = Vec::new();
    for tok in entries {
        let (Some(content), Some(id)) = (tok.get("content").and_then(Value::as_str), tok.get("id").and_then(Value::as_u64)) else {
            return Err("an entry of added_tokens lacks \"content\" or \"id\"".into());
        };
        if (id as usize) < n {
            continue;
        }
        if content.is_empty() {
            return Err(format!("added token {id} has empty content"));
        }
        let flag = |k: &str, default: bool| tok.get(k).and_then(Value::as_bool).unwrap_or(default);
        if let Some(k) = ["lstrip", "rstrip", "single_word"].into_iter().find(|k| flag(k, false)) {
            return Err(format!("added token {content:?} asks for {k} matching, which is not supported"));
        }
        out.push(AddedPiece { content: content.to_string(), id: id as u32, special: flag("special", false), normalized: flag("normalized", true) });
    }
    out.sort_by_key(|a| a.id);
    for (k, a) in out.iter().enumerate() {
        if a.id as usize != n + k {
            return Err(format!(
                "added token {:?} has id {}, but tokens past the {n}-piece vocabulary must take the ids {n}, {}, ... in turn",
                a.content, a.id, n + 1
            ));
        }
    }
    Ok(out)
}

impl CodeLlamaTokenizer {
    /// Appends `extra` (ids already `vocab_size..`) to the vocabulary and rebuilds the matchers.
    pub(crate) fn install_added(&mut self, extra: Vec<AddedPiece>) {
        for a in extra {
            debug_assert_eq!(a.id as usize, self.pieces.len());
            self.pieces.push(a.content.clone());
            self.decode_table.push(PieceText::Text(a.content.replace(SPACE_MARK, " ").into_boxed_str()));
            self.is_special.push(a.special);
            self.piece_to_id.insert(a.content.clone(), a.id);
            self.added.push(a);
        }
        let raw: Vec<(String, u32)> = self
            .base_matched
            .iter()
            .cloned()
            .chain(self.added.iter().filter(|a| !a.normalized).map(|a| (a.content.clone(), a.id)))
            .collect();
        self.matcher = SpecialMatcher::new(&raw);
        let normalized: Vec<(String, u32)> =
            self.added.iter().filter(|a| a.normalized).map(|a| (normalize(&a.content, self.add_dummy_prefix), a.id)).collect();
        self.added_matchers = if normalized.is_empty() {
            AddedMatchers::default()
        } else {
            let all: Vec<(String, u32)> = raw.iter().cloned().chain(self.added.iter().filter(|a| a.normalized).map(|a| (a.content.clone(), a.id))).collect();
            AddedMatchers { normalized: Some(SpecialMatcher::new(&normalized)), raw_all: Some(SpecialMatcher::new(&all)) }
        };
    }

    /// A copy with `tokens` (content, special, normalized) added; contents already in the vocabulary
    /// are kept as they are. Returns the copy and how many tokens were new.
    pub fn with_added_tokens(&self, tokens: &[(String, bool, bool)]) -> Result<(Self, usize)> {
        let mut copy = self.clone();
        let mut extra = Vec::new();
        for (content, special, normalized) in tokens {
            if content.is_empty() {
                return Err(TokenizerError::InvalidInput("an added token cannot be empty".into()));
            }
            if copy.piece_to_id.contains_key(content) || extra.iter().any(|a: &AddedPiece| &a.content == content) {
                continue;
            }
            let id = (copy.pieces.len() + extra.len()) as u32;
            extra.push(AddedPiece { content: content.clone(), id, special: *special, normalized: *normalized });
        }
        let added = extra.len();
        if let Some(list) = copy.json_template.get_mut("added_tokens").and_then(Value::as_array_mut) {
            list.extend(extra.iter().map(|a| added_token_entry(a.id, &a.content, a.normalized, a.special)));
        }
        copy.install_added(extra);
        Ok((copy, added))
    }

    /// The pieces added past the sentencepiece vocabulary.
    pub fn added_pieces(&self) -> &[AddedPiece] {
        &self.added
    }

    /// Ids of a raw text span with the normalized added pieces matched in its normalized form;
    /// the text between them is BPE-encoded as it stands (already normalized).
    pub(crate) fn encode_span_with_added(&self, text: &str, dummy_prefix: bool, matcher: &SpecialMatcher, out: &mut Vec<u32>) -> Result<()> {
        let normalized = self.normalized_form(text, dummy_prefix);
        for seg in matcher.split(&normalized) {
            match seg {
                crate::special::Segment::Special(id) => out.push(id),
                crate::special::Segment::Text(t) => self.encode_normalized_text(t, out)?,
            }
        }
        Ok(())
    }
}
