//! This tick's candidates: aligning the per-entity state with the tick's entities, interest
//! changes (entering, leaving with a notice), the priority accumulator, and the priority order
//! the packer takes candidates in.

use super::tracked::{LeftState, Tracked, TRACKED_LAST_ACKED};
use super::{ClientReplicator, EntitySample, TickInput};
use crate::time::{Tick, Time};
use crate::transform::{BASELINE_AGE_MAX_TICKS, RECEIVER_BASELINES_PER_ENTITY};
use crate::types::EntityId;

#[derive(Clone, Copy, Debug)]
pub(super) enum CandKind {
    Update,
    Left,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Coded {
    Delta { age: u64 },
    Absolute,
    Left,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Cand {
    pub(super) slot: u32,
    pub(super) priority: f32,
    /// For an update: the age of the baseline a delta uses, 0 for none (absolute). At most
    /// [`BASELINE_AGE_MAX_TICKS`].
    pub(super) age: u32,
    pub(super) kind: CandKind,
    pub(super) placed: bool,
    /// Body bits in the scratch writer (start, length), once computed.
    pub(super) body: Option<(u32, u32)>,
}

impl Cand {
    /// How the record is coded: a delta against the baseline `age` ticks old, else absolute.
    #[inline]
    pub(super) fn coded(&self) -> Coded {
        match self.kind {
            CandKind::Left => Coded::Left,
            CandKind::Update if self.age != 0 => Coded::Delta {
                age: self.age as u64,
            },
            CandKind::Update => Coded::Absolute,
        }
    }
}

impl ClientReplicator {
    /// Aligns `tracked` with this tick's entity list (both sorted by id), in place: entities
    /// gone from the list are dropped in one forward pass, new ones are placed in one backward
    /// pass. Each tick a few entities cross the interest edge, so a copy into a second buffer
    /// (the old way) wrote a whole cold per-entity array per client per tick.
    /// `same` is [`Self::same_entities`] of `entities`.
    pub(super) fn merge(&mut self, entities: &[EntitySample], same: bool) {
        debug_assert!(self.tracked.windows(2).all(|w| w[0].id < w[1].id));
        if same {
            return;
        }
        // Removed from the world: the reliable stream tells the client.
        let mut j = 0;
        self.tracked.retain(|t| {
            while entities.get(j).is_some_and(|e| e.id < t.id) {
                j += 1;
            }
            entities.get(j).is_some_and(|e| e.id == t.id)
        });
        let kept = self.tracked.len();
        let added = entities.len() - kept;
        super::fit_capacity(&mut self.tracked, entities.len());
        if added == 0 {
            return;
        }
        // New entities take epochs in ascending id order, as a forward merge would give them.
        let first_epoch = self.next_epoch.wrapping_add(1);
        self.next_epoch = self.next_epoch.wrapping_add(added as u32);
        let mut new_left = added as u32;
        self.tracked
            .resize(entities.len(), Tracked::new(EntityId(0), 0));
        let mut src = kept;
        for dst in (0..entities.len()).rev() {
            if new_left == 0 {
                break; // the rest are kept entities already in place
            }
            let e = &entities[dst];
            if src > 0 && self.tracked[src - 1].id == e.id {
                src -= 1;
                self.tracked[dst] = self.tracked[src];
            } else {
                new_left -= 1;
                self.tracked[dst] = Tracked::new(e.id, first_epoch.wrapping_add(new_left));
            }
        }
        debug_assert_eq!(new_left, 0);
    }

    /// Whether `entities` are those `tracked` holds, in order: then they are sorted and there
    /// is nothing to merge.
    #[inline]
    pub(super) fn same_entities(&self, entities: &[EntitySample]) -> bool {
        self.tracked.len() == entities.len()
            && self.tracked.iter().zip(entities).all(|(t, e)| t.id == e.id)
    }

    pub(super) fn collect_candidates(&mut self, input: &TickInput) {
        self.scratch.cands.clear();
        self.retained_ids.clear();
        self.scratch.body.clear();
        let resend_us = self.resend_after_us();
        let w = self.config.weights;
        let r = self.config.interest_radius_m;
        let r_out = r + self.config.interest_hysteresis_m;
        for (slot, (t, e)) in self.tracked.iter_mut().zip(input.entities).enumerate() {
            if Some(e.id) == self.own_entity {
                if t.in_interest || t.left().is_pending() {
                    self.retained_ids.push(t.id);
                }
                t.priority = 0.0;
                continue;
            }
            let dist = match input.viewer {
                _ if e.global => 0.0,
                None => 0.0,
                Some(v) => {
                    let d2: f32 = (0..3).map(|a| (e.position[a] - v[a]).powi(2)).sum();
                    d2.sqrt()
                }
            };
            let dist = if dist.is_finite() { dist } else { f32::MAX };
            if !t.in_interest && (input.viewer.is_none() || dist <= r) {
                t.set_left(LeftState::NONE);
                t.in_interest = true;
            } else if t.in_interest && input.viewer.is_some() && dist > r_out {
                t.in_interest = false;
                let known = t.has_last_sent() || t.has_baseline();
                self.next_epoch = self.next_epoch.wrapping_add(1);
                t.epoch = self.next_epoch;
                t.sends = 0;
                t.forget_values();
                t.priority = 0.0;
                t.set_left(if known {
                    LeftState::UNSENT
                } else {
                    LeftState::NONE
                });
            }
            if t.in_interest || t.left().is_pending() {
                self.retained_ids.push(t.id);
            }
            if t.in_interest {
                let (need, moving) = if !t.has_last_sent() || !t.last_sent_is(&e.q) {
                    (true, true)
                } else if t.flags & TRACKED_LAST_ACKED != 0 {
                    (false, false)
                } else {
                    let since = input.now.saturating_since(t.last_sent_at());
                    (since.as_micros() as u64 >= resend_us, false)
                };
                if !need {
                    t.priority = 0.0;
                    continue;
                }
                let mut weight = w.base * e.weight.max(0.0) / (1.0 + dist / w.distance_half_m);
                if moving {
                    weight *= w.moving;
                }
                if e.owner.is_some() && e.owner == self.session {
                    weight *= w.owned_by_viewer;
                }
                if weight.is_finite() {
                    t.priority += weight;
                }
                let age = usable_baseline_age(t, input.tick);
                self.scratch.cands.push(Cand {
                    slot: slot as u32,
                    priority: t.priority,
                    kind: CandKind::Update,
                    age,
                    placed: false,
                    body: None,
                });
            } else if let Some(sent_at) = t.left().pending() {
                if due(sent_at, input.now, resend_us) {
                    t.priority += w.left_notice;
                    self.scratch.cands.push(Cand {
                        slot: slot as u32,
                        priority: t.priority,
                        kind: CandKind::Left,
                        age: 0,
                        placed: false,
                        body: None,
                    });
                }
            }
        }
    }
}

/// The age of the baseline a delta for `t` at `tick` may use, 0 for none: acknowledged, not
/// too old, and still among the receiver's [`RECEIVER_BASELINES_PER_ENTITY`] newest values.
fn usable_baseline_age(t: &Tracked, tick: Tick) -> u32 {
    let Some(base_tick) = t.baseline_tick() else {
        return 0;
    };
    let Some(age) = tick.0.checked_sub(base_tick.0) else {
        return 0;
    };
    let sends_since = t.sends.wrapping_sub(t.base_send_index) as usize;
    if (1..=BASELINE_AGE_MAX_TICKS).contains(&age) && sends_since <= RECEIVER_BASELINES_PER_ENTITY {
        age as u32
    } else {
        0
    }
}

/// Whether a notice last sent at `sent_at` is due again.
fn due(sent_at: Option<Time>, now: Time, after_us: u64) -> bool {
    match sent_at {
        None => true,
        Some(t) => now.saturating_since(t).as_micros() as u64 >= after_us,
    }
}
