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
        Self { nodes, token_ids, max_depth }
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
}
