//! The vocabulary as a byte trie, flattened into arrays for a fast depth-first walk.
//!
//! Computing a mask walks this trie alongside the DFA: a byte that leads the DFA to its dead state prunes the
//! whole subtree (every token starting with that prefix), so a mask costs the number of live prefixes, not the
//! vocabulary size times token length.

use crate::vocab::Vocabulary;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    /// Children at `children[first_child..first_child + n_children]`, sorted by byte.
    pub first_child: u32,
    pub n_children: u32,
    /// Tokens whose bytes end exactly here, at `token_ids[first_token..first_token + n_tokens]`.
    pub first_token: u32,
    pub n_tokens: u32,
}

#[derive(Debug, Clone)]
pub struct TokenTrie {
    pub(crate) nodes: Vec<Node>,
    /// (byte, node index) per edge.
    pub(crate) children: Vec<(u8, u32)>,
    pub(crate) token_ids: Vec<u32>,
}

impl TokenTrie {
    pub fn new(vocab: &Vocabulary) -> Self {
        Self::from_tokens(vocab.iter())
    }

    /// The trie of some tokens: (id, bytes) pairs.
    pub(crate) fn from_tokens<'a>(tokens: impl Iterator<Item = (u32, &'a [u8])>) -> Self {
        // Build with per-node maps, then flatten breadth-first so a node's children are contiguous.
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
        let mut order = vec![0usize];
        let mut index = vec![u32::MAX; build.len()];
        index[0] = 0;
        let mut i = 0;
        while i < order.len() {
            for &c in build[order[i]].children.values() {
                index[c] = order.len() as u32;
                order.push(c);
            }
            i += 1;
        }
        let mut nodes = Vec::with_capacity(order.len());
        let mut children = Vec::with_capacity(order.len());
        let mut token_ids = Vec::new();
        for &b in &order {
            let node = &build[b];
            nodes.push(Node {
                first_child: children.len() as u32,
                n_children: node.children.len() as u32,
                first_token: token_ids.len() as u32,
                n_tokens: node.tokens.len() as u32,
            });
            children.extend(node.children.iter().map(|(&byte, &c)| (byte, index[c])));
            token_ids.extend_from_slice(&node.tokens);
        }
        Self { nodes, children, token_ids }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The longest token whose bytes are a prefix of `bytes`, as (token id, length); the lowest id on ties.
    /// Jump-forward uses it to turn forced bytes into tokens.
    pub fn longest_prefix(&self, bytes: &[u8]) -> Option<(u32, usize)> {
        let mut node = 0usize;
        let mut best = None;
        for (depth, &b) in bytes.iter().enumerate() {
            let n = self.nodes[node];
            let kids = &self.children[n.first_child as usize..(n.first_child + n.n_children) as usize];
            let Ok(k) = kids.binary_search_by_key(&b, |&(byte, _)| byte) else { break };
            node = kids[k].1 as usize;
            let n = self.nodes[node];
            if n.n_tokens > 0 {
                let ids = &self.token_ids[n.first_token as usize..(n.first_token + n.n_tokens) as usize];
                best = ids.iter().min().map(|&id| (id, depth + 1));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_picks_the_longest_token() {
        let toks = ["a", "ab", "abc", "b", "x"].iter().map(|t| Some(t.as_bytes().to_vec())).collect();
        let trie = TokenTrie::new(&Vocabulary::from_bytes(toks, &[]));
        assert_eq!(trie.longest_prefix(b"abd"), Some((1, 2)));
        assert_eq!(trie.longest_prefix(b"abcz"), Some((2, 3)));
        assert_eq!(trie.longest_prefix(b"bz"), Some((3, 1)));
        assert_eq!(trie.longest_prefix(b"zz"), None);
        assert_eq!(trie.longest_prefix(b""), None);
    }
}
