//! Tokens added beyond the sentencepiece vocabulary (a fine-tune's `<pad>`, custom markers), with
//! the Hugging Face added-vocabulary rules: ids follow the base vocabulary; a token with
//! `normalized: false` is matched in the raw text (as the special pieces are); one with
//! `normalized: true` is matched in the normalized text (spaces as `▁`, the dummy prefix included),
//! so `"<foo>"` matches where the normalized text reads `▁<foo>`; special ones are dropped by
//! `skip_special_tokens`. Each decodes to its content.

use serde_json::Value;

use crate::error::{Result, TokenizerError};
use crate::hub_json::added_token_entry;
use crate::special::{MatchFlags, SpecialMatcher};
use crate::tokenizer::{CodeLlamaTokenizer, PieceText, SPACE_MARK};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedPiece {
    pub content: String,
    pub id: u32,
    pub special: bool,
    pub normalized: bool,
    pub flags: MatchFlags,
}

/// A token to add: its content and transformers' flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    pub content: String,
    pub special: bool,
    pub normalized: bool,
    pub flags: MatchFlags,
}

impl NewToken {
    /// A token without lstrip/rstrip/single_word.
    pub fn new(content: &str, special: bool, normalized: bool) -> Self {
        NewToken { content: content.to_string(), special, normalized, flags: MatchFlags::default() }
    }
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
        let flag = |k: &str, default: bool| match tok.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| format!("added token {content:?}: \"{k}\" must be true or false, not {v}")),
        };
        let flags = MatchFlags { lstrip: flag("lstrip", false)?, rstrip: flag("rstrip", false)?, single_word: flag("single_word", false)? };
        let (special, normalized) = (flag("special", false)?, flag("normalized", true)?);
        out.push(AddedPiece { content: content.to_string(), id: id as u32, special, normalized, flags });
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
        // (pattern, id) with its flags; the base vocabulary's special pieces have none
        let base = self.base_matched.iter().map(|(s, id)| (s.clone(), *id, MatchFlags::default()));
        let raw: Vec<(String, u32, MatchFlags)> =
            base.chain(self.added.iter().filter(|a| !a.normalized).map(|a| (a.content.clone(), a.id, a.flags))).collect();
        let matcher = |entries: &[(String, u32, MatchFlags)]| {
            let tokens: Vec<(String, u32)> = entries.iter().map(|(s, id, _)| (s.clone(), *id)).collect();
            let flags: Vec<MatchFlags> = entries.iter().map(|e| e.2).collect();
            SpecialMatcher::with_flags(&tokens, &flags)
        };
        self.matcher = matcher(&raw);
        let normalized: Vec<(String, u32, MatchFlags)> =
            self.added.iter().filter(|a| a.normalized).map(|a| (normalize(&a.content, self.add_dummy_prefix), a.id, a.flags)).collect();
        self.added_matchers = if normalized.is_empty() {
            AddedMatchers::default()
        } else {
            let all: Vec<(String, u32, MatchFlags)> =
                raw.iter().cloned().chain(self.added.iter().filter(|a| a.normalized).map(|a| (a.content.clone(), a.id, a.flags))).collect();
            AddedMatchers { normalized: Some(matcher(&normalized)), raw_all: Some(matcher(&all)) }
        };
    }

    /// A copy with `tokens` added; contents already in the vocabulary are kept as they are.
    /// Returns the copy and how many tokens were new.
    pub fn with_added_tokens(&self, tokens: &[NewToken]) -> Result<(Self, usize)> {
        let mut copy = self.clone();
        let mut extra = Vec::new();
        for NewToken { content, special, normalized, flags } in tokens {
            if content.is_empty() {
                return Err(TokenizerError::InvalidInput("an added token cannot be empty".into()));
            }
            if copy.piece_to_id.contains_key(content) || extra.iter().any(|a: &AddedPiece| &a.content == content) {
                continue;
            }
            let id = (copy.pieces.len() + extra.len()) as u32;
            extra.push(AddedPiece { content: content.clone(), id, special: *special, normalized: *normalized, flags: *flags });
        }
        let added = extra.len();
        if let Some(list) = copy.json_template.get_mut("added_tokens").and_then(Value::as_array_mut) {
            list.extend(extra.iter().map(|a| added_token_entry(a.id, &a.content, a.normalized, a.special, a.flags)));
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

/// Python's `str.isspace`: Unicode whitespace plus the four ASCII separators U+001C..U+001F.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// transformers' slow-class rules for flagged added tokens (`legacy=False`), applied after its
/// trie split `ranges` of `text`: an `rstrip` token strips the whitespace from the start of the
/// piece after it, an `lstrip` one from the end of the piece before it; a `single_word` token with
/// no space (`" "`) before it is appended to the piece before it, else one with no space after it
/// is prepended to the piece after it. Pieces are then tokens when their text is a token's
/// content, else text. Returns (piece, Some(id) for a token).
pub(crate) fn slow_class_pieces(text: &str, ranges: &[(usize, usize, Option<u32>)], matcher: &SpecialMatcher) -> Vec<(String, Option<u32>)> {
    let mut pieces: Vec<String> = ranges.iter().map(|&(s, e, _)| text[s..e].to_string()).collect();
    let contents: ahash::AHashMap<&str, u32> = matcher.tokens().collect();
    for i in 0..pieces.len() {
        let Some(&id) = contents.get(pieces[i].as_str()) else { continue };
        let flags = matcher.flags_of(id);
        if !flags.any() {
            continue;
        }
        let token = pieces[i].clone();
        let left = if i > 0 { Some(pieces[i - 1].clone()).filter(|p| !p.is_empty()) } else { None };
        let right = pieces.get(i + 1).cloned().filter(|p| !p.is_empty());
        if let (true, Some(r)) = (flags.rstrip, &right) {
            pieces[i + 1] = r.trim_start_matches(python_space).to_string();
        }
        if let (true, Some(l)) = (flags.lstrip, &left) {
            pieces[i - 1] = l.trim_end_matches(python_space).to_string();
        }
        if flags.single_word && left.as_ref().is_some_and(|l| !l.ends_with(' ')) {
            pieces[i - 1].push_str(&token);
            pieces[i].clear();
        } else if let (true, Some(r)) = (flags.single_word, &right) {
            if !r.starts_with(' ') {
                pieces[i + 1].insert_str(0, &token);
                pieces[i].clear();
            }
        }
    }
    pieces
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let id = contents.get(p.as_str()).copied();
            (p, id)
        })
        .collect()
}
