//! The Code Llama tokenizer core: loading (hub `tokenizer.json` or sentencepiece `tokenizer.model`),
//! encoding with sentencepiece's rules over the `tokenizers` crate's byte-fallback BPE, the BOS/EOS
//! post-processor, and decoding with byte reassembly.

use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use ahash::AHashMap;
use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::Model;

use crate::added::{parse_added, AddedMatchers, AddedPiece};
use crate::chunking::{cached_chunk, JoinableBigrams};
use crate::small_bpe::MergeTable;
use crate::error::{Result, TokenizerError};
use crate::special::{Segment, SpecialIds, SpecialMatcher, EOT, MIDDLE, PREFIX, SUFFIX};
use crate::spm_model::{PieceKind, SpmModel};

const JSON_KIND: &str = "tokenizer.json";
/// Normalized texts at least this long are encoded by several threads.
const PARALLEL_MIN_BYTES: usize = 512 * 1024;
pub(crate) const SPACE_MARK: char = '▁';

/// How special-token strings inside the text are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialTokenMode {
    /// Hub `tokenizer.json` behaviour: matched as special tokens; every text span between them is
    /// encoded as sentencepiece encodes it alone (dummy prefix included).
    Match,
    /// Hugging Face slow `legacy=False`: matched, but only the start of the text gets the dummy prefix.
    MatchNoPrefix,
    /// Plain text, as Meta's `encode` does (`split_special_tokens=True`): safe for untrusted input.
    Plain,
}

/// What each id turns into when decoding.
#[derive(Clone, Debug)]
pub(crate) enum PieceText {
    /// UTF-8 text with `▁` already turned into spaces.
    Text(Box<str>),
    /// A byte-fallback piece `<0xNN>`.
    Byte(u8),
}

/// BOS/EOS flags packed in one atomic so a call always sees a consistent pair.
const ADD_BOS: u8 = 1;
const ADD_EOS: u8 = 2;

pub struct CodeLlamaTokenizer {
    pub(crate) bpe: BPE,
    pub(crate) pieces: Vec<String>,
    pub(crate) piece_to_id: AHashMap<String, u32>,
    pub(crate) decode_table: Vec<PieceText>,
    pub(crate) is_special: Vec<bool>,
    pub(crate) special: SpecialIds,
    pub(crate) matcher: SpecialMatcher,
    pub(crate) add_dummy_prefix: bool,
    pub(crate) remove_extra_whitespaces: bool,
    pub(crate) post_flags: AtomicU8,
    /// Hub-layout JSON without `post_processor`, filled in on serialization.
    pub(crate) json_template: Value,
    /// Where text may be split into independently encoded chunks.
    pub(crate) bigrams: Arc<JoinableBigrams>,
    /// Identity for the per-thread chunk caches.
    pub(crate) cache_owner: usize,
    /// Allocation-free BPE for short chunks (None if the merges do not fit the vocabulary).
    pub(crate) small: Option<Arc<MergeTable>>,
    /// The special pieces of the base vocabulary matched in raw text (the matcher adds the added ones).
    pub(crate) base_matched: Vec<(String, u32)>,
    /// Tokens past the sentencepiece vocabulary, in id order.
    pub(crate) added: Vec<AddedPiece>,
    pub(crate) added_matchers: AddedMatchers,
}

static NEXT_OWNER: AtomicUsize = AtomicUsize::new(1);

impl Clone for CodeLlamaTokenizer {
    fn clone(&self) -> Self {
        CodeLlamaTokenizer {
            bpe: self.bpe.clone(),
            pieces: self.pieces.clone(),
            piece_to_id: self.piece_to_id.clone(),
            decode_table: self.decode_table.clone(),
            is_special: self.is_special.clone(),
            special: self.special,
            matcher: self.matcher.clone(),
            add_dummy_prefix: self.add_dummy_prefix,
            remove_extra_whitespaces: self.remove_extra_whitespaces,
            post_flags: AtomicU8::new(self.post_flags.load(Ordering::Acquire)),
            json_template: self.json_template.clone(),
            bigrams: self.bigrams.clone(),
            cache_owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            small: self.small.clone(),
            base_matched: self.base_matched.clone(),
            added: self.added.clone(),
            added_matchers: self.added_matchers.clone(),
        }
    }
}

pub(crate) fn is_byte_piece(piece: &str) -> Option<u8> {
    let b = piece.as_bytes();
    if b.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
        u8::from_str_radix(&piece[3..5], 16).ok()
    } else {
        None
    }
}

impl CodeLlamaTokenizer {
    // ---------------------------------------------------------------- loading

    /// Loads a sentencepiece `tokenizer.model` alone.
    pub fn from_spm_file(path: &Path) -> Result<Self> {
        let spm = SpmModel::from_file(path)?;
        Self::from_spm(&spm, path)
    }

    pub fn from_spm(spm: &SpmModel, path: &Path) -> Result<Self> {
        let unk = spm.pieces[spm.unk_id as usize].clone();
        let merges = spm.merges();
        let bpe = BPE::builder()
            .vocab_and_merges(spm.vocab(), merges.clone())
            .unk_token(unk)
            .fuse_unk(true)
            .byte_fallback(true)
            .build()
            .map_err(|e| TokenizerError::invalid(path, "sentencepiece model (tokenizer.model)", format!("cannot build BPE: {e}")))?;
        // Text matched as special tokens: unknown and control pieces (<unk>, <s>, </s>).
        let mut specials: Vec<(String, u32)> = spm
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| matches!(k, PieceKind::Unknown | PieceKind::Control))
            .map(|(i, _)| (spm.pieces[i].clone(), i as u32))
            .collect();
        specials.sort_by_key(|(_, id)| *id);
        let specials_json: Vec<(String, u32)> = specials.clone();
        let template = crate::hub_json::hub_json_template(&bpe, &specials_json, spm.add_dummy_prefix)?;
        let mut tok = Self::assemble(bpe, &merges, specials, spm.unk_id, spm.bos_id, spm.eos_id, spm.add_dummy_prefix, template, path, "sentencepiece model (tokenizer.model)")?;
        tok.remove_extra_whitespaces = spm.remove_extra_whitespaces;
        Ok(tok)
    }

    /// Loads a hub `tokenizer.json` (byte-fallback BPE, legacy or Metaspace layout).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidData => TokenizerError::invalid(path, JSON_KIND, "the file is not UTF-8 text"),
            _ => TokenizerError::Io { path: path.to_path_buf(), source },
        })?;
        Self::from_json_str(&text, path)
    }

    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| TokenizerError::invalid(path, JSON_KIND, reason);
        if text.trim().is_empty() {
            return Err(bad("the file is empty".into()));
        }
        let root: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON ({e})")))?;
        let model = root.get("model").ok_or_else(|| bad("it has no \"model\" section".into()))?;
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err(bad(format!("model type is {}; a byte-fallback BPE is expected", model.get("type").unwrap_or(&Value::Null))));
        }
        if model.get("byte_fallback").and_then(Value::as_bool) != Some(true) {
            return Err(bad("the BPE model does not use byte_fallback".into()));
        }
        let bpe: BPE = serde_json::from_str(&model.to_string()).map_err(|e| bad(format!("cannot read the BPE model ({e})")))?;
        let merges: Vec<(String, String)> = model
            .get("merges")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| match m {
                        Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                        Value::Array(pair) if pair.len() == 2 => Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let vocab = bpe.get_vocab();
        let unk_piece = model.get("unk_token").and_then(Value::as_str).unwrap_or("<unk>");
        let unk_id = *vocab.get(unk_piece).ok_or_else(|| bad(format!("the unknown token {unk_piece:?} is not in the vocabulary")))?;
        // Added special tokens are the strings matched in raw text; those past the vocabulary are
        // a fine-tune's additions.
        let mut specials: Vec<(String, u32)> = Vec::new();
        let entries = root.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        let extra = parse_added(entries, vocab.len()).map_err(bad)?;
        if let Some(added) = root.get("added_tokens").and_then(Value::as_array) {
            for tok in added.iter().filter(|t| t.get("id").and_then(Value::as_u64).is_some_and(|i| (i as usize) < vocab.len())) {
                let content = tok.get("content").and_then(Value::as_str);
                let id = tok.get("id").and_then(Value::as_u64);
                let special = tok.get("special").and_then(Value::as_bool).unwrap_or(false);
                match (content, id) {
                    (Some(c), Some(i)) if special && c != PREFIX && c != SUFFIX && c != MIDDLE && c != EOT => {
                        if vocab.get(c).copied() != Some(i as u32) {
                            return Err(bad(format!("added token {c:?} has id {i}, which does not match the vocabulary")));
                        }
                        specials.push((c.to_string(), i as u32));
                    }
                    (Some(_), Some(_)) => {}
                    _ => return Err(bad("an entry of added_tokens lacks \"content\" or \"id\"".into())),
                }
            }
        }
        let bos = vocab.get("<s>").copied();
        let eos = vocab.get("</s>").copied();
        let dummy = crate::hub_json::json_adds_dummy_prefix(&root);
        let mut template = root.clone();
        if let Some(obj) = template.as_object_mut() {
            obj.remove("post_processor");
        }
        let mut tok = Self::assemble(bpe, &merges, specials, unk_id, bos, eos, dummy, template, path, JSON_KIND)?;
        tok.install_added(extra);
        Ok(tok)
    }

    /// Loads from a `tokenizer.json` and/or a `tokenizer.model`; with both, they must agree.
    pub fn from_files(json: Option<&Path>, model: Option<&Path>) -> Result<Self> {
        match (json, model) {
            (Some(j), _) => Self::from_json_file(j),
            (None, Some(m)) => Self::from_spm_file(m),
            (None, None) => Err(TokenizerError::InvalidInput("give a tokenizer.json or a tokenizer.model path".into())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        bpe: BPE,
        merges: &[(String, String)],
        mut specials: Vec<(String, u32)>,
        unk: u32,
        bos: Option<u32>,
        eos: Option<u32>,
        add_dummy_prefix: bool,
        json_template: Value,
        path: &Path,
        kind: &'static str,
    ) -> Result<Self> {
        let bad = |reason: String| TokenizerError::invalid(path, kind, reason);
        let vocab = bpe.get_vocab();
        let n = vocab.len();
        let mut pieces = vec![String::new(); n];
        for (piece, &id) in &vocab {
            let slot = pieces.get_mut(id as usize).ok_or_else(|| bad(format!("id {id} of piece {piece:?} is beyond the {n} pieces (ids must be 0..{n})")))?;
            *slot = piece.clone();
        }
        let mut byte_count = 0;
        let decode_table: Vec<PieceText> = pieces
            .iter()
            .map(|p| match is_byte_piece(p) {
                Some(b) => {
                    byte_count += 1;
                    PieceText::Byte(b)
                }
                None => PieceText::Text(p.replace(SPACE_MARK, " ").into_boxed_str()),
            })
            .collect();
        if byte_count != 256 {
            return Err(bad(format!("the vocabulary has {byte_count} byte pieces <0x00>..<0xFF> instead of 256")));
        }
        let lookup = |p: &str| vocab.get(p).copied();
        let special = SpecialIds {
            unk,
            bos,
            eos,
            prefix: lookup(PREFIX),
            suffix: lookup(SUFFIX),
            middle: lookup(MIDDLE),
            eot: lookup(EOT),
        };
        // The sentinels are special tokens too (as transformers' CodeLlamaTokenizer adds them).
        for (s, id) in [(PREFIX, special.prefix), (SUFFIX, special.suffix), (MIDDLE, special.middle), (EOT, special.eot)] {
            if let Some(id) = id {
                if !specials.iter().any(|(_, i)| *i == id) {
                    specials.push((s.to_string(), id));
                }
            }
        }
        let mut is_special = vec![false; n];
        for id in special.all() {
            is_special[id as usize] = true;
        }
        let matcher = SpecialMatcher::new(&specials);
        let base_matched = specials.clone();
        let piece_to_id: AHashMap<String, u32> = vocab.into_iter().collect();
        let bigrams = JoinableBigrams::from_merges(merges.iter().map(|(a, b)| (a.as_str(), b.as_str())));
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = piece_to_id[&format!("<0x{b:02X}>")];
        }
        let small = MergeTable::new(&piece_to_id, merges, byte_ids).map(Arc::new);
        Ok(CodeLlamaTokenizer {
            bpe,
            pieces,
            piece_to_id,
            decode_table,
            is_special,
            special,
            matcher,
            add_dummy_prefix,
            remove_extra_whitespaces: false,
            post_flags: AtomicU8::new(if bos.is_some() { ADD_BOS } else { 0 }),
            json_template,
            bigrams: Arc::new(bigrams),
            cache_owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            small,
            base_matched,
            added: Vec::new(),
            added_matchers: AddedMatchers::default(),
        })
    }

    // ---------------------------------------------------------------- vocabulary

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn special_ids(&self) -> SpecialIds {
        self.special
    }

    pub fn id_to_piece(&self, id: i64) -> Result<&str> {
        self.check_id(id).map(|i| self.pieces[i as usize].as_str())
    }

    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.piece_to_id.get(piece).copied()
    }

    pub fn pieces(&self) -> &[String] {
        &self.pieces
    }

    pub fn is_special_id(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// The (string, id) pairs matched as special tokens in raw text.
    pub fn special_tokens(&self) -> Vec<(String, u32)> {
        self.matcher.tokens().map(|(s, i)| (s.to_string(), i)).collect()
    }

    pub fn add_dummy_prefix(&self) -> bool {
        self.add_dummy_prefix
    }

    pub(crate) fn removes_extra_whitespace(&self) -> bool {
        self.remove_extra_whitespaces
    }

    pub(crate) fn special_matcher(&self) -> &SpecialMatcher {
        &self.matcher
    }

    pub(crate) fn bpe(&self) -> &BPE {
        &self.bpe
    }

    pub(crate) fn check_id(&self, id: i64) -> Result<u32> {
        if id < 0 || id as usize >= self.pieces.len() {
            Err(TokenizerError::IdOutOfRange { id, vocab_size: self.pieces.len() })
        } else {
            Ok(id as u32)
        }
    }

    // ---------------------------------------------------------------- post-processor

    /// Rebuilds the post-processor (BOS/EOS template) for new `add_bos_token`/`add_eos_token` values.
    pub fn update_post_processor(&self, add_bos: bool, add_eos: bool) -> Result<()> {
        if add_bos && self.special.bos.is_none() {
            return Err(TokenizerError::InvalidInput("add_bos_token=True but the vocabulary has no <s> piece".into()));
        }
        if add_eos && self.special.eos.is_none() {
            return Err(TokenizerError::InvalidInput("add_eos_token=True but the vocabulary has no </s> piece".into()));
        }
        let flags = (if add_bos { ADD_BOS } else { 0 }) | (if add_eos { ADD_EOS } else { 0 });
        self.post_flags.store(flags, Ordering::Release);
        Ok(())
    }

    /// (add_bos, add_eos) currently in force.
    pub fn post_processor(&self) -> (bool, bool) {
        let f = self.post_flags.load(Ordering::Acquire);
        (f & ADD_BOS != 0, f & ADD_EOS != 0)
    }

    // ---------------------------------------------------------------- encoding

    /// Ids of `text` with the post-processor applied when `add_special_tokens`.
    pub fn encode(&self, text: &str, mode: SpecialTokenMode, add_special_tokens: bool) -> Result<Vec<u32>> {
        let (add_bos, add_eos) = if add_special_tokens { self.post_processor() } else { (false, false) };
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            ids.extend(self.special.bos);
        }
        self.encode_body(text, mode, &mut ids)?;
        if add_eos {
            ids.extend(self.special.eos);
        }
        Ok(ids)
    }

    /// Ids of `text` without BOS/EOS, according to `mode`.
    pub fn encode_body(&self, text: &str, mode: SpecialTokenMode, out: &mut Vec<u32>) -> Result<()> {
        match mode {
            SpecialTokenMode::Plain => self.encode_text(text, self.add_dummy_prefix, out),
            SpecialTokenMode::Match => {
                for seg in self.matcher.split(text) {
                    match (seg, &self.added_matchers.normalized) {
                        (Segment::Special(id), _) => out.push(id),
                        (Segment::Text(t), None) => self.encode_text(t, self.add_dummy_prefix, out)?,
                        (Segment::Text(t), Some(m)) => self.encode_span_with_added(t, self.add_dummy_prefix, m, out)?,
                    }
                }
                Ok(())
            }
            SpecialTokenMode::MatchNoPrefix => {
                // HF slow CodeLlamaTokenizer: text' = "▁" + text with `▁` read as spaces; split on
                // special tokens; every span encoded without a dummy prefix; then a leading lone "▁"
                // is dropped when a special piece follows it.
                if text.is_empty() {
                    return Ok(());
                }
                let mut prefixed = String::with_capacity(text.len() + 3);
                if self.add_dummy_prefix {
                    prefixed.push(SPACE_MARK);
                }
                prefixed.extend(text.chars().map(|c| if c == SPACE_MARK { ' ' } else { c }));
                let start = out.len();
                let matcher = self.added_matchers.raw_all.as_ref().unwrap_or(&self.matcher);
                let ranges = matcher.split_ranges_unflagged(&prefixed);
                if matcher.has_flags() {
                    for (piece, id) in crate::added::slow_class_pieces(&prefixed, &ranges, matcher) {
                        match id {
                            Some(id) => out.push(id),
                            None => self.encode_text(&piece, false, out)?,
                        }
                    }
                } else {
                    for (s, e, id) in ranges {
                        match id {
                            Some(id) => out.push(id),
                            None => self.encode_text(&prefixed[s..e], false, out)?,
                        }
                    }
                }
                let lone_mark = self.piece_to_id.get("▁").copied();
                if out.len() > start + 1 && Some(out[start]) == lone_mark && self.is_special[out[start + 1] as usize] {
                    out.remove(start);
                }
                Ok(())
            }
        }
    }

    /// sentencepiece's encoding of plain text (no special-token matching): spaces become `▁`,
    /// `dummy_prefix` adds a leading `▁` to non-empty text, then byte-fallback BPE.
    pub fn encode_text(&self, text: &str, dummy_prefix: bool, out: &mut Vec<u32>) -> Result<()> {
        let normalized = self.normalized_form(text, dummy_prefix);
        self.encode_normalized_text(&normalized, out)
    }

    /// sentencepiece's normalization: whitespace collapsed where the model says so, spaces as `▁`,
    /// and the dummy prefix on non-empty text.
    pub(crate) fn normalized_form(&self, text: &str, dummy_prefix: bool) -> String {
        if self.remove_extra_whitespaces {
            crate::added::normalize(&collapse_whitespace(text), dummy_prefix)
        } else {
            crate::added::normalize(text, dummy_prefix)
        }
    }

    /// BPE of a normalized string, by several threads when it is long.
    pub(crate) fn encode_normalized_text(&self, normalized: &str, out: &mut Vec<u32>) -> Result<()> {
        if normalized.is_empty() {
            return Ok(());
        }
        if normalized.len() >= PARALLEL_MIN_BYTES {
            return self.encode_normalized_parallel(normalized, out);
        }
        self.encode_normalized(normalized, out)
    }

    /// Chunked, cached BPE of an already normalized string.
    fn encode_normalized(&self, normalized: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut failure = None;
        for chunk in self.bigrams.chunks(normalized) {
            cached_chunk(self.cache_owner, chunk, out, |c, o| {
                if self.small.as_ref().is_some_and(|m| m.encode(c, o)) {
                    return;
                }
                match self.bpe.tokenize(c) {
                    Ok(tokens) => o.extend(tokens.into_iter().map(|t| t.id)),
                    Err(e) => failure = Some(e.to_string()),
                }
            });
            if let Some(e) = failure.take() {
                return Err(TokenizerError::InvalidInput(format!("BPE failed on the input: {e}")));
            }
        }
        Ok(())
    }

    /// A long text is cut at safe boundaries into one piece per worker, encoded in parallel.
    fn encode_normalized_parallel(&self, normalized: &str, out: &mut Vec<u32>) -> Result<()> {
        let workers = crate::parallel::threads().max(1);
        let mut cuts = vec![0usize];
        for k in 1..workers {
            let mut at = normalized.len() * k / workers;
            while !normalized.is_char_boundary(at) {
                at += 1;
            }
            // walk forward to a boundary no merge can cross
            let mut prev = normalized[..at].chars().next_back();
            let mut found = None;
            for (i, c) in normalized[at..].char_indices() {
                if let Some(p) = prev {
                    if !self.bigrams.joinable(p, c) {
                        found = Some(at + i);
                        break;
                    }
                }
                prev = Some(c);
            }
            match found {
                Some(cut) if cut > *cuts.last().expect("non-empty") => cuts.push(cut),
                _ => {}
            }
        }
        cuts.push(normalized.len());
        let pieces: Vec<&str> = cuts.windows(2).map(|w| &normalized[w[0]..w[1]]).collect();
        let parts = crate::parallel::map_ordered(&pieces, |p| {
            let mut ids = Vec::with_capacity(p.len() / 3);
            self.encode_normalized(p, &mut ids).map(|_| ids)
        });
        for part in parts {
            out.extend(part?);
        }
        Ok(())
    }

    /// The same ids as `encode_text`, from one BPE pass over the whole text (no chunks, no cache):
    /// the reference the chunked path is tested against.
    pub fn encode_text_unsplit(&self, text: &str, dummy_prefix: bool) -> Result<Vec<u32>> {
        let mut normalized = String::with_capacity(text.len() + 3);
        if text.is_empty() {
            return Ok(Vec::new());
        }
        if dummy_prefix {
            normalized.push(SPACE_MARK);
        }
        normalized.extend(text.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }));
        let tokens = self.bpe.tokenize(&normalized).map_err(|e| TokenizerError::InvalidInput(format!("BPE failed on the input: {e}")))?;
        Ok(tokens.into_iter().map(|t| t.id).collect())
    }

}

/// sentencepiece's `remove_extra_whitespaces`: leading spaces dropped, runs of spaces collapsed to
/// one, and trailing spaces or `▁` marks dropped (they are alike once escaped).
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev_space = false;
    for ch in text.trim_start_matches(' ').chars() {
        let is_space = ch == ' ';
        if !(is_space && prev_space) {
            out.push(ch);
        }
        prev_space = is_space;
    }
    let kept = out.trim_end_matches([' ', SPACE_MARK]).len();
    out.truncate(kept);
    out
}
