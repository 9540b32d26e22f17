//! A fixed-size bitset over token ids: the mask handed to the sampler.

/// One bit per token id; set means allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBitset {
    words: Vec<u64>,
    len: usize,
}

impl TokenBitset {
    /// All clear, `len` bits.
    pub fn new(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(64)], len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn set(&mut self, i: u32) {
        self.words[i as usize / 64] |= 1 << (i % 64);
    }
    pub fn unset(&mut self, i: u32) {
        self.words[i as usize / 64] &= !(1 << (i % 64));
    }
    pub fn contains(&self, i: u32) -> bool {
        (i as usize) < self.len && self.words[i as usize / 64] & (1 << (i % 64)) != 0
    }
    pub fn clear(&mut self) {
        self.words.fill(0);
    }
    /// Copies `other` (same length) into `self`.
    pub fn copy_from(&mut self, other: &TokenBitset) {
        self.words.copy_from_slice(&other.words);
    }
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// Set bits in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let b = w.trailing_zeros();
                    w &= w - 1;
                    (wi * 64) as u32 + b
                })
            })
        })
    }
    /// The raw words (bit `i` of word `i / 64`), for turning into a tensor.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
}
