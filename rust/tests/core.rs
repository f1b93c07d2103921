//! Core tests against the real tokenizer files in the project's shared data (no Python needed).

use std::path::{Path, PathBuf};

use codellama_fast::{split_fill_marker, CodeLlamaTokenizer, NewToken, SpecialTokenMode, SpmModel, TokenizerError};

/// CODELLAMA_FAST_SHARED (set by `make test`), else the `shared` folder beside the checkout.
fn shared(rel: &str) -> PathBuf {
    let root = std::env::var_os("CODELLAMA_FAST_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let p = root.join(rel);
    assert!(p.exists(), "{} is missing: the tests need the project's shared data beside the checkout", p.display());
    p
}

fn from_json() -> CodeLlamaTokenizer {
    CodeLlamaTokenizer::from_json_file(&shared("tokenizers/codellama/tokenizer.json")).unwrap()
}

fn from_model() -> CodeLlamaTokenizer {
    CodeLlamaTokenizer::from_spm_file(&shared("tokenizers/codellama/tokenizer.model")).unwrap()
}

fn ids(v: &[u32]) -> Vec<u32> {
    v.to_vec()
}

#[test]
fn model_merges_equal_hub_json_merges() {
    // The hub file's merges are the independent reference for our score-ordered merge builder.
    let spm = SpmModel::from_file(&shared("tokenizers/codellama/tokenizer.model")).unwrap();
    let text = std::fs::read_to_string(shared("tokenizers/codellama/tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hub: Vec<(String, String)> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => {
                let (a, b) = s.split_once(' ').unwrap();
                (a.to_string(), b.to_string())
            }
            serde_json::Value::Array(a) => (a[0].as_str().unwrap().into(), a[1].as_str().unwrap().into()),
            _ => panic!("unexpected merge {m}"),
        })
        .collect();
    let ours = spm.merges();
    assert_eq!(ours.len(), hub.len());
    assert_eq!(ours, hub);
    assert_eq!(spm.pieces.len(), 32016);
}

#[test]
fn spec_examples_encode() {
    for tok in [from_json(), from_model()] {
        let enc = |s: &str| tok.encode(s, SpecialTokenMode::Match, true).unwrap();
        assert_eq!(enc(" Hello"), ids(&[1, 29871, 15043]));
        assert_eq!(enc("\r"), ids(&[1, 6756]));
        assert_eq!(enc("a\rb"), ids(&[1, 263, 30004, 29890]));
        assert_eq!(enc(" <PRE>"), ids(&[1, 29871, 32007]));
        assert_eq!(enc(""), ids(&[1]));
        // Special tokens in text: matched, and the following span gets its own dummy prefix.
        assert_eq!(&enc("<s>[INST]")[..3], &[1, 1, 518]);
        // Plain mode never produces a special id from text.
        let plain = tok.encode("<s>", SpecialTokenMode::Plain, false).unwrap();
        assert!(!plain.contains(&1), "{plain:?}");
        assert_eq!(tok.vocab_size(), 32016);
    }
}

#[test]
fn meta_infilling_example() {
    let tok = from_model();
    let prefix = "def remove_non_ascii(s: str) -> str:\n    \"\"\" ";
    let suffix = "\n    return result\n";
    let expected: Vec<u32> = "1 32007 822 3349 29918 5464 29918 294 18869 29898 29879 29901 851 29897 1599 851 29901 13 1678 9995 29871 32008 13 1678 736 1121 13 32009"
        .split(' ')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(tok.encode_infill(prefix, suffix, false, true).unwrap(), expected);
    // Empty suffix still emits every sentinel.
    assert_eq!(tok.encode_infill("a", "", false, true).unwrap(), ids(&[1, 32007, 263, 32008, 32009]));
}

#[test]
fn fill_marker_split() {
    assert_eq!(split_fill_marker("a<FILL_ME>b").unwrap(), Some(("a", "b")));
    assert_eq!(split_fill_marker("ab").unwrap(), None);
    assert!(matches!(split_fill_marker("<FILL_ME><FILL_ME>"), Err(TokenizerError::InvalidInput(_))));
}

#[test]
fn llama2_and_tok512_load_without_infilling() {
    let l2 = CodeLlamaTokenizer::from_spm_file(&shared("tokenizers/llama2/tokenizer.model")).unwrap();
    assert_eq!(l2.vocab_size(), 32000);
    assert!(l2.special_ids().infilling().is_none());
    assert!(matches!(l2.encode_infill("a", "b", false, true), Err(TokenizerError::NoInfilling)));
    let t512 = CodeLlamaTokenizer::from_spm_file(&shared("models/stories260K/tok512.model")).unwrap();
    assert_eq!(t512.vocab_size(), 512);
    let e = t512.encode("Once upon a time", SpecialTokenMode::Match, true).unwrap();
    let back = t512.decode(&e.iter().map(|&i| i as i64).collect::<Vec<_>>(), true).unwrap();
    assert_eq!(back, "Once upon a time");
}

#[test]
fn decode_round_trip_and_bytes() {
    let tok = from_json();
    for s in ["def f(x):\n\treturn x  # ☺ 日本語 🦙", "  leading", "\u{0}\r\n", "é"] {
        let e: Vec<i64> = tok.encode(s, SpecialTokenMode::Plain, true).unwrap().into_iter().map(i64::from).collect();
        assert_eq!(tok.decode(&e, true).unwrap(), s);
    }
    // An incomplete UTF-8 sequence (first two bytes of '€' = E2 82 AC) gives one U+FFFD per byte.
    let e2 = tok.piece_to_id("<0xE2>").unwrap() as i64;
    let x82 = tok.piece_to_id("<0x82>").unwrap() as i64;
    assert_eq!(tok.decode(&[e2, x82], false).unwrap(), "\u{FFFD}\u{FFFD}");
    assert!(matches!(tok.decode(&[40000], false), Err(TokenizerError::IdOutOfRange { .. })));
    assert!(matches!(tok.decode(&[-1], false), Err(TokenizerError::IdOutOfRange { .. })));
    assert_eq!(tok.decode(&[1, 15043], false).unwrap(), "<s> Hello");
    assert_eq!(tok.decode(&[1, 15043], true).unwrap(), "Hello");
}

#[test]
fn post_processor_follows_flags() {
    let tok = from_json();
    tok.update_post_processor(false, true).unwrap();
    assert_eq!(tok.encode("Hello", SpecialTokenMode::Match, true).unwrap(), ids(&[15043, 2]));
    let json = tok.to_json();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let post = parsed["post_processor"].to_string();
    assert!(!post.contains("<s>") && post.contains("</s>"), "{post}");
    tok.update_post_processor(true, true).unwrap();
    assert_eq!(tok.encode("Hello", SpecialTokenMode::Match, true).unwrap(), ids(&[1, 15043, 2]));
    assert_eq!(tok.encode("Hello", SpecialTokenMode::Match, false).unwrap(), ids(&[15043]));
}

#[test]
fn bad_files_give_errors_not_panics() {
    let dir = std::env::temp_dir().join(format!("clf-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = std::fs::read(shared("tokenizers/codellama/tokenizer.model")).unwrap();
    let json = std::fs::read(shared("tokenizers/codellama/tokenizer.json")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.model", vec![]),
        ("truncated.model", model[..model.len() / 2].to_vec()),
        ("random.model", (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()),
        ("empty.json", vec![]),
        ("truncated.json", json[..json.len() / 3].to_vec()),
        ("wrong.json", b"{\"model\": {\"type\": \"WordPiece\"}}".to_vec()),
        ("list.json", b"[1, 2, 3]".to_vec()),
    ];
    for (name, bytes) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let res = if name.ends_with(".model") {
            CodeLlamaTokenizer::from_spm_file(&p)
        } else {
            CodeLlamaTokenizer::from_json_file(&p)
        };
        match res {
            Err(TokenizerError::InvalidFile { path, .. }) => assert_eq!(path, p),
            Err(e) => panic!("{name}: unexpected error kind {e}"),
            Ok(_) => panic!("{name}: loaded a bad file"),
        }
    }
    assert!(matches!(
        CodeLlamaTokenizer::from_spm_file(&dir.join("missing.model")),
        Err(TokenizerError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn added_tokens_split_raw_and_normalized_text() {
    // A special token is found in the raw text; a plain one where the normalized text (spaces as
    // "▁", the dummy prefix included) reads "▁<foo>". Between them, the base encoder's ids.
    let base = from_json();
    let (tok, added) = base
        .with_added_tokens(&[NewToken::new("<pad>", true, false), NewToken::new("<foo>", false, true), NewToken::new("▁Hello", false, true)])
        .unwrap();
    assert_eq!(added, 2, "▁Hello is already a piece");
    assert_eq!(tok.vocab_size(), base.vocab_size() + 2);
    let (pad, foo) = (base.vocab_size() as u32, base.vocab_size() as u32 + 1);
    let text = |s: &str, dummy: bool| {
        let mut out = Vec::new();
        base.encode_text(s, dummy, &mut out).unwrap();
        out
    };
    let enc = |s: &str| tok.encode(s, SpecialTokenMode::Match, false).unwrap();
    // "x <foo> y<pad>z": raw split at <pad>; "▁x▁<foo>▁y" splits at "▁<foo>"; "z" gets its own prefix
    let want: Vec<u32> = [text("x", true), vec![foo], text("y", true), vec![pad], text("z", true)].concat();
    assert_eq!(enc("x <foo> y<pad>z"), want);
    // no "▁" before it in the normalized text: not the added token
    assert_eq!(enc("a<foo>b"), text("a<foo>b", true));
    assert_eq!(enc("<foo>"), vec![foo]);
    // plain text mode and infilling keep added tokens as text
    assert_eq!(tok.encode("<pad> <foo>", SpecialTokenMode::Plain, false).unwrap(), text("<pad> <foo>", true));
    // decoding gives the contents; skip_special_tokens drops only the special one
    let ids: Vec<i64> = want.iter().map(|&i| i as i64).collect();
    assert_eq!(tok.decode(&ids, false).unwrap(), "x<foo> y<pad> z");
    assert_eq!(tok.decode(&ids, true).unwrap(), "x<foo> y z");
    // offsets agree with the ids and point at the token's characters
    let (oids, offs) = tok.encode_with_offsets("x <foo> y<pad>z", SpecialTokenMode::Match, false).unwrap();
    assert_eq!(oids, want);
    assert_eq!(offs[oids.iter().position(|&i| i == foo).unwrap()], (1, 7));
    assert_eq!(offs[oids.iter().position(|&i| i == pad).unwrap()], (9, 14));
    // the hub JSON carries them, and reloads to the same tokenizer
    let again = CodeLlamaTokenizer::from_json_str(&tok.to_json(), Path::new("<memory>")).unwrap();
    assert_eq!(again.encode("x <foo> y<pad>z", SpecialTokenMode::Match, false).unwrap(), want);
    assert_eq!(again.added_pieces(), tok.added_pieces());
}

#[test]
fn added_token_flags_take_whitespace_and_words_as_tokenizers_does() {
    // lstrip/rstrip: the whitespace on that side becomes part of the token (gone from the text
    // around it); single_word: no match next to a word character, the text stays text.
    use codellama_fast::MatchFlags;
    let base = from_json();
    let flag = |content: &str, lstrip, rstrip, single_word| NewToken {
        flags: MatchFlags { lstrip, rstrip, single_word },
        ..NewToken::new(content, false, false)
    };
    let (tok, _) = base
        .with_added_tokens(&[flag("<L>", true, false, false), flag("<R>", false, true, false), flag("<W>", false, false, true)])
        .unwrap();
    let n = base.vocab_size() as u32;
    let (l, r, w) = (n, n + 1, n + 2);
    let text = |s: &str| {
        let mut out = Vec::new();
        base.encode_text(s, true, &mut out).unwrap();
        out
    };
    let enc = |s: &str| tok.encode(s, SpecialTokenMode::Match, false).unwrap();
    assert_eq!(enc("a \t <L> b"), [text("a"), vec![l], text(" b")].concat());
    assert_eq!(enc("a <R> \n b"), [text("a "), vec![r], text("b")].concat());
    assert_eq!(enc("a <W> b"), [text("a "), vec![w], text(" b")].concat());
    assert_eq!(enc("a<W> b"), text("a<W> b"));
    assert_eq!(enc("a <W>_"), text("a <W>_"));
    assert_eq!(enc("<W>"), vec![w]);
    // the offsets of a token cover the whitespace it took
    let (ids, offs) = tok.encode_with_offsets("a  <L>", SpecialTokenMode::Match, false).unwrap();
    assert_eq!(ids.last(), Some(&l));
    assert_eq!(offs.last(), Some(&(1, 6)));
    // the flags travel through the hub JSON
    let again = CodeLlamaTokenizer::from_json_str(&tok.to_json(), Path::new("<memory>")).unwrap();
    assert_eq!(again.added_pieces(), tok.added_pieces());
    assert_eq!(again.encode("a \t <L> b", SpecialTokenMode::Match, false).unwrap(), enc("a \t <L> b"));
}
