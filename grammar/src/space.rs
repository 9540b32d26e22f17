//! The vocabulary as masks see it: the token trie, and the tokens sorted by the kind of text they are made of,
//! so that a state looping on some kind of text can take all those tokens at once.

use std::sync::Arc;

use crate::bitset::TokenBitset;
use crate::trie::TokenTrie;
use crate::vocab::Vocabulary;

/// A vocabulary and its trie, built once per tokenizer and shared by every grammar over it.
#[derive(Debug)]
pub struct TokenSpace {
    pub vocab: Vocabulary,
    pub trie: TokenTrie,
    /// Tokens of [`is_plain`] bytes (three quarters of Llama 3's vocabulary).
    pub(crate) plain: KindTokens,
    /// Tokens of whole UTF-8 characters but `"`, `\`, controls and U+2028/2029 (all but 5% of Llama 3's).
    pub(crate) text: KindTokens,
    /// Per plain ASCII byte: the tokens of `text` that contain it.
    pub(crate) containing: Vec<Vec<u32>>,
}

/// The tokens of one kind of text, which a state looping on that kind reads back to itself.
#[derive(Debug)]
pub(crate) struct KindTokens {
    pub(crate) kind: Loop,
    /// Tokens all of this kind, by id.
    pub(crate) set: TokenBitset,
    /// The trie of the others.
    pub(crate) rest: TokenTrie,
    /// Per position in the full trie's `token_ids` (depth-first order): the first offset from which the token's
    /// bytes are all of this kind (`u8::MAX` when past 254: unknown, the token is walked).
    pub(crate) from: Vec<u8>,
    /// The positions where `from` is 0 (the whole token), as a bitset.
    pub(crate) whole: Vec<u64>,
    /// Per position: where the token's leading run of this kind ends (at most 255), and its bytes from there,
    /// `tail_bytes[tails[p]..tails[p + 1]]` (empty for whole tokens).
    pub(crate) run_end: Vec<u8>,
    pub(crate) tails: Vec<u32>,
    pub(crate) tail_bytes: Vec<u8>,
    /// Per position: characters in that leading run (at most 255).
    pub(crate) run_chars: Vec<u8>,
    /// `upto[c]`: the tokens all of this kind with at most `c` characters, for `c` up to [`UPTO`]; `long`: the
    /// positions of those with more.
    pub(crate) upto: Vec<TokenBitset>,
    pub(crate) long: Vec<u32>,
    /// The most characters in a token all of this kind.
    pub(crate) max_chars: usize,
}

/// How far [`KindTokens::upto`] goes: Llama 3's text tokens have at most 16 characters but for a few hundred.
pub(crate) const UPTO: usize = 16;

/// Characters in `bytes`, a run of one kind (whole characters).
fn chars_in(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

/// The byte offset of character `n` in `bytes`, a run of whole characters at least that long.
pub(crate) fn char_offset(bytes: &[u8], n: usize) -> usize {
    let mut seen = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b & 0xC0 != 0x80 {
            if seen == n {
                return i;
            }
            seen += 1;
        }
    }
    bytes.len()
}

impl KindTokens {
    fn new(vocab: &Vocabulary, trie: &TokenTrie, kind: Loop) -> Self {
        let of_kind = |b: &[u8]| loop_run(b, kind) == b.len();
        let mut set = TokenBitset::new(vocab.len());
        for (id, _) in vocab.iter().filter(|(_, b)| of_kind(b)) {
            set.set(id);
        }
        let rest = TokenTrie::from_tokens(vocab.iter().filter(|(id, _)| !set.contains(*id)));
        let n = trie.token_ids.len();
        let (mut from, mut run_end) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut whole = vec![0u64; n.div_ceil(64)];
        let (mut tails, mut tail_bytes) = (Vec::with_capacity(n + 1), Vec::new());
        let mut run_chars = Vec::with_capacity(n);
        let mut upto = vec![TokenBitset::new(vocab.len()); UPTO + 1];
        let (mut long, mut max_chars) = (Vec::new(), 0);
        for (p, &t) in trie.token_ids.iter().enumerate() {
            let bytes = vocab.bytes(t).unwrap_or_default();
            let f = (0..=bytes.len()).find(|&k| of_kind(&bytes[k..])).unwrap_or(bytes.len());
            from.push(u8::try_from(f).ok().filter(|&k| k < u8::MAX).unwrap_or(u8::MAX));
            if f == 0 {
                whole[p / 64] |= 1 << (p % 64);
            }
            let run = loop_run(bytes, kind);
            run_end.push(u8::try_from(run).unwrap_or(u8::MAX));
            let chars = chars_in(&bytes[..run]);
            run_chars.push(u8::try_from(chars).unwrap_or(u8::MAX));
            if f == 0 {
                max_chars = max_chars.max(chars);
                if chars <= UPTO {
                    upto[chars..].iter_mut().for_each(|b| b.set(t));
                } else {
                    long.push(p as u32);
                }
            }
            tails.push(tail_bytes.len() as u32);
            if f != 0 {
                tail_bytes.extend_from_slice(&bytes[run..]);
            }
        }
        tails.push(tail_bytes.len() as u32);
        Self { kind, set, rest, from, whole, run_end, tails, tail_bytes, run_chars, upto, long, max_chars }
    }
}

/// Printable ASCII but `"` and `\`: what free text inside a JSON string is mostly made of.
pub(crate) fn is_plain(b: u8) -> bool {
    (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\'
}

/// Calls `f` on each position in `range` whose bit in `bits` is `value`, in order.
pub(crate) fn each_position(bits: &[u64], range: std::ops::Range<usize>, value: bool, mut f: impl FnMut(usize)) {
    let mut p = range.start;
    while p < range.end {
        let base = p / 64 * 64;
        let span = (u64::MAX << (p - base)) & (u64::MAX >> (64 - (range.end - base).min(64)));
        let mut w = if value { bits[p / 64] } else { !bits[p / 64] } & span;
        while w != 0 {
            f(base + w.trailing_zeros() as usize);
            w &= w - 1;
        }
        p = base + 64;
    }
}

/// The length of the leading run of `bytes` that a state looping on `kind` reads back to itself: plain bytes, or
/// whole characters of text.
pub(crate) fn loop_run(bytes: &[u8], kind: Loop) -> usize {
    match kind {
        Loop::No => 0,
        Loop::Plain => bytes.iter().take_while(|&&b| is_plain(b)).count(),
        Loop::Text => {
            let mut i = 0;
            while i < bytes.len() {
                let n = match bytes[i] {
                    b if b < 0x80 => usize::from(is_plain(b)),
                    0xC2..=0xDF => 2,
                    0xE0..=0xEF => 3,
                    0xF0..=0xF4 => 4,
                    _ => 0,
                };
                let separator = |c: &[u8]| c == "\u{2028}".as_bytes() || c == "\u{2029}".as_bytes();
                if n == 0 || bytes.get(i..i + n).is_none_or(|c| std::str::from_utf8(c).is_err() || separator(c)) {
                    break;
                }
                i += n;
            }
            i
        }
    }
}

impl TokenSpace {
    pub fn new(vocab: Vocabulary) -> Arc<Self> {
        let trie = TokenTrie::new(&vocab);
        let plain = KindTokens::new(&vocab, &trie, Loop::Plain);
        let text = KindTokens::new(&vocab, &trie, Loop::Text);
        let mut containing = vec![Vec::new(); 128];
        for t in text.set.iter() {
            let mut seen = 0u128;
            for &b in vocab.bytes(t).unwrap_or_default().iter().filter(|&&b| b < 0x80) {
                if seen & (1 << b) == 0 {
                    seen |= 1 << b;
                    containing[b as usize].push(t);
                }
            }
        }
        Arc::new(Self { vocab, trie, plain, text, containing })
    }

    pub(crate) fn kind(&self, kind: Loop) -> &KindTokens {
        match kind {
            Loop::Text => &self.text,
            _ => &self.plain,
        }
    }
}

/// How a DFA state loops: whether every character of some kind leads it back to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loop {
    /// Not on every plain ASCII byte.
    No,
    /// On every [`is_plain`] byte, not on every text character.
    Plain,
    /// On every whole character but `"`, `\`, controls and U+2028/2029 (which ECMA patterns leave out): free
    /// text inside a JSON string.
    Text,
}
