//! The KV slot allocator: a free list over `0..capacity` with ownership checks.

use std::fmt;

use crate::ids::SlotId;

/// Hands out KV slots and takes them back, refusing double frees and slots it never owned.
#[derive(Debug, Clone)]
pub struct SlotAllocator {
    free: Vec<SlotId>,
    in_use: Vec<bool>,
}

/// A rejected `free`: nothing was freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotError {
    kind: SlotErrorKind,
    slot: SlotId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotErrorKind {
    DoubleFree,
    Foreign,
}

impl SlotError {
    /// The offending slot.
    pub fn slot(&self) -> SlotId {
        self.slot
    }
    pub fn is_double_free(&self) -> bool {
        self.kind == SlotErrorKind::DoubleFree
    }
    pub fn is_foreign(&self) -> bool {
        self.kind == SlotErrorKind::Foreign
    }
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SlotErrorKind::DoubleFree => write!(f, "slot {} freed twice (it is not allocated)", self.slot.0),
            SlotErrorKind::Foreign => write!(f, "slot {} does not belong to this allocator", self.slot.0),
        }
    }
}

impl std::error::Error for SlotError {}

impl SlotAllocator {
    /// An allocator over slots `0..capacity`, all free.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity <= u32::MAX as usize, "at most 2^32 slots");
        // Reversed so slots come out in increasing order, which keeps early sequences contiguous.
        Self { free: (0..capacity as u32).rev().map(SlotId).collect(), in_use: vec![false; capacity] }
    }

    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
    pub fn used_count(&self) -> usize {
        self.capacity() - self.free.len()
    }
    pub fn is_allocated(&self, slot: SlotId) -> bool {
        self.in_use.get(slot.index()).copied().unwrap_or(false)
    }

    /// `n` slots, or `None` (and nothing taken) when fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<SlotId>> {
        if n > self.free.len() {
            return None;
        }
        let slots = self.free.split_off(self.free.len() - n);
        for s in &slots {
            self.in_use[s.index()] = true;
        }
        Some(slots)
    }

    /// Returns `slots` to the free list. All are checked first: on error nothing is freed.
    pub fn free(&mut self, slots: &[SlotId]) -> Result<(), SlotError> {
        // Mark as we check (which also catches a slot repeated within `slots`), and undo on the first bad one.
        for (i, &s) in slots.iter().enumerate() {
            let kind = match self.in_use.get(s.index()) {
                None => Some(SlotErrorKind::Foreign),
                Some(false) => Some(SlotErrorKind::DoubleFree),
                Some(true) => None,
            };
            if let Some(kind) = kind {
                for &done in &slots[..i] {
                    self.in_use[done.index()] = true;
                }
                return Err(SlotError { kind, slot: s });
            }
            self.in_use[s.index()] = false;
        }
        self.free.extend_from_slice(slots);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_and_free() {
        let mut a = SlotAllocator::new(4);
        let s = a.allocate(3).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(a.free_count(), 1);
        assert!(a.allocate(2).is_none());
        assert_eq!(a.free_count(), 1, "a failed allocation takes nothing");
        a.free(&s[..2]).unwrap();
        assert_eq!(a.used_count(), 1);
    }

    #[test]
    fn double_and_foreign_frees_are_errors_that_free_nothing() {
        let mut a = SlotAllocator::new(4);
        let s = a.allocate(2).unwrap();
        a.free(&s[..1]).unwrap();
        let err = a.free(&[s[1], s[0]]).unwrap_err();
        assert!(err.is_double_free() && err.slot() == s[0]);
        assert!(a.is_allocated(s[1]), "the valid slot in the rejected call stays allocated");
        assert!(a.free(&[SlotId(9)]).unwrap_err().is_foreign());
        assert!(a.free(&[s[1], s[1]]).unwrap_err().is_double_free());
        assert!(a.is_allocated(s[1]));
    }
}
