//! Reading a sentencepiece `tokenizer.model` (protobuf) and turning it into the pieces, scores and
//! score-ordered merges of a byte-fallback BPE, the same way the Hugging Face converter does, so a
//! `tokenizer.model` alone gives exactly the tokenizer the hub `tokenizer.json` describes.

use std::path::Path;

use ahash::AHashMap;
use prost::Message;

use crate::error::{Result, TokenizerError};

const KIND: &str = "sentencepiece model (tokenizer.model)";

/// The subset of sentencepiece's `sentencepiece_model.proto` that a BPE tokenizer needs.
/// Field numbers follow the upstream schema; unknown fields are skipped by prost.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<PieceProto>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PieceProto {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// NORMAL=1 (default), UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6.
    #[prost(int32, optional, tag = "3")]
    pub r#type: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrainerSpec {
    /// UNIGRAM=1 (default), BPE=2, WORD=3, CHAR=4.
    #[prost(int32, optional, tag = "3")]
    pub model_type: Option<i32>,
    #[prost(bool, optional, tag = "35")]
    pub byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    pub unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41")]
    pub bos_id: Option<i32>,
    #[prost(int32, optional, tag = "42")]
    pub eos_id: Option<i32>,
    #[prost(int32, optional, tag = "43")]
    pub pad_id: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    pub add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    pub escape_whitespaces: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceKind {
    fn from_proto(value: Option<i32>) -> Option<Self> {
        Some(match value.unwrap_or(1) {
            1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => return None,
        })
    }
}

/// A validated sentencepiece BPE model: pieces in id order and the settings that matter.
#[derive(Clone, Debug)]
pub struct SpmModel {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub kinds: Vec<PieceKind>,
    pub unk_id: u32,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_dummy_prefix: bool,
    /// Strip leading/trailing spaces and collapse runs of spaces (tok512 has it; Llama does not).
    pub remove_extra_whitespaces: bool,
}

impl SpmModel {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(&bytes, path)
    }

    /// `path` is only used to name the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.is_empty() {
            return Err(TokenizerError::invalid(path, KIND, "the file is empty"));
        }
        let proto = ModelProto::decode(bytes).map_err(|e| {
            TokenizerError::invalid(path, KIND, format!("protobuf decoding failed ({e}); the file is truncated or not a tokenizer.model"))
        })?;
        Self::from_proto(proto, path)
    }

    fn from_proto(proto: ModelProto, path: &Path) -> Result<Self> {
        let bad = |reason: String| TokenizerError::invalid(path, KIND, reason);
        if proto.pieces.is_empty() {
            return Err(bad("it holds no pieces".into()));
        }
        let trainer = proto.trainer_spec.clone().unwrap_or_default();
        let model_type = trainer.model_type.unwrap_or(1);
        if model_type != 2 {
            let name = match model_type { 1 => "unigram", 3 => "word", 4 => "char", _ => "unknown" };
            return Err(bad(format!("model type is {name} ({model_type}); only BPE models (Llama, Code Llama) are supported")));
        }
        if !trainer.byte_fallback.unwrap_or(false) {
            return Err(bad("byte_fallback is off; Llama-family tokenizers use byte fallback".into()));
        }
        let norm = proto.normalizer_spec.clone().unwrap_or_default();
        let norm_name = norm.name.clone().unwrap_or_else(|| "identity".into());
        let has_charsmap = norm.precompiled_charsmap.as_ref().is_some_and(|m| !m.is_empty());
        if norm_name != "identity" || has_charsmap {
            return Err(bad(format!("normalizer '{norm_name}' is not supported; only the identity normalizer (Llama, Code Llama) is")));
        }
        if !norm.escape_whitespaces.unwrap_or(true) {
            return Err(bad("escape_whitespaces is off; spaces must map to '▁'".into()));
        }

        let n = proto.pieces.len();
        let mut pieces = Vec::with_capacity(n);
        let mut scores = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut seen: AHashMap<&str, usize> = AHashMap::with_capacity(n);
        for (id, p) in proto.pieces.iter().enumerate() {
            let piece = p.piece.as_deref().unwrap_or("");
            if piece.is_empty() {
                return Err(bad(format!("piece {id} is empty")));
            }
            if let Some(first) = seen.insert(piece, id) {
                return Err(bad(format!("piece {piece:?} appears twice (ids {first} and {id})")));
            }
            let kind = PieceKind::from_proto(p.r#type)
                .ok_or_else(|| bad(format!("piece {id} has an unknown type {:?}", p.r#type)))?;
            let score = p.score.unwrap_or(0.0);
            if !score.is_finite() {
                return Err(bad(format!("piece {id} ({piece:?}) has a non-finite score {score}")));
            }
            pieces.push(piece.to_string());
            scores.push(score);
            kinds.push(kind);
        }
        let id_in_range = |name: &str, v: i32| -> Result<Option<u32>> {
            if v < 0 {
                return Ok(None);
            }
            if (v as usize) < n { Ok(Some(v as u32)) } else { Err(bad(format!("{name} {v} is outside the {n} pieces"))) }
        };
        let unk_id = id_in_range("unk_id", trainer.unk_id.unwrap_or(0))?
            .ok_or_else(|| bad("the model has no unknown piece".into()))?;
        if kinds[unk_id as usize] != PieceKind::Unknown {
            return Err(bad(format!("unk_id {unk_id} is not an UNKNOWN piece")));
        }
        let bos_id = id_in_range("bos_id", trainer.bos_id.unwrap_or(1))?;
        let eos_id = id_in_range("eos_id", trainer.eos_id.unwrap_or(2))?;
        // Byte fallback needs all 256 byte pieces; a model without them cannot encode arbitrary text.
        let n_bytes = kinds.iter().filter(|k| **k == PieceKind::Byte).count();
        if n_bytes != 256 {
            return Err(bad(format!("byte_fallback is on but the model has {n_bytes} byte pieces instead of 256")));
        }
        Ok(SpmModel {
            pieces,
            scores,
            kinds,
            unk_id,
            bos_id,
            eos_id,
            add_dummy_prefix: norm.add_dummy_prefix.unwrap_or(true),
            remove_extra_whitespaces: norm.remove_extra_whitespaces.unwrap_or(true),
        })
    }

    /// piece → id, for every piece.
    pub fn vocab(&self) -> AHashMap<String, u32> {
        self.pieces.iter().enumerate().map(|(i, p)| (p.clone(), i as u32)).collect()
    }

    /// BPE merges in priority order: every split `a + b` of a piece where both halves are pieces,
    /// ordered by the merged piece's score (highest first; stable, so equal scores keep id order),
    /// and within one piece by (id of a, id of b). This is the Hugging Face converter's rule, which
    /// makes the merges list equal to the one in the hub `tokenizer.json`.
    pub fn merges(&self) -> Vec<(String, String)> {
        let vocab = self.vocab();
        let mut merges: Vec<(u32, u32, f32)> = Vec::new();
        let mut local: Vec<(u32, u32, f32)> = Vec::new();
        for (id, piece) in self.pieces.iter().enumerate() {
            local.clear();
            for (split, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(split);
                if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                    local.push((li, ri, self.scores[id]));
                }
            }
            local.sort_by_key(|&(l, r, _)| (l, r));
            merges.extend_from_slice(&local);
        }
        // Stable sort: ties keep the piece-id order above.
        merges.sort_by(|a, b| b.2.partial_cmp(&a.2).expect("scores are finite"));
        merges
            .into_iter()
            .map(|(l, r, _)| (self.pieces[l as usize].clone(), self.pieces[r as usize].clone()))
            .collect()
    }
}
