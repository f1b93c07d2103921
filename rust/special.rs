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

/// Finds the special-token strings (`<s>`, `</s>`, `<unk>`, `▁<PRE>`…) in raw text, leftmost-longest,
/// as the Hugging Face added-vocabulary does.
#[derive(Clone, Debug)]
pub struct SpecialMatcher {
    automaton: AhoCorasick,
    ids: Vec<u32>,
    strings: Vec<String>,
}

impl SpecialMatcher {
    pub fn new(tokens: &[(String, u32)]) -> Self {
        let strings: Vec<String> = tokens.iter().map(|(s, _)| s.clone()).collect();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&strings)
            .expect("special-token patterns are short literal strings");
        SpecialMatcher { automaton, ids: tokens.iter().map(|(_, id)| *id).collect(), strings }
    }

    pub fn tokens(&self) -> impl Iterator<Item = (&str, u32)> {
        self.strings.iter().map(String::as_str).zip(self.ids.iter().copied())
    }

    /// Byte ranges of the pieces of `text`: (start, end, Some(id)) for a special token, None for text.
    pub fn split_ranges(&self, text: &str) -> Vec<(usize, usize, Option<u32>)> {
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

    /// Splits `text` into text spans and special tokens, dropping empty text spans.
    pub fn split<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let mut out = Vec::new();
        let mut last = 0;
        for m in self.automaton.find_iter(text) {
            if m.start() > last {
                out.push(Segment::Text(&text[last..m.start()]));
            }
            out.push(Segment::Special(self.ids[m.pattern().as_usize()]));
            last = m.end();
        }
        if last < text.len() {
            out.push(Segment::Text(&text[last..]));
        }
        out
    }
}
