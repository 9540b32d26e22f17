//! The radix tree.
//!
//! # Shape
//! One root per [`Namespace`]. Every other node owns an edge: a non-empty run of tokens (a whole number of pages)
//! and the KV slots holding them. A node's children are keyed by the first page of their edge, so two children
//! never share a first page, and a lookup is one hash probe per edge.
//!
//! # The lock-ref protocol
//! A request that uses cached tokens locks the node its match ended at: [`RadixCache::lock`] adds one to the
//! lock count of that node and of every ancestor up to the root. A node whose count is above zero is
//! *protected*: eviction never touches it, so the slots a running request reads cannot be freed under it. When
//! the request finishes (or is cancelled) it inserts what it computed and unlocks the same handle, which takes
//! the same path back down. Counts are per path, so `lock_ref(parent) >= sum(lock_ref(children))`, and the
//! tree's token count is always `evictable + protected`. A split copies the lower node's count to the new upper
//! node, because every lock passing through the lower node passes through the upper one too. Handles carry a
//! generation: a handle to a node that was since evicted is rejected, never mistaken for the arena's next node.
//!
//! # Lifetime of a KV slot
//! [`crate::SlotAllocator`] hands slots to a request; the request's forward pass writes them; on insert the tree
//! takes ownership of the slots for tokens it did not have yet, and tells the caller how many leading tokens it
//! already had (`cached_len`), whose duplicate slots the caller frees. Slots past the last whole page stay with
//! the caller. The tree gives slots back only through [`RadixCache::evict`] and [`RadixCache::reset`], which
//! hand them to the caller for freeing.
//!
//! # Eviction
//! Candidates are unlocked leaves, in a heap ordered by the [`EvictionPolicy`]'s key. Entries are validated when
//! popped (node alive, still an unlocked leaf, key unchanged), and a fresh entry is pushed whenever a node becomes
//! an unlocked leaf or is touched while it is one; when eviction removes a parent's last child, the parent joins
//! the heap. Stale entries are dropped lazily and the heap is rebuilt when it grows past twice the node count.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use rustc_hash::FxHashMap;

use crate::ids::{Namespace, NodeHandle, SlotId};
use crate::policy::{EvictionPolicy, Lru, NodeStats};

const NO_PARENT: u32 = u32::MAX;

/// Told a node's whole path from the root and where the node's own tokens begin in it.
pub type PathObserver<'a> = dyn FnMut(&[u32], usize) + 'a;

/// An error from the cache; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheError {
    kind: CacheErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CacheErrorKind {
    StaleHandle,
    Unbalanced,
    LengthMismatch { tokens: usize, slots: usize },
    Locked { tokens: usize },
}

impl CacheError {
    /// The handle names a node that no longer exists (it was evicted or the cache was reset).
    pub fn is_stale_handle(&self) -> bool {
        self.kind == CacheErrorKind::StaleHandle
    }
    /// An unlock without a matching lock.
    pub fn is_unbalanced(&self) -> bool {
        self.kind == CacheErrorKind::Unbalanced
    }
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            CacheErrorKind::StaleHandle => write!(f, "stale node handle (the node was evicted)"),
            CacheErrorKind::Unbalanced => write!(f, "unlock of a node that is not locked"),
            CacheErrorKind::LengthMismatch { tokens, slots } => {
                write!(f, "insert of {tokens} tokens with {slots} slots")
            }
            CacheErrorKind::Locked { tokens } => write!(f, "{tokens} tokens are locked by running requests"),
        }
    }
}

impl std::error::Error for CacheError {}

/// The result of [`RadixCache::match_prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Matched tokens (a multiple of the page size).
    pub len: usize,
    /// Their slots, in order.
    pub slots: Vec<SlotId>,
    /// The node the match ends at (the namespace root for an empty match); lock it while using the slots.
    pub node: NodeHandle,
}

/// The result of [`RadixCache::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Leading tokens the tree already had: the caller's slots for them are duplicates, to be freed by the caller
    /// unless they are the very slots the tree holds (when the caller matched them first).
    pub cached_len: usize,
    /// Tokens now in the tree for this key (the key rounded down to whole pages); slots past it stay the caller's.
    pub inserted_len: usize,
    /// The node that ends the key.
    pub node: NodeHandle,
}

/// Counters for reporting cache effectiveness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub lookups: u64,
    /// Tokens asked for by lookups.
    pub lookup_tokens: u64,
    /// Tokens found by lookups.
    pub hit_tokens: u64,
    pub inserted_tokens: u64,
    pub evicted_tokens: u64,
}

impl CacheStats {
    /// Share of looked-up tokens that were cached.
    pub fn hit_rate(&self) -> f64 {
        if self.lookup_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.lookup_tokens as f64
        }
    }
}

struct Node {
    parent: u32,
    key: Vec<u32>,
    slots: Vec<SlotId>,
    children: FxHashMap<Box<[u32]>, u32>,
    lock_ref: u32,
    stats: NodeStats,
}

struct Entry {
    generation: u32,
    node: Option<Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HeapEntry {
    key: (u64, u64),
    index: u32,
    generation: u32,
}

/// A radix tree from token-id prefixes to KV slots; see the module docs for its protocols.
pub struct RadixCache {
    page_size: usize,
    arena: Vec<Entry>,
    free_nodes: Vec<u32>,
    roots: FxHashMap<Namespace, u32>,
    clock: u64,
    heap: BinaryHeap<Reverse<HeapEntry>>,
    policy: Box<dyn EvictionPolicy>,
    live: usize,
    total: usize,
    evictable: usize,
    protected: usize,
    stats: CacheStats,
}

impl fmt::Debug for RadixCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RadixCache")
            .field("page_size", &self.page_size)
            .field("nodes", &self.live)
            .field("total", &self.total)
            .field("evictable", &self.evictable)
            .field("protected", &self.protected)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Length of the common prefix of `a` and `b`, rounded down to whole pages.
fn common_pages(a: &[u32], b: &[u32], page: usize) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    // Compare in blocks (memcmp) before finding the exact position.
    const BLOCK: usize = 32;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i / page * page
}

impl RadixCache {
    /// An LRU cache with `page_size` tokens per page (1 for token granularity).
    pub fn new(page_size: usize) -> Self {
        Self::with_policy(page_size, Box::new(Lru))
    }

    pub fn with_policy(page_size: usize, policy: Box<dyn EvictionPolicy>) -> Self {
        assert!(page_size >= 1, "page size must be at least 1");
        Self {
            page_size,
            arena: Vec::new(),
            free_nodes: Vec::new(),
            roots: FxHashMap::default(),
            clock: 0,
            heap: BinaryHeap::new(),
            policy,
            live: 0,
            total: 0,
            evictable: 0,
            protected: 0,
            stats: CacheStats::default(),
        }
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Tokens held by the tree.
    pub fn total_size(&self) -> usize {
        self.total
    }
    /// Tokens that eviction may free now.
    pub fn evictable_size(&self) -> usize {
        self.evictable
    }
    /// Tokens locked by running requests.
    pub fn protected_size(&self) -> usize {
        self.protected
    }
    /// Nodes, roots included.
    pub fn node_count(&self) -> usize {
        self.live
    }
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    fn node(&self, i: u32) -> &Node {
        self.arena[i as usize].node.as_ref().expect("live node")
    }
    fn node_mut(&mut self, i: u32) -> &mut Node {
        self.arena[i as usize].node.as_mut().expect("live node")
    }
    fn handle(&self, i: u32) -> NodeHandle {
        NodeHandle::new(i as usize, self.arena[i as usize].generation)
    }
    fn resolve(&self, h: NodeHandle) -> Result<u32, CacheError> {
        match self.arena.get(h.idx()) {
            Some(e) if e.generation == h.generation && e.node.is_some() => Ok(h.index),
            _ => Err(CacheError { kind: CacheErrorKind::StaleHandle }),
        }
    }

    fn alloc_node(&mut self, node: Node) -> u32 {
        self.live += 1;
        match self.free_nodes.pop() {
            Some(i) => {
                self.arena[i as usize].node = Some(node);
                i
            }
            None => {
                self.arena.push(Entry { generation: 0, node: Some(node) });
                (self.arena.len() - 1) as u32
            }
        }
    }

    fn release_node(&mut self, i: u32) -> Node {
        let e = &mut self.arena[i as usize];
        e.generation = e.generation.wrapping_add(1);
        self.free_nodes.push(i);
        self.live -= 1;
        e.node.take().expect("live node")
    }

    fn root(&mut self, ns: Namespace) -> u32 {
        if let Some(&r) = self.roots.get(&ns) {
            return r;
        }
        let r = self.alloc_node(Node {
            parent: NO_PARENT,
            key: Vec::new(),
            slots: Vec::new(),
            children: FxHashMap::default(),
            lock_ref: 0,
            stats: NodeStats { last_access: 0, hits: 0 },
        });
        self.roots.insert(ns, r);
        r
    }

    fn is_evictable_leaf(&self, i: u32) -> bool {
        let n = self.node(i);
        n.parent != NO_PARENT && n.children.is_empty() && n.lock_ref == 0
    }

    fn push_if_evictable(&mut self, i: u32) {
        // Stale entries pile up when nodes are touched and never evicted; drop them now and then.
        if self.heap.len() > 2 * self.live + 1024 {
            self.rebuild_heap();
        }
        if self.is_evictable_leaf(i) {
            let key = self.policy.key(&self.node(i).stats);
            let generation = self.arena[i as usize].generation;
            self.heap.push(Reverse(HeapEntry { key, index: i, generation }));
        }
    }

    fn touch(&mut self, i: u32) {
        let now = self.clock;
        let s = &mut self.node_mut(i).stats;
        s.last_access = now;
        s.hits += 1;
    }

    /// Length of the longest cached prefix of `key` (whole pages). Read-only: no split, no LRU update, no
    /// allocation; the scheduler uses it to rank waiting requests.
    pub fn peek(&self, ns: Namespace, key: &[u32]) -> usize {
        let Some(&root) = self.roots.get(&ns) else { return 0 };
        let page = self.page_size;
        let key = &key[..key.len() / page * page];
        let (mut node, mut pos) = (root, 0);
        while pos < key.len() {
            let Some(&child) = self.node(node).children.get(&key[pos..pos + page]) else { break };
            let ck = &self.node(child).key;
            let common = common_pages(ck, &key[pos..], page);
            pos += common;
            if common < ck.len() {
                break;
            }
            node = child;
        }
        pos
    }

    /// The longest cached prefix of `key` (whole pages), with its slots and a handle to lock. A match that ends
    /// inside an edge splits it so the handle covers exactly the match. Touches the path for LRU.
    pub fn match_prefix(&mut self, ns: Namespace, key: &[u32]) -> PrefixMatch {
        let mut slots = Vec::new();
        let node = self.walk(ns, key, &mut slots);
        self.stats.lookups += 1;
        self.stats.lookup_tokens += key.len() as u64;
        self.stats.hit_tokens += slots.len() as u64;
        PrefixMatch { len: slots.len(), slots, node: self.handle(node) }
    }

    /// Walks `key` from the namespace root, splitting where the match ends mid-edge; appends matched slots.
    fn walk(&mut self, ns: Namespace, key: &[u32], slots: &mut Vec<SlotId>) -> u32 {
        let page = self.page_size;
        let key = &key[..key.len() / page * page];
        self.clock += 1;
        let mut node = self.root(ns);
        let mut pos = 0;
        while pos < key.len() {
            let Some(&child) = self.node(node).children.get(&key[pos..pos + page]) else { break };
            let common = common_pages(&self.node(child).key, &key[pos..], page);
            let child = if common < self.node(child).key.len() { self.split(child, common) } else { child };
            slots.extend_from_slice(&self.node(child).slots);
            self.touch(child);
            node = child;
            pos += common;
        }
        self.push_if_evictable(node);
        node
    }

    /// Splits `child`'s edge after `at` tokens (0 < at < len, whole pages); returns the new upper node.
    fn split(&mut self, child: u32, at: usize) -> u32 {
        let page = self.page_size;
        let (parent, upper_key, upper_slots, lock_ref, stats, lower_first) = {
            let c = self.node_mut(child);
            debug_assert!(at > 0 && at < c.key.len() && at.is_multiple_of(page));
            let upper_key: Vec<u32> = c.key.drain(..at).collect();
            let upper_slots: Vec<SlotId> = c.slots.drain(..at).collect();
            let lower_first: Box<[u32]> = c.key[..page].into();
            (c.parent, upper_key, upper_slots, c.lock_ref, c.stats, lower_first)
        };
        let first: Box<[u32]> = upper_key[..page].into();
        let mut children = FxHashMap::default();
        children.insert(lower_first, child);
        let upper = self.alloc_node(Node { parent, key: upper_key, slots: upper_slots, children, lock_ref, stats });
        self.node_mut(child).parent = upper;
        *self.node_mut(parent).children.get_mut(&first).expect("parent links child by its first page") = upper;
        upper
    }

    /// Adds `key` with `slots` (one per token). Returns how much was already cached; see [`InsertOutcome`].
    pub fn insert(&mut self, ns: Namespace, key: &[u32], slots: &[SlotId]) -> Result<InsertOutcome, CacheError> {
        if key.len() != slots.len() {
            return Err(CacheError { kind: CacheErrorKind::LengthMismatch { tokens: key.len(), slots: slots.len() } });
        }
        let page = self.page_size;
        let aligned = key.len() / page * page;
        let key = &key[..aligned];
        self.clock += 1;
        let mut node = self.root(ns);
        let mut pos = 0;
        while pos < aligned {
            match self.node(node).children.get(&key[pos..pos + page]).copied() {
                None => {
                    let leaf = self.alloc_node(Node {
                        parent: node,
                        key: key[pos..].to_vec(),
                        slots: slots[pos..aligned].to_vec(),
                        children: FxHashMap::default(),
                        lock_ref: 0,
                        stats: NodeStats { last_access: self.clock, hits: 0 },
                    });
                    self.node_mut(node).children.insert(key[pos..pos + page].into(), leaf);
                    let n = aligned - pos;
                    self.total += n;
                    self.evictable += n;
                    self.stats.inserted_tokens += n as u64;
                    self.push_if_evictable(leaf);
                    return Ok(InsertOutcome { cached_len: pos, inserted_len: aligned, node: self.handle(leaf) });
                }
                Some(child) => {
                    let common = common_pages(&self.node(child).key, &key[pos..], page);
                    let child = if common < self.node(child).key.len() { self.split(child, common) } else { child };
                    self.touch(child);
                    node = child;
                    pos += common;
                }
            }
        }
        self.push_if_evictable(node);
        Ok(InsertOutcome { cached_len: aligned, inserted_len: aligned, node: self.handle(node) })
    }

    /// Pins the node and its ancestors; see the lock-ref protocol in the module docs.
    pub fn lock(&mut self, h: NodeHandle) -> Result<(), CacheError> {
        let mut i = self.resolve(h)?;
        while self.node(i).parent != NO_PARENT {
            let n = self.node_mut(i);
            n.lock_ref += 1;
            let (first, len, parent) = (n.lock_ref == 1, n.key.len(), n.parent);
            if first {
                self.evictable -= len;
                self.protected += len;
            }
            i = parent;
        }
        Ok(())
    }

    /// Undoes one [`lock`](Self::lock) of the same handle.
    pub fn unlock(&mut self, h: NodeHandle) -> Result<(), CacheError> {
        let start = self.resolve(h)?;
        let mut i = start;
        while self.node(i).parent != NO_PARENT {
            if self.node(i).lock_ref == 0 {
                return Err(CacheError { kind: CacheErrorKind::Unbalanced });
            }
            i = self.node(i).parent;
        }
        let mut i = start;
        while self.node(i).parent != NO_PARENT {
            let n = self.node_mut(i);
            n.lock_ref -= 1;
            let (last, len, parent) = (n.lock_ref == 0, n.key.len(), n.parent);
            if last {
                self.evictable += len;
                self.protected -= len;
                self.push_if_evictable(i);
            }
            i = parent;
        }
        Ok(())
    }

    /// Frees at least `n` tokens (or every evictable one) from unlocked leaves in policy order; their slots are
    /// appended to `out` for the caller to free. Returns the number of tokens freed.
    pub fn evict(&mut self, n: usize, out: &mut Vec<SlotId>) -> usize {
        self.evict_observed(n, out, None)
    }

    /// [`evict`](Self::evict), telling `observer` of each evicted leaf: the tokens of its whole path from the root
    /// (its ancestors' and its own) and where its own begin (KV-cache events need the prefix a block hashes over).
    pub fn evict_observed(
        &mut self,
        n: usize,
        out: &mut Vec<SlotId>,
        mut observer: Option<&mut PathObserver<'_>>,
    ) -> usize {
        let mut freed = 0;
        while freed < n {
            let Some(Reverse(e)) = self.heap.pop() else { break };
            let valid = matches!(self.arena.get(e.index as usize), Some(en) if en.generation == e.generation && en.node.is_some())
                && self.is_evictable_leaf(e.index)
                && self.policy.key(&self.node(e.index).stats) == e.key;
            if !valid {
                continue;
            }
            if let Some(f) = observer.as_mut() {
                let mut path = self.path_to(self.node(e.index).parent);
                let start = path.len();
                path.extend_from_slice(&self.node(e.index).key);
                f(&path, start);
            }
            let node = self.release_node(e.index);
            let len = node.key.len();
            out.extend_from_slice(&node.slots);
            freed += len;
            self.total -= len;
            self.evictable -= len;
            self.stats.evicted_tokens += len as u64;
            let parent = node.parent;
            let page = self.page_size;
            self.node_mut(parent).children.remove(&node.key[..page]);
            self.push_if_evictable(parent);
        }
        freed
    }

    fn rebuild_heap(&mut self) {
        self.heap.clear();
        for i in 0..self.arena.len() as u32 {
            if self.arena[i as usize].node.is_some() && self.is_evictable_leaf(i) {
                let key = self.policy.key(&self.node(i).stats);
                let generation = self.arena[i as usize].generation;
                self.heap.push(Reverse(HeapEntry { key, index: i, generation }));
            }
        }
    }

    /// The tokens from the root to the end of node `i`.
    fn path_to(&self, mut i: u32) -> Vec<u32> {
        let mut parts: Vec<&[u32]> = Vec::new();
        while i != NO_PARENT {
            let n = self.node(i);
            parts.push(&n.key);
            i = n.parent;
        }
        parts.iter().rev().flat_map(|k| k.iter().copied()).collect()
    }

    /// Calls `f` with the tokens of every node's path from the root of `ns` and where the node's own tokens begin
    /// (depth first): what the tree holds, for checking an external index of it (KV-cache events).
    pub fn for_each_path(&self, ns: Namespace, f: &mut dyn FnMut(&[u32], usize)) {
        let Some(&root) = self.roots.get(&ns) else { return };
        let mut path = Vec::new();
        self.visit_paths(root, &mut path, f);
    }

    fn visit_paths(&self, i: u32, path: &mut Vec<u32>, f: &mut dyn FnMut(&[u32], usize)) {
        let n = self.node(i);
        let start = path.len();
        path.extend_from_slice(&n.key);
        if !n.key.is_empty() {
            f(path, start);
        }
        for &c in n.children.values() {
            self.visit_paths(c, path, f);
        }
        path.truncate(start);
    }

    /// Heap entries, stale ones included (for tests of the heap's bound).
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// Empties the cache (`/flush_cache`), appending every slot to `out`. Refused while any token is locked.
    pub fn reset(&mut self, out: &mut Vec<SlotId>) -> Result<(), CacheError> {
        if self.protected > 0 {
            return Err(CacheError { kind: CacheErrorKind::Locked { tokens: self.protected } });
        }
        for e in &mut self.arena {
            if let Some(n) = e.node.take() {
                out.extend_from_slice(&n.slots);
                e.generation = e.generation.wrapping_add(1);
            }
        }
        self.free_nodes = (0..self.arena.len() as u32).rev().collect();
        self.roots.clear();
        self.heap.clear();
        self.live = 0;
        self.stats.evicted_tokens += self.total as u64;
        self.total = 0;
        self.evictable = 0;
        Ok(())
    }

    /// Appends every slot the tree holds to `out`.
    pub fn collect_slots(&self, out: &mut Vec<SlotId>) {
        for e in &self.arena {
            if let Some(n) = &e.node {
                out.extend_from_slice(&n.slots);
            }
        }
    }

    /// Checks every structural invariant; for tests and debugging (O(tree)).
    pub fn validate(&self) -> Result<(), String> {
        let page = self.page_size;
        let (mut total, mut evictable, mut protected, mut reachable) = (0usize, 0usize, 0usize, 0usize);
        let mut seen_slots = rustc_hash::FxHashSet::default();
        let mut stack: Vec<u32> = self.roots.values().copied().collect();
        while let Some(i) = stack.pop() {
            reachable += 1;
            let n = self.arena.get(i as usize).and_then(|e| e.node.as_ref()).ok_or(format!("dangling node {i}"))?;
            let is_root = n.parent == NO_PARENT;
            if !is_root {
                if n.key.is_empty() || !n.key.len().is_multiple_of(page) || n.key.len() != n.slots.len() {
                    return Err(format!("node {i}: key {} slots {} page {page}", n.key.len(), n.slots.len()));
                }
                total += n.key.len();
                if n.lock_ref == 0 {
                    evictable += n.key.len();
                } else {
                    protected += n.key.len();
                }
                for s in &n.slots {
                    if !seen_slots.insert(*s) {
                        return Err(format!("slot {} held twice", s.0));
                    }
                }
            }
            let mut child_locks = 0u32;
            for (first, &c) in &n.children {
                let cn =
                    self.arena.get(c as usize).and_then(|e| e.node.as_ref()).ok_or(format!("dangling child {c}"))?;
                if cn.parent != i {
                    return Err(format!("child {c} of {i} names parent {}", cn.parent));
                }
                if cn.key.len() < page || *first != cn.key[..page].into() {
                    return Err(format!("child {c} of {i} filed under the wrong first page"));
                }
                child_locks += cn.lock_ref;
                stack.push(c);
            }
            if !is_root && n.lock_ref < child_locks {
                return Err(format!("node {i}: lock_ref {} below its children's {child_locks}", n.lock_ref));
            }
        }
        if reachable != self.live {
            return Err(format!("{reachable} nodes reachable of {} live", self.live));
        }
        if (total, evictable, protected) != (self.total, self.evictable, self.protected) {
            return Err(format!(
                "sizes: counted total {total} evictable {evictable} protected {protected}, recorded {} {} {}",
                self.total, self.evictable, self.protected
            ));
        }
        Ok(())
    }
}
