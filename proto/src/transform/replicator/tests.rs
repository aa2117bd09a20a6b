//! Unit tests of the replicator's internals: its per-entity layouts and the slot set. The
//! replicator's behaviour is tested through its public API in `transform::tests`.

#[cfg(test)]
mod size_tests {
    #[test]
    fn per_entity_state_stays_small() {
        assert_eq!(std::mem::size_of::<super::super::tracked::Tracked>(), 116);
        assert_eq!(
            std::mem::size_of::<super::super::tracked::PackedSample>(),
            48
        );
        assert_eq!(std::mem::size_of::<super::super::ack::SentRecord>(), 64);
    }
}

#[cfg(test)]
mod slot_set_tests {
    use super::super::slot_set::SlotSet;
    use crate::rng::Rng;
    use std::collections::BTreeSet;

    #[test]
    fn slot_set_neighbours_match_an_ordered_set() {
        let mut rng = Rng::new(4);
        let mut set = SlotSet::default();
        for _ in 0..200 {
            let n = 1 + rng.below(300) as usize;
            set.reset(n);
            let mut model = BTreeSet::new();
            for _ in 0..rng.below(n as u64 + 1) {
                let s = rng.below(n as u64) as usize;
                assert_eq!(set.prev(s), model.range(..s).next_back().copied());
                assert_eq!(set.next(s), model.range(s + 1..).next().copied());
                if model.insert(s) {
                    set.insert(s);
                }
                assert_eq!(set.len, model.len());
            }
            assert!(set.iter().eq(model.iter().copied()));
        }
    }
}
