//! A fast hash map keyed by [`crate::types::EntityId`], for per-update lookups on hot paths.
//!
//! Entity ids are small integers the server allocates, so SipHash's flooding resistance buys
//! nothing there (a server that wanted to slow its clients down has easier ways); one multiply
//! spreads sequential ids over the table's buckets and its control bytes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::types::EntityId;

/// A map from entity id to `V` with [`IdHasher`].
pub(crate) type IdMap<V> = HashMap<EntityId, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of integer keys (one multiply per word written).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdHasher(u64);

/// 2^64 / φ, odd: multiplying by it is a bijection that moves low-bit differences into the high
/// bits the table reads its control bytes from.
const PHI_64: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(PHI_64);
    }
}
