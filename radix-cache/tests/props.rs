//! proptest properties of insert and match.

use proptest::prelude::*;
use radix_cache::{Namespace, RadixCache, SlotAllocator};

proptest! {
    /// After inserting keys, each matches to its whole-page length with the slots of whoever first cached each
    /// page, and peek agrees with match.
    #[test]
    fn insert_then_match_round_trips(
        keys in prop::collection::vec(prop::collection::vec(0u32..4, 0..20), 1..12),
        page in 1usize..5,
    ) {
        let mut cache = RadixCache::new(page);
        let mut alloc = SlotAllocator::new(4096);
        let ns = Namespace(0);
        let mut stored = Vec::new();
        for k in &keys {
            let slots = alloc.allocate(k.len()).unwrap();
            let out = cache.insert(ns, k, &slots).unwrap();
            prop_assert_eq!(out.inserted_len, k.len() / page * page);
            let m = cache.match_prefix(ns, k);
            prop_assert_eq!(m.len, out.inserted_len);
            // Our own slots are the tree's from cached_len on.
            prop_assert_eq!(&m.slots[out.cached_len..], &slots[out.cached_len..out.inserted_len]);
            stored.push((k.clone(), m.slots));
            cache.validate().map_err(TestCaseError::fail)?;
        }
        for (k, slots) in &stored {
            prop_assert_eq!(cache.peek(ns, k), slots.len());
            let m = cache.match_prefix(ns, k);
            prop_assert_eq!(&m.slots, slots, "matching {:?} again gives the same slots", k);
        }
    }

    /// Inserting the same keys in any order gives a tree of the same size, and every key matches fully.
    #[test]
    fn insertion_order_does_not_change_the_cached_set(
        keys in prop::collection::vec(prop::collection::vec(0u32..3, 1..16), 1..10),
    ) {
        let size = |order: &[Vec<u32>]| {
            let mut cache = RadixCache::new(1);
            let mut alloc = SlotAllocator::new(4096);
            for k in order {
                let s = alloc.allocate(k.len()).unwrap();
                cache.insert(Namespace(0), k, &s).unwrap();
            }
            for k in order {
                assert_eq!(cache.peek(Namespace(0), k), k.len());
            }
            cache.total_size()
        };
        let mut rev = keys.clone();
        rev.reverse();
        prop_assert_eq!(size(&keys), size(&rev));
    }
}
