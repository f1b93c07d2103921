//! PyO3 glue only: argument conversion, GIL release around all tokenizer work, and the mapping
//! from `TokenizerError` to typed Python exceptions. Policy lives in the Python package.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::added::{AddedPiece, NewToken};
use crate::error::TokenizerError as CoreError;
use crate::infill::split_fill_marker;
use crate::parallel::map_ordered;
use crate::special::MatchFlags;
use crate::tokenizer::{CodeLlamaTokenizer, SpecialTokenMode};

create_exception!(codellama_fast, TokenizerError, PyValueError, "Base class of every tokenizer error (a ValueError).");
create_exception!(codellama_fast, InvalidTokenizerFile, TokenizerError, "A tokenizer file is corrupt, truncated or of the wrong kind.");
create_exception!(codellama_fast, TokenIdError, TokenizerError, "A token id is outside the vocabulary.");
create_exception!(codellama_fast, InfillingUnsupported, TokenizerError, "The vocabulary has no infilling pieces.");

fn to_py(err: CoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        CoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        CoreError::Io { .. } => PyOSError::new_err(msg),
        CoreError::InvalidFile { .. } => InvalidTokenizerFile::new_err(msg),
        CoreError::IdOutOfRange { .. } => TokenIdError::new_err(msg),
        CoreError::NoInfilling => InfillingUnsupported::new_err(msg),
        CoreError::InvalidInput(_) => TokenizerError::new_err(msg),
    }
}

fn mode_from(code: u8) -> PyResult<SpecialTokenMode> {
    Ok(match code {
        0 => SpecialTokenMode::Match,
        1 => SpecialTokenMode::MatchNoPrefix,
        2 => SpecialTokenMode::Plain,
        other => return Err(PyValueError::new_err(format!("unknown special-token mode {other}"))),
    })
}

/// One text of a batch: plain, or infilling (prefix, suffix) when it holds `<FILL_ME>` or a suffix.
#[derive(FromPyObject)]
enum BatchItem {
    Text(String),
    Infill(String, String),
}

#[pyclass(module = "codellama_fast._native", frozen)]
struct NativeTokenizer {
    inner: Arc<CodeLlamaTokenizer>,
    /// One Python int per id, made once: id lists are built by reference instead of allocating
    /// millions of int objects for a long document.
    ints: Arc<Vec<Py<PyAny>>>,
}

impl NativeTokenizer {
    fn wrap(py: Python<'_>, inner: CodeLlamaTokenizer) -> PyResult<Self> {
        let ints = (0..inner.vocab_size() as u64)
            .map(|i| Ok(i.into_pyobject(py)?.into_any().unbind()))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(NativeTokenizer { inner: Arc::new(inner), ints: Arc::new(ints) })
    }

    fn id_list<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, ids.iter().map(|&i| self.ints[i as usize].bind(py)))
    }
}

#[pymethods]
impl NativeTokenizer {
    #[staticmethod]
    fn from_json_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let t = py.detach(|| CodeLlamaTokenizer::from_json_file(&path)).map_err(to_py)?;
        Self::wrap(py, t)
    }

    #[staticmethod]
    fn from_spm_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let t = py.detach(|| CodeLlamaTokenizer::from_spm_file(&path)).map_err(to_py)?;
        Self::wrap(py, t)
    }

    #[staticmethod]
    fn from_json_str(py: Python<'_>, text: String, name: PathBuf) -> PyResult<Self> {
        let t = py.detach(|| CodeLlamaTokenizer::from_json_str(&text, &name)).map_err(to_py)?;
        Self::wrap(py, t)
    }

    /// An independent copy (own post-processor state).
    fn copy(&self) -> Self {
        NativeTokenizer { inner: Arc::new((*self.inner).clone()), ints: self.ints.clone() }
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn add_dummy_prefix(&self) -> bool {
        self.inner.add_dummy_prefix()
    }

    fn special_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.special_ids();
        let d = PyDict::new(py);
        d.set_item("unk", s.unk)?;
        d.set_item("bos", s.bos)?;
        d.set_item("eos", s.eos)?;
        d.set_item("prefix", s.prefix)?;
        d.set_item("suffix", s.suffix)?;
        d.set_item("middle", s.middle)?;
        d.set_item("eot", s.eot)?;
        Ok(d)
    }

    fn special_tokens(&self) -> Vec<(String, u32)> {
        self.inner.special_tokens()
    }

    /// The tokens past the sentencepiece vocabulary:
    /// (content, id, special, normalized, lstrip, rstrip, single_word).
    fn added_tokens(&self) -> Vec<(String, u32, bool, bool, bool, bool, bool)> {
        let row = |a: &AddedPiece| (a.content.clone(), a.id, a.special, a.normalized, a.flags.lstrip, a.flags.rstrip, a.flags.single_word);
        self.inner.added_pieces().iter().map(row).collect()
    }

    /// A new tokenizer with `tokens` ((content, special, normalized, lstrip, rstrip, single_word))
    /// added, and how many were new.
    fn with_added_tokens(&self, py: Python<'_>, tokens: Vec<(String, bool, bool, bool, bool, bool)>) -> PyResult<(Self, usize)> {
        let tokens: Vec<NewToken> = tokens
            .into_iter()
            .map(|(content, special, normalized, lstrip, rstrip, single_word)| NewToken {
                content,
                special,
                normalized,
                flags: MatchFlags { lstrip, rstrip, single_word },
            })
            .collect();
        // the copy keeps this tokenizer's BOS/EOS settings
        let (inner, added) = py.detach(|| self.inner.with_added_tokens(&tokens)).map_err(to_py)?;
        Ok((Self::wrap(py, inner)?, added))
    }

    fn is_special_id(&self, id: u32) -> bool {
        self.inner.is_special_id(id)
    }

    fn pieces(&self) -> Vec<String> {
        self.inner.pieces().to_vec()
    }

    fn id_to_piece(&self, id: i64) -> PyResult<String> {
        self.inner.id_to_piece(id).map(str::to_string).map_err(to_py)
    }

    fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.piece_to_id(piece)
    }

    fn update_post_processor(&self, add_bos: bool, add_eos: bool) -> PyResult<()> {
        self.inner.update_post_processor(add_bos, add_eos).map_err(to_py)
    }

    fn post_processor(&self) -> (bool, bool) {
        self.inner.post_processor()
    }

    fn to_json(&self, py: Python<'_>) -> String {
        py.detach(|| self.inner.to_json())
    }

    /// Ids of one text. `mode`: 0 match special tokens (hub), 1 HF slow legacy=False, 2 plain text.
    fn encode<'py>(&self, py: Python<'py>, text: &str, mode: u8, add_special_tokens: bool) -> PyResult<Bound<'py, PyList>> {
        let mode = mode_from(mode)?;
        let ids = py.detach(|| self.inner.encode(text, mode, add_special_tokens)).map_err(to_py)?;
        self.id_list(py, &ids)
    }

    /// (ids, character offsets) of one text; the ids equal `encode`'s.
    fn encode_with_offsets(&self, py: Python<'_>, text: &str, mode: u8, add_special_tokens: bool) -> PyResult<(Vec<u32>, Vec<(usize, usize)>)> {
        let mode = mode_from(mode)?;
        py.detach(|| self.inner.encode_with_offsets(text, mode, add_special_tokens)).map_err(to_py)
    }

    /// Ids of plain text, with or without sentencepiece's dummy prefix, no BOS/EOS.
    fn encode_text<'py>(&self, py: Python<'py>, text: &str, dummy_prefix: bool) -> PyResult<Bound<'py, PyList>> {
        let ids = py
            .detach(|| {
                let mut out = Vec::new();
                self.inner.encode_text(text, dummy_prefix, &mut out).map(|_| out)
            })
            .map_err(to_py)?;
        self.id_list(py, &ids)
    }

    /// The unsplit reference encoder (one BPE pass, no chunking or cache): for tests.
    fn encode_text_unsplit(&self, py: Python<'_>, text: &str, dummy_prefix: bool) -> PyResult<Vec<u32>> {
        py.detach(|| self.inner.encode_text_unsplit(text, dummy_prefix)).map_err(to_py)
    }

    fn encode_infill<'py>(&self, py: Python<'py>, prefix: &str, suffix: &str, suffix_first: bool, add_bos: bool) -> PyResult<Bound<'py, PyList>> {
        let ids = py.detach(|| self.inner.encode_infill(prefix, suffix, suffix_first, add_bos)).map_err(to_py)?;
        self.id_list(py, &ids)
    }

    /// Ids of many texts in parallel. An item is a `str` (plain or with one `<FILL_ME>` when
    /// `infill_marker`) or a `(prefix, suffix)` pair for infilling.
    #[pyo3(signature = (items, mode, add_special_tokens, infill_marker, suffix_first))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        items: Vec<BatchItem>,
        mode: u8,
        add_special_tokens: bool,
        infill_marker: bool,
        suffix_first: bool,
    ) -> PyResult<Vec<Bound<'py, PyList>>> {
        let mode = mode_from(mode)?;
        let tok = &*self.inner;
        let add_bos = add_special_tokens && tok.post_processor().0;
        let results = py.detach(|| {
            map_ordered(&items, |item| match item {
                BatchItem::Infill(p, s) => tok.encode_infill(p, s, suffix_first, add_bos),
                BatchItem::Text(t) if infill_marker => match split_fill_marker(t)? {
                    Some((p, s)) => tok.encode_infill(p, s, suffix_first, add_bos),
                    None => tok.encode(t, mode, add_special_tokens),
                },
                BatchItem::Text(t) => tok.encode(t, mode, add_special_tokens),
            })
        });
        let rows = results.into_iter().collect::<Result<Vec<_>, _>>().map_err(to_py)?;
        rows.iter().map(|ids| self.id_list(py, ids)).collect()
    }

    /// Many texts to a padded `[batch, length]` int64 id matrix and its attention mask, without
    /// Python objects per token. `length` = longest text, or `max_length` when padding to it.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (texts, mode, add_special_tokens, pad_id, pad_left, max_length, pad_to_max))]
    fn encode_batch_padded<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        mode: u8,
        add_special_tokens: bool,
        pad_id: i64,
        pad_left: bool,
        max_length: Option<usize>,
        pad_to_max: bool,
    ) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<i64>>)> {
        let mode = mode_from(mode)?;
        let tok = &*self.inner;
        let encoded = py.detach(|| map_ordered(&texts, |t| tok.encode(t, mode, add_special_tokens)));
        let mut encoded = encoded.into_iter().collect::<Result<Vec<_>, _>>().map_err(to_py)?;
        if let Some(m) = max_length {
            for ids in encoded.iter_mut() {
                ids.truncate(m);
            }
        }
        let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
        let width = match (pad_to_max, max_length) {
            (true, Some(m)) => m,
            _ => longest,
        };
        let rows = encoded.len();
        let (ids, mask) = py.detach(|| {
            let mut ids = vec![pad_id; rows * width];
            let mut mask = vec![0i64; rows * width];
            for (r, row) in encoded.iter().enumerate() {
                let start = if pad_left { width - row.len() } else { 0 };
                let base = r * width + start;
                for (j, &id) in row.iter().enumerate() {
                    ids[base + j] = id as i64;
                    mask[base + j] = 1;
                }
            }
            (ids, mask)
        });
        let ids = PyArray1::from_vec(py, ids).reshape([rows, width])?;
        let mask = PyArray1::from_vec(py, mask).reshape([rows, width])?;
        Ok((ids, mask))
    }

    fn decode(&self, py: Python<'_>, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        py.detach(|| self.inner.decode(&ids, skip_special_tokens)).map_err(to_py)
    }

    /// Decoded text without removing the leading space (Meta's `decode_infilling`, streaming).
    fn decode_keep_space(&self, py: Python<'_>, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        py.detach(|| {
            let mut out = String::new();
            self.inner.decode_into(&ids, skip_special_tokens, &mut out).map(|_| out)
        })
        .map_err(to_py)
    }

    fn decode_batch(&self, py: Python<'_>, batch: Vec<Vec<i64>>, skip_special_tokens: bool) -> PyResult<Vec<String>> {
        let tok = &*self.inner;
        let out = py.detach(|| map_ordered(&batch, |ids| tok.decode(ids, skip_special_tokens)));
        out.into_iter().collect::<Result<Vec<_>, _>>().map_err(to_py)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<NativeTokenizer>()?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("InvalidTokenizerFile", py.get_type::<InvalidTokenizerFile>())?;
    m.add("TokenIdError", py.get_type::<TokenIdError>())?;
    m.add("InfillingUnsupported", py.get_type::<InfillingUnsupported>())?;
    m.add("FILL_MARKER", crate::infill::FILL_MARKER)?;
    Ok(())
}
