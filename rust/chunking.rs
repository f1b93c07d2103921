//! Exact pre-splitting for fast BPE.
//!
//! BPE only ever joins adjacent symbols into a vocabulary piece, so a token can span the boundary
//! between two characters `x y` only if some piece formed by a merge contains the bigram `xy`.
//! Where no merge product contains it, the two sides are tokenized independently and give the same
//! ids as the whole. Such boundaries are everywhere in code (before a word's `▁`, around newlines
//! and tabs, which no piece contains), so a document becomes many short chunks, most of them
//! repeated, which a small per-thread cache serves. `tests/test_tokenizer_speedups.py` checks the
//! rule against the unsplit encoder and sentencepiece.

use std::cell::RefCell;

use ahash::{AHashMap, AHashSet};

const SPACE_MARK: char = '▁';
/// Chunks longer than this (bytes) are encoded directly, never cached.
pub const MAX_CACHED_CHUNK: usize = 96;
/// Entries per generation, thread and tokenizer (bounded memory: at most 2 × 96K chunks of
/// <= 96 bytes each, ~30 MB).
pub const CACHE_ENTRIES: usize = 96 * 1024;

/// Bigrams that occur inside some merge product.
#[derive(Clone, Debug)]
pub struct JoinableBigrams {
    /// dense table over ASCII + `▁` (index 128): joinable[x * 129 + y]
    dense: Vec<bool>,
    other: AHashSet<(char, char)>,
}

fn dense_index(c: char) -> Option<usize> {
    if (c as u32) < 128 {
        Some(c as usize)
    } else if c == SPACE_MARK {
        Some(128)
    } else {
        None
    }
}

impl JoinableBigrams {
    pub fn from_merges<'a>(merges: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut dense = vec![false; 129 * 129];
        let mut other = AHashSet::new();
        for (a, b) in merges {
            let product: Vec<char> = a.chars().chain(b.chars()).collect();
            for w in product.windows(2) {
                match (dense_index(w[0]), dense_index(w[1])) {
                    (Some(x), Some(y)) => dense[x * 129 + y] = true,
                    _ => {
                        other.insert((w[0], w[1]));
                    }
                }
            }
        }
        JoinableBigrams { dense, other }
    }

    #[inline]
    pub fn joinable(&self, x: char, y: char) -> bool {
        match (dense_index(x), dense_index(y)) {
            (Some(i), Some(j)) => self.dense[i * 129 + j],
            _ => self.other.contains(&(x, y)),
        }
    }

    /// Byte ranges of the independent chunks of a normalized string.
    pub fn chunks<'a>(&self, s: &'a str) -> ChunkIter<'a, '_> {
        ChunkIter { s, pos: 0, rules: self }
    }
}

pub struct ChunkIter<'a, 'b> {
    s: &'a str,
    pos: usize,
    rules: &'b JoinableBigrams,
}

impl<'a> Iterator for ChunkIter<'a, '_> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.pos >= self.s.len() {
            return None;
        }
        let rest = &self.s[self.pos..];
        let mut chars = rest.char_indices();
        let (_, mut prev) = chars.next().expect("non-empty");
        let mut end = rest.len();
        for (i, c) in chars {
            if !self.rules.joinable(prev, c) {
                end = i;
                break;
            }
            prev = c;
        }
        self.pos += end;
        Some(&rest[..end])
    }
}

type ChunkMap = AHashMap<Box<str>, Box<[u32]>>;

/// Two generations: new entries go to `young`; when it is full, the old generation is dropped and
/// `young` becomes `old`. Entries used in both generations survive a turnover, so a long document
/// keeps its frequent chunks while memory stays bounded (2 × CACHE_ENTRIES).
#[derive(Default)]
struct ChunkCache {
    young: ChunkMap,
    old: ChunkMap,
}

/// Tokenizers a thread keeps caches for at once (more evicts them all: memory stays bounded).
const OWNERS_PER_THREAD: usize = 4;

thread_local! {
    static CACHES: RefCell<Vec<(usize, ChunkCache)>> = const { RefCell::new(Vec::new()) };
}

/// Ids of a chunk from this thread's cache for tokenizer `owner`, computing them with `encode` on
/// a miss.
pub fn cached_chunk(owner: usize, chunk: &str, out: &mut Vec<u32>, encode: impl FnOnce(&str, &mut Vec<u32>)) {
    if chunk.len() > MAX_CACHED_CHUNK {
        encode(chunk, out);
        return;
    }
    CACHES.with(|cell| {
        let mut caches = cell.borrow_mut();
        let slot = match caches.iter().position(|(who, _)| *who == owner) {
            Some(i) => i,
            None => {
                if caches.len() >= OWNERS_PER_THREAD {
                    caches.clear();
                }
                caches.push((owner, ChunkCache::default()));
                caches.len() - 1
            }
        };
        let cache = &mut caches[slot].1;
        if let Some(ids) = cache.young.get(chunk) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        if let Some((key, ids)) = cache.old.remove_entry(chunk) {
            out.extend_from_slice(&ids);
            insert(cache, key, ids);
            return;
        }
        encode(chunk, out);
        insert(cache, chunk.into(), out[start..].into());
    });
}

fn insert(cache: &mut ChunkCache, key: Box<str>, ids: Box<[u32]>) {
    if cache.young.len() >= CACHE_ENTRIES {
        cache.old = std::mem::take(&mut cache.young);
    }
    cache.young.insert(key, ids);
}
