//! BPE for short chunks without allocations per token: the same merge rule as the `tokenizers`
//! crate (repeatedly join the adjacent pair with the lowest merge rank, the leftmost on ties), on a
//! small vector of ids. Long chunks go to the crate's heap-based BPE; tests compare both paths.

use ahash::AHashMap;

/// Chunks with more symbols than this use the `tokenizers` BPE (O(n log n) instead of O(n^2)).
pub const MAX_SMALL_SYMBOLS: usize = 64;

#[derive(Clone, Debug)]
pub struct MergeTable {
    char_ids: AHashMap<char, u32>,
    byte_ids: [u32; 256],
    /// (left id << 32 | right id) -> (rank, merged id)
    merges: AHashMap<u64, (u32, u32)>,
}

impl MergeTable {
    /// `None` when some merge names a piece missing from the vocabulary.
    pub fn new(vocab: &AHashMap<String, u32>, merges: &[(String, String)], byte_ids: [u32; 256]) -> Option<Self> {
        let mut char_ids = AHashMap::new();
        for (piece, &id) in vocab {
            let mut chars = piece.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                char_ids.insert(c, id);
            }
        }
        let mut table = AHashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let (ia, ib) = (*vocab.get(a)?, *vocab.get(b)?);
            let merged = *vocab.get(&format!("{a}{b}"))?;
            table.entry(((ia as u64) << 32) | ib as u64).or_insert((rank as u32, merged));
        }
        Some(MergeTable { char_ids, byte_ids, merges: table })
    }

    /// Ids of `chunk` appended to `out`; false (nothing appended) when the chunk is too long.
    pub fn encode(&self, chunk: &str, out: &mut Vec<u32>) -> bool {
        let mut sym: Vec<u32> = Vec::with_capacity(chunk.len());
        for ch in chunk.chars() {
            match self.char_ids.get(&ch) {
                Some(&id) => sym.push(id),
                None => {
                    let mut buf = [0u8; 4];
                    sym.extend(ch.encode_utf8(&mut buf).bytes().map(|b| self.byte_ids[b as usize]));
                }
            }
            if sym.len() > MAX_SMALL_SYMBOLS {
                return false;
            }
        }
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..sym.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(((sym[i] as u64) << 32) | sym[i + 1] as u64)) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            match best {
                Some((_, i, merged)) => {
                    sym[i] = merged;
                    sym.remove(i + 1);
                }
                None => break,
            }
        }
        out.extend_from_slice(&sym);
        true
    }
}
