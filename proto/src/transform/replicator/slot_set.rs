//! [`SlotSet`]: the slots chosen for the datagram being filled, with the nearest-member
//! queries the packer prices index gaps with.

/// A set of slots as a bitset, with nearest-member queries (slot order is id order, so the
/// nearest chosen slots are a record's neighbours in the datagram).
#[derive(Clone, Debug, Default)]
pub(super) struct SlotSet {
    words: Vec<u64>,
    pub(super) len: usize,
}

impl SlotSet {
    /// Empties the set for slots `0..slots`. `#[inline]` for the reason given at
    /// `pack::sort_prefix`: it is called from `ClientReplicator::pack`, in another codegen unit.
    #[inline]
    pub(super) fn reset(&mut self, slots: usize) {
        self.words.clear();
        self.words.resize(slots.div_ceil(64), 0);
        self.len = 0;
    }

    /// Adds `slot` (not yet a member).
    #[inline]
    pub(super) fn insert(&mut self, slot: usize) {
        self.words[slot / 64] |= 1u64 << (slot % 64);
        self.len += 1;
    }

    /// The largest member below `slot`.
    #[inline]
    pub(super) fn prev(&self, slot: usize) -> Option<usize> {
        let mut w = slot / 64;
        let mut bits = self.words[w] & ((1u64 << (slot % 64)) - 1);
        loop {
            if bits != 0 {
                return Some(w * 64 + 63 - bits.leading_zeros() as usize);
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            bits = self.words[w];
        }
    }

    /// The smallest member above `slot`.
    #[inline]
    pub(super) fn next(&self, slot: usize) -> Option<usize> {
        let mut w = slot / 64;
        let mut bits = self.words[w] & (u64::MAX << (slot % 64)) & !(1u64 << (slot % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            bits = *self.words.get(w)?;
        }
    }

    /// The members, ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }
}
