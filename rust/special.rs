//! Special pieces of a Code Llama vocabulary and the matcher that finds them in raw text.

use aho_corasick::{AhoCorasick, MatchKind};

/// Infilling sentinels (Meta's names; all four exist in the 7B/13B vocabularies only).
pub const PREFIX: &str = "▁<PRE>";
pub const SUFFIX: &str = "▁<SUF>";
pub const MIDDLE: &str = "▁<MID>";
pub const EOT: &str = "▁<EOT>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub unk: u32,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub prefix: Option<u32>,
    pub suffix: Option<u32>,
    pub middle: Option<u32>,
    pub eot: Option<u32>,
}

impl SpecialIds {
    /// The ids `skip_special_tokens` drops: unk, bos, eos and the four sentinels.
    pub fn all(&self) -> Vec<u32> {
        let mut ids = vec![self.unk];
        ids.extend([self.bos, self.eos, self.prefix, self.suffix, self.middle, self.eot].into_iter().flatten());
        ids
    }

    /// (prefix, suffix, middle, eot) when the vocabulary can infill.
    pub fn infilling(&self) -> Option<[u32; 4]> {
        Some([self.prefix?, self.suffix?, self.middle?, self.eot?])
    }
}

/// A piece of raw text: either a span to encode as text or a special token found in it.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    Text(&'a str),
    Special(u32),
}

/// How an added token is matched beside its content, as in transformers' `AddedToken`:
/// `lstrip`/`rstrip` take the whitespace on that side into the token; `single_word` matches only
/// between non-word characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchFlags {
    pub lstrip: bool,
    pub rstrip: bool,
    pub single_word: bool,
}

impl MatchFlags {
    pub fn any(&self) -> bool {
        self.lstrip || self.rstrip || self.single_word
    }
}

/// Finds the special-token strings (`<s>`, `</s>`, `<unk>`, `▁<PRE>`…) and added tokens in text,
/// leftmost-longest, with the `tokenizers` added-vocabulary rules for their flags.
#[derive(Clone, Debug)]
pub struct SpecialMatcher {
    automaton: AhoCorasick,
    ids: Vec<u32>,
    strings: Vec<String>,
    /// Per pattern; empty when no pattern has a flag (the common case, checked once).
    flags: Vec<MatchFlags>,
}

impl SpecialMatcher {
    pub fn new(tokens: &[(String, u32)]) -> Self {
        Self::with_flags(tokens, &[])
    }

    /// `flags[k]` belongs to `tokens[k]`; missing entries have no flags.
    pub fn with_flags(tokens: &[(String, u32)], flags: &[MatchFlags]) -> Self {
        let strings: Vec<String> = tokens.iter().map(|(s, _)| s.clone()).collect();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&strings)
            .expect("special-token patterns are short literal strings");
        let flags = if flags.iter().any(MatchFlags::any) {
            (0..strings.len()).map(|k| flags.get(k).copied().unwrap_or_default()).collect()
        } else {
            Vec::new()
        };
        SpecialMatcher { automaton, ids: tokens.iter().map(|(_, id)| *id).collect(), strings, flags }
    }

    pub fn tokens(&self) -> impl Iterator<Item = (&str, u32)> {
        self.strings.iter().map(String::as_str).zip(self.ids.iter().copied())
    }

    /// The flags of the token with this id (none for an id the matcher does not hold).
    pub fn flags_of(&self, id: u32) -> MatchFlags {
        match self.ids.iter().position(|&i| i == id) {
            Some(k) if !self.flags.is_empty() => self.flags[k],
            _ => MatchFlags::default(),
        }
    }

    pub fn has_flags(&self) -> bool {
        !self.flags.is_empty()
    }

    /// Every match of every pattern, flags ignored, as `split_ranges` gives them.
    pub fn split_ranges_unflagged(&self, text: &str) -> Vec<(usize, usize, Option<u32>)> {
        let mut out = Vec::new();
        let mut last = 0;
        for m in self.automaton.find_iter(text) {
            if m.start() > last {
                out.push((last, m.start(), None));
            }
            out.push((m.start(), m.end(), Some(self.ids[m.pattern().as_usize()])));
            last = m.end();
        }
        if last < text.len() {
            out.push((last, text.len(), None));
        }
        out
    }

    /// Byte ranges of the pieces of `text`: (start, end, Some(id)) for a matched token, None for
    /// text. A token's range includes the whitespace its `lstrip`/`rstrip` took; a `single_word`
    /// token next to a word character (regex `\w`) is left in the text, as `tokenizers` does.
    pub fn split_ranges(&self, text: &str) -> Vec<(usize, usize, Option<u32>)> {
        if self.flags.is_empty() {
            return self.split_ranges_unflagged(text);
        }
        let mut out = Vec::new();
        let mut last = 0;
        for m in self.automaton.find_iter(text) {
            let k = m.pattern().as_usize();
            let (mut start, mut end) = (m.start(), m.end());
            if let Some(f) = self.flags.get(k) {
                if f.single_word && (ends_with_word(&text[..start]) || starts_with_word(&text[end..])) {
                    continue;
                }
                if f.lstrip {
                    let kept = text[..start].trim_end_matches(char::is_whitespace).len();
                    start = kept.max(last);
                }
                if f.rstrip {
                    end = text.len() - text[end..].trim_start_matches(char::is_whitespace).len();
                }
                // a token whose content starts with whitespace can begin inside the previous
                // token's stripped whitespace: it starts where that one ended
                start = start.max(last);
                if end <= start {
                    continue; // all of it already taken by the previous token's whitespace
                }
            }
            if start > last {
                out.push((last, start, None));
            }
            out.push((start, end, Some(self.ids[k])));
            last = end;
        }
        if last < text.len() {
            out.push((last, text.len(), None));
        }
        out
    }

    /// Splits `text` into text spans and matched tokens, dropping empty text spans.
    pub fn split<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        self.split_ranges(text)
            .into_iter()
            .map(|(s, e, id)| match id {
                Some(id) => Segment::Special(id),
                None => Segment::Text(&text[s..e]),
            })
            .collect()
    }
}

/// `tokenizers`' word test for `single_word` tokens: regex `\w` (Unicode) at the boundary.
fn is_word_char(c: char) -> bool {
    static WORD: once_cell::sync::Lazy<regex::Regex> = once_cell::sync::Lazy::new(|| regex::Regex::new(r"^\w$").expect("valid regex"));
    let mut buf = [0u8; 4];
    c.is_ascii_alphanumeric() || c == '_' || (!c.is_ascii() && WORD.is_match(c.encode_utf8(&mut buf)))
}

fn ends_with_word(text: &str) -> bool {
    text.chars().next_back().is_some_and(is_word_char)
}

fn starts_with_word(text: &str) -> bool {
    text.chars().next().is_some_and(is_word_char)
}
