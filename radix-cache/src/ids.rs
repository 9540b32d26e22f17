//! Newtype ids: a token is not a slot is not a node. All numeric casts live here.

/// A KV-cache slot: one token's keys and values in every layer of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct SlotId(pub u32);

impl SlotId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A cache namespace (LoRA adapter, tenant salt): keys in different namespaces never share nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Namespace(pub u64);

/// A node of the tree, as handed to callers: an arena index plus the generation it had, so a handle to a node
/// that was since evicted is detected instead of silently naming its replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeHandle {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl NodeHandle {
    pub(crate) fn new(index: usize, generation: u32) -> Self {
        Self { index: index as u32, generation }
    }
    pub(crate) fn idx(self) -> usize {
        self.index as usize
    }
}
