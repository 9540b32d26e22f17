//! The vocabulary as a byte trie, laid out flat in depth-first order for a fast sweep.
//!
//! Computing a mask walks this trie alongside the DFA: a byte that leads the DFA to its dead state prunes the
//! whole subtree (every token starting with that prefix), so a mask costs the number of live prefixes, not the
//! vocabulary size times token length. In depth-first order a subtree is a contiguous run of nodes, so the walk
//! is one forward sweep that jumps over pruned subtrees (llguidance's toktrie lays its trie out the same way).

use crate::vocab::Vocabulary;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    /// The byte on the edge from the parent (0 for the root).
    pub byte: u8,
    /// Bytes from the root: the root is at depth 0.
    pub depth: u16,
    /// One past the last node of this node's subtree: the subtree is `nodes[i..end]`.
    pub end: u32,
    /// Tokens ending here are `token_ids[first_token..nodes[i + 1].first_token]`; a subtree's tokens, in
    /// depth-first order, are `token_ids[first_token..nodes[end].first_token]`.
    pub first_token: u32,
}

#[derive(Debug, Clone)]
pub struct TokenTrie {
    /// Depth-first preorder, children by byte; node 0 is the root, and a last sentinel node closes the ranges.
    pub(crate) nodes: Vec<Node>,
    pub(crate) token_ids: Vec<u32>,
    /// The deepest node's depth (the longest token's length).
    pub(crate) max_depth: usize,
    /// The nodes down to one whole character from the root (see [`CharNode`]), in depth-first order.
    pub(crate) first_chars: Vec<CharNode>,
}

/// A node of the trie at most one whole UTF-8 character down from the root: a byte that is ASCII or starts no
/// character counts as one. A mask starting at a state that loops on nothing takes its first character from
/// these (`Grammar::split_root`): a flat list read in order, where the trie's own siblings are scattered over
/// megabytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CharNode {
    pub node: u32,
    /// The index in [`TokenTrie::first_chars`] past this node's entries below it.
    pub skip: u32,
    pub byte: u8,
    pub depth: u8,
    /// The length of the character this node's path starts (its depth when the character is whole).
    pub len: u8,
}

impl TokenTrie {
    pub fn new(vocab: &Vocabulary) -> Self {
        Self::from_tokens(vocab.iter())
    }

    /// The trie of some tokens: (id, bytes) pairs.
    pub(crate) fn from_tokens<'a>(tokens: impl Iterator<Item = (u32, &'a [u8])>) -> Self {
        // Build with per-node maps, then lay out depth-first.
        struct Build {
            children: std::collections::BTreeMap<u8, usize>,
            tokens: Vec<u32>,
        }
        let mut build = vec![Build { children: Default::default(), tokens: Vec::new() }];
        for (id, bytes) in tokens {
            let mut n = 0;
            for &b in bytes {
                let next = match build[n].children.get(&b) {
                    Some(&c) => c,
                    None => {
                        build.push(Build { children: Default::default(), tokens: Vec::new() });
                        let c = build.len() - 1;
                        build[n].children.insert(b, c);
                        c
                    }
                };
                n = next;
            }
            build[n].tokens.push(id);
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(build.len() + 1);
        let mut token_ids = Vec::new();
        let mut max_depth = 0;
        // (build index, byte, depth, whether its subtree is laid out: the second visit closes it)
        let mut stack = vec![(0usize, 0u8, 0u16, None::<usize>)];
        while let Some((b, byte, depth, laid)) = stack.pop() {
            if let Some(i) = laid {
                nodes[i].end = nodes.len() as u32;
                continue;
            }
            let i = nodes.len();
            nodes.push(Node { byte, depth, end: 0, first_token: token_ids.len() as u32 });
            token_ids.extend_from_slice(&build[b].tokens);
            max_depth = max_depth.max(depth as usize);
            stack.push((b, byte, depth, Some(i)));
            stack.extend(build[b].children.iter().rev().map(|(&byte, &c)| (c, byte, depth + 1, None)));
        }
        let end = nodes.len() as u32;
        nodes.push(Node { byte: 0, depth: 0, end: end + 1, first_token: token_ids.len() as u32 });
        let mut trie = Self { nodes, token_ids, max_depth, first_chars: Vec::new() };
        trie.first_chars = trie.char_nodes();
        trie
    }

    /// [`TokenTrie::first_chars`].
    fn char_nodes(&self) -> Vec<CharNode> {
        let mut out: Vec<CharNode> = Vec::new();
        // (node, the character's length), children pushed in reverse to come out in order; a node's entry is
        // closed (its `skip` set) when its subtree's entries are done, marked by `None`.
        let mut stack: Vec<Option<(usize, u8)>> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        let push_children = |stack: &mut Vec<Option<(usize, u8)>>, i: usize, len: Option<u8>| {
            let mut kids = Vec::new();
            let mut c = i + 1;
            while c < self.nodes[i].end as usize {
                let len = len.unwrap_or(match self.nodes[c].byte {
                    0xC2..=0xDF => 2,
                    0xE0..=0xEF => 3,
                    0xF0..=0xF4 => 4,
                    _ => 1,
                });
                kids.push(Some((c, len)));
                c = self.nodes[c].end as usize;
            }
            stack.extend(kids.into_iter().rev());
        };
        push_children(&mut stack, 0, None);
        while let Some(top) = stack.pop() {
            let Some((c, len)) = top else {
                let at = open.pop().expect("an open entry per marker");
                out[at].skip = out.len() as u32;
                continue;
            };
            let depth = self.nodes[c].depth;
            out.push(CharNode {
                node: c as u32,
                skip: out.len() as u32 + 1,
                byte: self.nodes[c].byte,
                depth: depth as u8,
                len,
            });
            if (depth as u8) < len {
                open.push(out.len() - 1);
                stack.push(None);
                push_children(&mut stack, c, Some(len));
            }
        }
        out
    }

    /// Nodes, the root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Tokens ending at node `i`.
    pub(crate) fn tokens_at(&self, i: usize) -> &[u32] {
        &self.token_ids[self.nodes[i].first_token as usize..self.nodes[i + 1].first_token as usize]
    }

    /// The positions in `token_ids` of the tokens strictly below node `i`.
    pub(crate) fn below(&self, i: usize) -> std::ops::Range<usize> {
        self.nodes[i + 1].first_token as usize..self.nodes[self.nodes[i].end as usize].first_token as usize
    }

    /// The positions in `token_ids` of the tokens at node `i` and below.
    pub(crate) fn subtree_tokens(&self, i: usize) -> std::ops::Range<usize> {
        self.nodes[i].first_token as usize..self.nodes[self.nodes[i].end as usize].first_token as usize
    }

    /// The child of node `i` along `byte`.
    fn child(&self, i: usize, byte: u8) -> Option<usize> {
        let mut c = i + 1;
        while c < self.nodes[i].end as usize {
            if self.nodes[c].byte == byte {
                return Some(c);
            }
            c = self.nodes[c].end as usize;
        }
        None
    }

    /// The node reached by `bytes` from the root, if some token starts with them.
    pub(crate) fn node(&self, bytes: &[u8]) -> Option<usize> {
        bytes.iter().try_fold(0, |n, &b| self.child(n, b))
    }

    /// The ids of the tokens strictly longer than node `i`'s bytes that start with them.
    pub(crate) fn extensions(&self, i: usize) -> &[u32] {
        &self.token_ids[self.below(i)]
    }

    /// The longest token whose bytes are a prefix of `bytes`, as (token id, length); the lowest id on ties.
    /// Jump-forward uses it to turn forced bytes into tokens.
    pub fn longest_prefix(&self, bytes: &[u8]) -> Option<(u32, usize)> {
        let mut node = 0usize;
        let mut best = None;
        for (depth, &b) in bytes.iter().enumerate() {
            let Some(c) = self.child(node, b) else { break };
            node = c;
            if let Some(&id) = self.tokens_at(node).iter().min() {
                best = Some((id, depth + 1));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(words: &[&str]) -> TokenTrie {
        let toks = words.iter().map(|t| Some(t.as_bytes().to_vec())).collect();
        TokenTrie::new(&Vocabulary::from_bytes(toks, &[]))
    }

    #[test]
    fn longest_prefix_picks_the_longest_token() {
        let trie = trie(&["a", "ab", "abc", "b", "x"]);
        assert_eq!(trie.longest_prefix(b"abd"), Some((1, 2)));
        assert_eq!(trie.longest_prefix(b"abcz"), Some((2, 3)));
        assert_eq!(trie.longest_prefix(b"bz"), Some((3, 1)));
        assert_eq!(trie.longest_prefix(b"zz"), None);
        assert_eq!(trie.longest_prefix(b""), None);
    }

    #[test]
    fn subtrees_are_contiguous_in_depth_first_order() {
        let words = ["a", "ab", "abc", "b", "ba", "x", "abd"];
        let trie = trie(&words);
        let names =
            |r: std::ops::Range<usize>| -> Vec<&str> { trie.token_ids[r].iter().map(|&t| words[t as usize]).collect() };
        assert_eq!(names(trie.below(0)), ["a", "ab", "abc", "abd", "b", "ba", "x"]);
        let a = trie.child(0, b'a').unwrap();
        assert_eq!(names(trie.below(a)), ["ab", "abc", "abd"]);
        assert_eq!(trie.tokens_at(a).iter().map(|&t| words[t as usize]).collect::<Vec<_>>(), ["a"]);
        let b = trie.child(0, b'b').unwrap();
        assert_eq!(names(trie.below(b)), ["ba"]);
        assert_eq!(trie.nodes[b].depth, 1);
        assert_eq!(trie.max_depth, 3);
        assert_eq!(trie.node_count(), 8);
    }

    #[test]
    fn first_chars_stop_at_one_whole_character() {
        // "é" is C3 A9, "日" E6 97 A5; 0xFF starts no character.
        let words = ["a", "ab", "é", "éa", "日本"];
        let mut toks: Vec<Option<Vec<u8>>> = words.iter().map(|t| Some(t.as_bytes().to_vec())).collect();
        toks.push(Some(vec![0xFF, b'x']));
        let trie = TokenTrie::new(&Vocabulary::from_bytes(toks, &[]));
        let got: Vec<(Vec<u8>, u8, u8, usize)> = trie
            .first_chars
            .iter()
            .enumerate()
            .map(|(i, e)| {
                // The path's bytes: the node's ancestors are the entries above it at lower depths.
                let mut path = vec![e.byte];
                let mut d = e.depth;
                for f in trie.first_chars[..i].iter().rev() {
                    if f.depth + 1 == d {
                        path.insert(0, f.byte);
                        d = f.depth;
                    }
                }
                (path, e.depth, e.len, e.skip as usize - i)
            })
            .collect();
        assert_eq!(
            got,
            [
                (b"a".to_vec(), 1, 1, 1),
                (vec![0xC3], 1, 2, 2),
                (vec![0xC3, 0xA9], 2, 2, 1),
                (vec![0xE6], 1, 3, 3),
                (vec![0xE6, 0x97], 2, 3, 2),
                (vec![0xE6, 0x97, 0xA5], 3, 3, 1),
                (vec![0xFF], 1, 1, 1),
            ]
        );
    }
}
