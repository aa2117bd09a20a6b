//! The sent-datagram history and what an ack does to it: [`ClientReplicator::handle_ack`]
//! feeds the RTT estimate and the budget, ends acknowledged "left interest" notices, and leaves
//! the acknowledged values to become baselines when the next tick starts
//! ([`ClientReplicator::apply_acked`]), which recycles record lists no longer needed.

use super::tracked::{LeftState, PackedSample, Tracked, RECORD_LEFT_NOTICE, TRACKED_LAST_ACKED};
use super::ClientReplicator;
use crate::time::{Tick, Time};
use crate::transform::budget::LOSS_REORDER_TOLERANCE;
use crate::transform::seq::{AckHeader, Seq, ACK_WINDOW};
use crate::transform::SENT_HISTORY_LEN;
use crate::types::EntityId;

/// One record of a sent datagram, as acks need it: 64 bytes, one cache line (it was 80 as an
/// enum holding a whole [`Sample`](crate::transform::record::Sample)).
#[derive(Clone, Copy, Debug)]
pub(super) struct SentRecord {
    pub(super) id: EntityId,
    /// Where the entity was in `tracked` when sent (checked, then searched if it moved).
    pub(super) slot: u32,
    pub(super) epoch: u32,
    /// The update's send index in its epoch (unused for a left notice).
    pub(super) send_index: u32,
    /// The value sent, at the datagram's tick; for a left notice only its
    /// [`RECORD_LEFT_NOTICE`] flag.
    pub(super) sample: PackedSample,
}

impl SentRecord {
    /// Whether this is a left-interest notice rather than an update.
    #[inline]
    pub(super) fn is_left(&self) -> bool {
        self.sample.flags & RECORD_LEFT_NOTICE != 0
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct SentDatagram {
    pub(super) seq_full: u64,
    /// The tick it was sent for: its records' samples' tick.
    pub(super) tick: Tick,
    pub(super) valid: bool,
    pub(super) acked: bool,
    pub(super) sent_at: Time,
    /// Its size on the wire (payload and per-datagram overhead), for the delivery rate.
    pub(super) wire_bytes: u32,
    /// It carried records or an own blob, which clients acknowledge at once: its ack is a round
    /// trip sample. One with only a clock echo is acknowledged whenever the client next sends.
    pub(super) prompt_ack: bool,
    /// It carries a left-interest notice: its ack is applied at once, since it changes what
    /// [`ClientReplicator::retained`] gives. Others' acks are applied when the next
    /// `write_tick` starts ([`ClientReplicator::apply_acked`]).
    pub(super) left_notices: bool,
    pub(super) records: Vec<SentRecord>,
}

impl ClientReplicator {
    /// Processes an ack header from the client. Unknown, repeated or out-of-window sequences are
    /// ignored (a peer cannot make this fail or grow). Returns how many datagrams were newly
    /// acknowledged.
    ///
    /// The RTT estimate, the budget and [`ClientReplicator::datagram_acked`] see the ack at
    /// once, and so does [`ClientReplicator::retained`] (an acknowledged left notice ends the
    /// entity's retention); the values acknowledged become baselines when the next
    /// [`ClientReplicator::write_tick`] starts, the first thing to use them.
    pub fn handle_ack(&mut self, ack: &AckHeader, now: Time) -> usize {
        if ack.received == 0 || self.next_seq == 0 {
            return 0;
        }
        let last_full = self.next_seq - 1;
        let behind_latest = Seq(last_full as u16).diff(ack.latest);
        if behind_latest < 0 {
            return 0; // acks a datagram never sent
        }
        let mut newly = 0;
        for i in 0..ACK_WINDOW as u64 {
            if ack.received >> i & 1 == 0 {
                continue;
            }
            let back = behind_latest as u64 + i;
            if back >= SENT_HISTORY_LEN as u64 || back > last_full {
                break;
            }
            let full = last_full - back;
            let slot = (full % SENT_HISTORY_LEN as u64) as usize;
            if self.unacked[slot / 64] >> (slot % 64) & 1 == 0 {
                continue; // never sent, or acknowledged already
            }
            let d = &mut self.history[slot];
            debug_assert!(d.valid && !d.acked);
            if d.seq_full != full {
                continue;
            }
            d.acked = true;
            self.unacked[slot / 64] &= !(1u64 << (slot % 64));
            newly += 1;
            self.path.on_delivered(d.wire_bytes as u64, now);
            if i == 0 && d.prompt_ack {
                let sample = now.saturating_since(d.sent_at).as_micros() as u64;
                self.path.on_rtt_sample(d.sent_at, now);
                self.srtt_us = Some(match self.srtt_us {
                    None => sample,
                    Some(s) => (s * 7 + sample) / 8,
                });
            }
            if d.left_notices {
                // What `retained` gives changes now, not at the next tick.
                apply_records(
                    &d.records,
                    d.tick,
                    &mut self.tracked,
                    &mut self.retained_ids,
                );
                // Its records are done with; the last tick's stay for `last_tick_updates`
                // until the next `write_tick` recycles them.
                if full < self.tick_first_seq {
                    recycle(&mut self.history[slot].records, &mut self.spare_records);
                }
            } else {
                self.acked_unapplied.push(slot as u16);
            }
        }
        self.tell_fates(last_full - behind_latest as u64);
        newly
    }

    /// Applies the records of the datagrams acknowledged since the last call (see
    /// [`ClientReplicator::handle_ack`]) to the per-entity state, and recycles their record
    /// lists.
    ///
    /// Called as a `write_tick` starts, before it reads that state: the state is then exactly
    /// what applying them at each ack would have made it (nothing reads it in between, and the
    /// order of datagrams does not matter: the newest baseline wins). Each entity's state is
    /// then brought into the cache just before the tick walks it, where an ack, handled while
    /// other clients' work evicted it, found it cold: callgrind with a 4 MiB last-level cache
    /// counted 42% fewer misses there in `server_ticks` (12.0 M to 6.9 M over 1,000 clients
    /// × 20 ticks). Applying them within that walk instead saved no further misses and cost
    /// instructions.
    pub(super) fn apply_acked(&mut self) {
        for k in 0..self.acked_unapplied.len() {
            let slot = self.acked_unapplied[k] as usize;
            let d = &mut self.history[slot];
            apply_records(
                &d.records,
                d.tick,
                &mut self.tracked,
                &mut self.retained_ids,
            );
            recycle(&mut d.records, &mut self.spare_records);
        }
        self.acked_unapplied.clear();
    }

    /// Tells the budget the fate of every datagram sent [`LOSS_REORDER_TOLERANCE`] or more
    /// before `latest` (the newest acknowledged) and not told yet: acknowledged by now, or lost.
    ///
    /// A datagram told lost gives up its record list (to the spare lists, or freed), except
    /// one of the last tick's, which `last_tick_updates` still reads (the next `write_tick`
    /// frees it). Kept until its history slot came round again, as before, every lost datagram
    /// held one: at 5% loss a client held ≈ 28 lists where acks need ≈ 10, and a relay soak
    /// read it as memory creeping for minutes. Should its ack arrive after all (reordered by
    /// more than the tolerance), it promotes nothing: the entities keep an older baseline,
    /// which the client still holds (it keeps [`RECEIVER_BASELINES_PER_ENTITY`] values and the
    /// server deltas only against one fewer sends old), or they are sent absolute.
    ///
    /// [`RECEIVER_BASELINES_PER_ENTITY`]: crate::transform::RECEIVER_BASELINES_PER_ENTITY
    fn tell_fates(&mut self, latest: u64) {
        let Some(until) = latest.checked_sub(LOSS_REORDER_TOLERANCE) else {
            return;
        };
        // Older than the history, a datagram's fate is unknown: skip it.
        let from = self
            .fate_next_seq
            .max((until + 1).saturating_sub(SENT_HISTORY_LEN as u64));
        for full in from..=until {
            let slot = (full % SENT_HISTORY_LEN as u64) as usize;
            if self.history[slot].seq_full != full || !self.history[slot].valid {
                continue;
            }
            let lost = self.unacked[slot / 64] >> (slot % 64) & 1 == 1;
            self.path.on_datagram_fate(lost, self.history[slot].sent_at);
            if lost && full < self.tick_first_seq {
                recycle(&mut self.history[slot].records, &mut self.spare_records);
            }
        }
        self.fate_next_seq = self.fate_next_seq.max(until + 1);
    }
}

/// Applies an acknowledged datagram's records, sent at `tick`: values become baselines (when
/// newer), the last value sent is marked acknowledged, left notices end. Records of another
/// epoch (the entity left interest or was re-added since) or of entities no longer tracked
/// change nothing; the order in which datagrams are applied does not matter (the newest
/// baseline wins).
#[inline]
fn apply_records(
    records: &[SentRecord],
    tick: Tick,
    tracked: &mut [Tracked],
    retained_ids: &mut Vec<EntityId>,
) {
    for r in records {
        let Some(ti) = locate(tracked, r.id, r.slot) else {
            continue;
        };
        let t = &mut tracked[ti];
        if t.epoch != r.epoch {
            continue;
        }
        if r.is_left() {
            if t.left().is_pending() {
                t.set_left(LeftState::NONE);
                // Pending means out of interest: no longer retained.
                if let Ok(k) = retained_ids.binary_search(&r.id) {
                    retained_ids.remove(k);
                }
            }
            continue;
        }
        apply_update(r, tick, t);
    }
}

/// Applies an acknowledged update (not a left notice) sent at `tick` to its entity's state `t`
/// (of the same id): unless of another epoch, its value becomes the baseline when newer, and
/// the last value sent is marked acknowledged if it is that one.
#[inline(always)]
fn apply_update(r: &SentRecord, tick: Tick, t: &mut Tracked) {
    debug_assert!(!r.is_left() && r.id == t.id);
    if t.epoch != r.epoch {
        return;
    }
    if baseline_older(t.baseline_tick(), tick) {
        t.set_baseline(tick, &r.sample, r.send_index);
    }
    if t.has_last_sent() && t.last_send_index == r.send_index {
        t.flags |= TRACKED_LAST_ACKED;
    }
}

/// Emptied record lists a replicator keeps for its next datagrams: 4. With prompt acks a
/// client needs about as many as it is sent datagrams a tick (one at the default budget and
/// 30 Hz), since each tick's acks free about as many lists as the next tick fills. A backlog of
/// acks (after a stall of the server, the client or the path) frees all the lists in flight
/// at once: keeping them all left every client holding its worst stall's worth of lists for
/// the connection's lifetime (≈ 5 KiB each; 150 KiB a client after a few minutes of a soak,
/// up to [`SENT_HISTORY_LEN`] lists). A client sent more datagrams a tick than this allocates
/// the others each tick, as before lists were reused.
pub(crate) const SPARE_RECORD_LISTS_MAX: usize = 4;

/// Moves an acknowledged datagram's record list, emptied, to the spare lists, or frees it when
/// [`SPARE_RECORD_LISTS_MAX`] are spare already.
#[inline]
pub(super) fn recycle(records: &mut Vec<SentRecord>, spare: &mut Vec<Vec<SentRecord>>) {
    if records.capacity() != 0 {
        let mut r = std::mem::take(records);
        if spare.len() < SPARE_RECORD_LISTS_MAX {
            r.clear();
            spare.push(r);
        }
    }
}

/// The index of `id` in `tracked`: `slot` if it is still there, else a binary search.
fn locate(tracked: &[Tracked], id: EntityId, slot: u32) -> Option<usize> {
    match tracked.get(slot as usize) {
        Some(t) if t.id == id => Some(slot as usize),
        _ => tracked.binary_search_by_key(&id, |t| t.id).ok(),
    }
}

/// Whether `tick` is newer than the baseline (or there is none).
fn baseline_older(base_tick: Option<Tick>, tick: Tick) -> bool {
    !matches!(base_tick, Some(b) if b >= tick)
}
