//! The hub `tokenizer.json` layout: reading what it says about the dummy prefix, writing it for a
//! tokenizer built from `tokenizer.model`, and serializing the current post-processor.

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::processors::template::TemplateProcessing;

use crate::error::{Result, TokenizerError};
use crate::special::MatchFlags;
use crate::tokenizer::CodeLlamaTokenizer;

impl CodeLlamaTokenizer {
    /// The post-processor as the `tokenizers` crate's `TemplateProcessing` (for `tokenizer.json`).
    pub fn template_processing(&self) -> TemplateProcessing {
        let (add_bos, add_eos) = self.post_processor();
        let bos = self.special.bos.map(|id| (self.pieces[id as usize].clone(), id));
        let eos = self.special.eos.map(|id| (self.pieces[id as usize].clone(), id));
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut tokens = Vec::new();
        if let (true, Some((b, id))) = (add_bos, &bos) {
            single.push(format!("{b}:0"));
            tokens.push((b.clone(), *id));
        }
        single.push("$A:0".to_string());
        if let (true, Some((e, id))) = (add_eos, &eos) {
            single.push(format!("{e}:0"));
            tokens.push((e.clone(), *id));
        }
        pair.extend(single.iter().cloned());
        if let (true, Some((b, _))) = (add_bos, &bos) {
            pair.push(format!("{b}:1"));
        }
        pair.push("$B:1".to_string());
        if let (true, Some((e, _))) = (add_eos, &eos) {
            pair.push(format!("{e}:1"));
        }
        TemplateProcessing::builder()
            .try_single(single.join(" "))
            .expect("valid single template")
            .try_pair(pair.join(" "))
            .expect("valid pair template")
            .special_tokens(tokens)
            .build()
            .expect("template tokens are declared")
    }

    /// The whole tokenizer in the hub `tokenizer.json` layout, with the current post-processor.
    pub fn to_json(&self) -> String {
        let mut root = self.json_template.clone();
        let post = serde_json::to_value(self.template_processing()).expect("TemplateProcessing serializes");
        root["post_processor"] = post;
        serde_json::to_string_pretty(&root).expect("JSON values serialize")
    }
}

/// Whether a hub JSON adds sentencepiece's dummy prefix (legacy `Prepend("▁")` normalizer, or a
/// `Metaspace` pre-tokenizer whose prepend scheme is not "never").
pub(crate) fn json_adds_dummy_prefix(root: &Value) -> bool {
    fn has_prepend(v: &Value) -> bool {
        match v {
            Value::Object(o) => {
                (o.get("type").and_then(Value::as_str) == Some("Prepend"))
                    || o.get("normalizers").and_then(Value::as_array).is_some_and(|a| a.iter().any(has_prepend))
            }
            _ => false,
        }
    }
    fn metaspace_prepends(v: &Value) -> Option<bool> {
        let o = v.as_object()?;
        if o.get("type").and_then(Value::as_str) == Some("Metaspace") {
            return Some(o.get("prepend_scheme").and_then(Value::as_str).unwrap_or("always") != "never"
                && o.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true));
        }
        o.get("pretokenizers").and_then(Value::as_array)?.iter().find_map(metaspace_prepends)
    }
    if root.get("normalizer").is_some_and(has_prepend) {
        return true;
    }
    root.get("pre_tokenizer").and_then(metaspace_prepends).unwrap_or(false)
}

/// One `added_tokens` entry of a hub `tokenizer.json`.
pub(crate) fn added_token_entry(id: u32, content: &str, normalized: bool, special: bool, flags: MatchFlags) -> Value {
    serde_json::json!({"id": id, "content": content, "single_word": flags.single_word, "lstrip": flags.lstrip,
                       "rstrip": flags.rstrip, "normalized": normalized, "special": special})
}

/// The hub `tokenizer.json` layout (without post-processor) for a BPE built from a `tokenizer.model`.
pub(crate) fn hub_json_template(bpe: &BPE, specials: &[(String, u32)], dummy_prefix: bool) -> Result<Value> {
    let added: Vec<Value> = specials.iter().map(|(s, id)| added_token_entry(*id, s, false, true, MatchFlags::default())).collect();
    let mut normalizers = Vec::new();
    if dummy_prefix {
        normalizers.push(serde_json::json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut decoders = vec![
        serde_json::json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        serde_json::json!({"type": "ByteFallback"}),
        serde_json::json!({"type": "Fuse"}),
    ];
    if dummy_prefix {
        decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let model = serde_json::to_value(bpe).map_err(|e| TokenizerError::InvalidInput(format!("cannot serialize the BPE model: {e}")))?;
    Ok(serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": model,
    }))
}
