//! [`ClientReplicator::write_tick`]: the byte budget (a token bucket, see
//! [`crate::transform::budget`]) and packing the
//! tick's candidates into datagrams, through the one-datagram fast path or highest priority
//! first, with the per-thread scratch buffers the packing uses.

use super::ack::recycle;
use super::datagram::{common_age, gap, Extras};
use super::memo::BodyMemo;
use super::priority::{Cand, Coded};
use super::slot_set::SlotSet;
use super::{ClientReplicator, EntitySample, TickInput, TickSummary, INDEX_EG_K};
use crate::time::Tick;
use crate::transform::bits::{bit_width, BitRun, BitWriter};
use crate::transform::budget::PACKET_OVERHEAD_BYTES;
use crate::transform::record::{write_absolute_run, AGE_EG_K};
use crate::transform::ClockEcho;
use crate::transform::{
    varint_len, TransformError, DATAGRAM_BYTES_MIN, OWN_BLOB_BYTES_MAX, RECORDS_PER_DATAGRAM_MAX,
    SENT_HISTORY_LEN,
};
use crate::types::EntityId;
use crate::wire::limits::DATAGRAM_BYTES_MAX;
use std::cell::RefCell;

/// Candidates that did not fit, in a row, after which a datagram is considered full.
const FIT_ATTEMPTS_MAX: usize = 16;
/// Header bytes besides the tick varint and the blob: kind 1 + seq 2 + flags 1 + common age
/// varint ≤ 2 (ages < 256) + record count varint ≤ 2 (≤ 1024).
const HEADER_FIXED_BYTES: usize = 8;

/// Buffers a replicator needs only while it writes a tick. Kept per thread, not per client:
/// a server writes every client's tick in turn on one thread, so one set stays in the cache for
/// all of them, where per-client buffers (≈ 5 KiB each at 100 candidates) were each a cold
/// region touched once per tick.
#[derive(Clone, Debug, Default)]
pub(super) struct Scratch {
    pub(super) cands: Vec<Cand>,
    /// Candidates' [`order_key`]s, ordered lazily by the packer.
    pub(super) order: Vec<u64>,
    pub(super) body: BitWriter,
    pub(super) out_bits: BitWriter,
    /// The datagram being filled: (id, candidate) in id order, built from `picked`.
    pub(super) chosen: Vec<(EntityId, usize)>,
    /// The slots chosen for the datagram being filled.
    pub(super) picked: SlotSet,
    /// Per slot: its candidate's index, valid where `picked` holds the slot.
    pub(super) slot_cand: Vec<u32>,
    /// Delta bodies shared by the replicators writing on this thread.
    pub(super) memo: BodyMemo,
}

thread_local! {
    /// The [`Scratch`] of the replicators writing on this thread, lent to each `write_tick`.
    pub(super) static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl ClientReplicator {
    /// Writes this tick's datagrams for the client into `out` (appending; each `Vec<u8>` is one
    /// datagram, at most `input.max_datagram_size` bytes). Returns what was written.
    ///
    /// Errors only on caller mistakes: a datagram size below [`DATAGRAM_BYTES_MIN`], an own
    /// blob above [`OWN_BLOB_BYTES_MAX`], entities not sorted by id, or a tick not after the
    /// previous call's (an entity is sent at most once per tick: receivers key values by tick).
    pub fn write_tick(
        &mut self,
        input: &TickInput,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<TickSummary, TransformError> {
        // Consumed by this call whatever happens: its hold and phase are as of this tick.
        let echo = self.echo.take();
        if input.max_datagram_size < DATAGRAM_BYTES_MIN {
            return Err(TransformError::DatagramTooSmall(input.max_datagram_size));
        }
        if let Some(b) = input.own_blob {
            if b.len() > OWN_BLOB_BYTES_MAX {
                return Err(TransformError::BlobTooLarge {
                    len: b.len(),
                    max: OWN_BLOB_BYTES_MAX,
                });
            }
        }
        // The same entities as last tick (the usual case) are sorted: `tracked` ascends
        // strictly by construction (see `merge`). Only others need checking.
        let same = self.same_entities(input.entities);
        if !same && input.entities.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(TransformError::UnsortedEntities);
        }
        if self.last_tick.is_some_and(|t| input.tick <= t) {
            return Err(TransformError::TickNotAfterLast(input.tick));
        }
        let elapsed_ticks = self.last_tick.map_or(1, |t| input.tick.0 - t.0);
        self.last_tick = Some(input.tick);
        self.apply_acked();
        // The last tick's acknowledged datagrams' records are no longer needed either, nor
        // those of its datagrams told lost (see `tell_fates`).
        for full in self.tick_first_seq..self.next_seq {
            let slot = (full % SENT_HISTORY_LEN as u64) as usize;
            // Written last tick, so `valid`: acknowledged iff its `unacked` bit is clear.
            if self.unacked[slot / 64] >> (slot % 64) & 1 == 0 || full < self.fate_next_seq {
                recycle(&mut self.history[slot].records, &mut self.spare_records);
            }
        }
        self.tick_first_seq = self.next_seq;
        self.merge(input.entities, same);
        // The thread's scratch, warm from the last client's tick, lent for this one. The cell
        // is borrowed only for the swaps; `try_with` fails only while the thread exits, and
        // then this replicator's own (empty) buffers serve.
        let swap = |own: &mut Scratch| {
            SCRATCH
                .try_with(|s| std::mem::swap(own, &mut s.borrow_mut()))
                .is_ok()
        };
        let lent = swap(&mut self.scratch);
        self.scratch.memo.use_quantizer(&self.qz);
        self.collect_candidates(input);
        let result = self.pack(input, echo, elapsed_ticks, out);
        if lent {
            swap(&mut self.scratch);
        }
        result
    }

    /// Encodes candidate `ci`'s body into the scratch writer (once) and returns its worst-case
    /// record bits without the index.
    fn body_bits(&mut self, ci: usize, tick: Tick, entities: &[EntitySample]) -> (usize, Coded) {
        let c = self.scratch.cands[ci];
        let coded = c.coded();
        if let Some((_, len)) = c.body {
            return (record_bits(len as usize, coded), coded);
        }
        let slot = c.slot as usize;
        let t = &self.tracked[slot];
        let mut w = BitRun::new(&mut self.scratch.body);
        let start = w.len_bits();
        match (coded, t.baseline_tick()) {
            (Coded::Delta { .. }, Some(base_tick)) => self.scratch.memo.write_delta(
                &mut w,
                &self.qz,
                t.id,
                &entities[slot].q,
                tick,
                base_tick,
                &t.base,
            ),
            (Coded::Absolute, _) => write_absolute_run(&mut w, &self.qz, &entities[slot].q),
            _ => {}
        }
        let len = w.len_bits() - start;
        w.finish();
        self.scratch.cands[ci].body = Some((start as u32, len as u32));
        (record_bits(len, coded), coded)
    }

    fn pack(
        &mut self,
        input: &TickInput,
        echo: Option<ClockEcho>,
        elapsed_ticks: u64,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<TickSummary, TransformError> {
        let mut summary = TickSummary::default();
        let hz = self.config.tick_hz;
        if self.path.on_tick(input.now, self.budget_limited_last) {
            // Congested: a burst saved in the bucket must not land on the queue.
            self.bucket.limit(0);
        }
        let rate = self.path.rate_bits_per_s();
        summary.budget_bits_per_s = rate;
        // Wire bytes this tick may take: each datagram costs its payload and the transport's
        // per-packet overhead.
        let mut allowance = self.bucket.refill(rate, hz, elapsed_ticks);
        if let Some(pace) = self.path.pace_bytes_per_tick(hz) {
            // A known bottleneck: the saved burst drains at a pace its queue absorbs.
            allowance = allowance.min(pace as i64);
        }
        let mut sent: i64 = 0;
        // The first datagram's extras: the own blob and the clock echo. A tick with either
        // always sends that first datagram, even over budget or without records.
        let mut extras = Extras {
            blob: input.own_blob,
            echo,
        };
        let max_size = input.max_datagram_size.min(DATAGRAM_BYTES_MAX);
        let mut remaining = self.scratch.cands.len();
        // Payload room left under the budget once a datagram's overhead is paid.
        let payload_room = |sent: i64| (allowance - sent - PACKET_OVERHEAD_BYTES as i64).max(0);
        // Fast path: everything fits in the first datagram, so priority order does not matter.
        let header = HEADER_FIXED_BYTES + varint_len(input.tick.0) + extras.len();
        let room =
            max_size.min((payload_room(0) as usize).max(if extras.forced() { header } else { 0 }));
        // Candidates in priority order, sorted lazily: the budget usually stops the packer long
        // before the end, so only a prefix is ever ordered (a strict total order, so the prefix
        // is exactly that of a full sort).
        let mut sorted = 0usize;
        let mut chunk = (room * 8 / 24 + FIT_ATTEMPTS_MAX).max(32);
        let mut ordered = false;
        if room > header {
            let bits_avail = (room - header) * 8;
            // After a tick that did not fit, first measure in priority order: if it does not
            // fit again, the bodies encoded are the ones the packer wants first (an id-order
            // attempt would encode bodies that are then left for later ticks).
            let worth_trying = !self.single_failed_last || {
                self.fill_order();
                ordered = true;
                self.single_fits(input, bits_avail, &mut sorted, &mut chunk)
            };
            if worth_trying {
                if ordered {
                    // It fits after all: encode afresh in id order.
                    self.scratch.body.clear();
                    for c in &mut self.scratch.cands {
                        c.body = None;
                    }
                }
                if let Some(dgram) =
                    self.try_single_datagram(input, extras, bits_avail, &mut summary)
                {
                    debug_assert!(dgram.len() <= room, "{} > {room}", dgram.len());
                    self.single_failed_last = false;
                    self.budget_limited_last = false;
                    summary.datagrams = 1;
                    summary.bytes = dgram.len();
                    out.push(dgram);
                    self.bucket
                        .spend(summary.bytes + PACKET_OVERHEAD_BYTES, rate, hz);
                    return Ok(summary);
                }
            }
            self.single_failed_last = true;
        }
        self.scratch.slot_cand.resize(self.tracked.len(), 0);
        if !ordered {
            self.fill_order();
        }
        loop {
            let header = HEADER_FIXED_BYTES + varint_len(input.tick.0) + extras.len();
            let left_in_budget = payload_room(sent) as usize;
            let room = if extras.forced() {
                max_size.min(left_in_budget.max(header))
            } else {
                max_size.min(left_in_budget)
            };
            if !extras.forced() && (remaining == 0 || room <= header) {
                break;
            }
            let bits_avail = room.saturating_sub(header) * 8;
            self.scratch.picked.reset(self.tracked.len());
            let mut used = 0usize;
            let mut misses = 0;
            for k in 0..self.scratch.order.len() {
                if k >= sorted {
                    sorted = sort_prefix(&mut self.scratch.order, sorted, chunk);
                    chunk *= 2;
                }
                let ci = self.scratch.order[k] as u32 as usize;
                if self.scratch.cands[ci].placed {
                    continue;
                }
                if self.scratch.picked.len >= RECORDS_PER_DATAGRAM_MAX || misses >= FIT_ATTEMPTS_MAX
                {
                    break;
                }
                let (bits, _) = self.body_bits(ci, input.tick, input.entities);
                let slot = self.scratch.cands[ci].slot as usize;
                let id = self.tracked[slot].id;
                // Slot order is id order: the neighbours in the datagram are the nearest
                // chosen slots.
                let prev = self.scratch.picked.prev(slot).map(|p| self.tracked[p].id);
                let next = self.scratch.picked.next(slot).map(|n| self.tracked[n].id);
                let index_bits = gap_bits(prev, id) as isize
                    + next.map_or(0, |n| gap_bits(Some(id), n) as isize)
                    - next.map_or(0, |n| gap_bits(prev, n) as isize);
                let total = (bits as isize + index_bits).max(0) as usize;
                if used + total > bits_avail {
                    misses += 1;
                    continue;
                }
                used += total;
                self.scratch.picked.insert(slot);
                self.scratch.slot_cand[slot] = ci as u32;
                self.scratch.cands[ci].placed = true;
                remaining -= 1;
            }
            if self.scratch.picked.len == 0 && !extras.forced() {
                break;
            }
            self.scratch.chosen.clear();
            for slot in self.scratch.picked.iter() {
                self.scratch
                    .chosen
                    .push((self.tracked[slot].id, self.scratch.slot_cand[slot] as usize));
            }
            let dgram = self.write_datagram(input, extras, &mut summary);
            debug_assert!(dgram.len() <= room, "{} > {room}", dgram.len());
            sent += (dgram.len() + PACKET_OVERHEAD_BYTES) as i64;
            summary.datagrams += 1;
            summary.bytes += dgram.len();
            out.push(dgram);
            extras = Extras::default();
            // One datagram per tick unless the path's datagram size was what filled it: when
            // the budget limited this one, a second would carry only the crumbs the budget has
            // left, paying a header and a packet's overhead again (what waits goes first next
            // tick instead).
            if room < max_size {
                break;
            }
        }
        summary.deferred = remaining;
        self.budget_limited_last = remaining > 0;
        self.bucket.spend(sent.max(0) as usize, rate, hz);
        Ok(summary)
    }

    /// Whether every candidate fits in one datagram of `bits_avail` record bits, exactly as
    /// [`Self::try_single_datagram`] decides it, measured in priority order (sorting the
    /// prefix of `order` it needs) and stopping at the first overflow. Bodies it encodes are
    /// kept in the scratch for the packer.
    fn single_fits(
        &mut self,
        input: &TickInput,
        bits_avail: usize,
        sorted: &mut usize,
        chunk: &mut usize,
    ) -> bool {
        let n = self.scratch.cands.len();
        if n == 0 || n > RECORDS_PER_DATAGRAM_MAX {
            return false;
        }
        let common = common_age(self.scratch.cands.iter().map(|c| c.age as u64));
        let mut total = 0usize;
        for k in 0..n {
            if k >= *sorted {
                *sorted = sort_prefix(&mut self.scratch.order, *sorted, *chunk);
                *chunk *= 2;
            }
            let ci = self.scratch.order[k] as u32 as usize;
            self.body_bits(ci, input.tick, input.entities);
            let c = self.scratch.cands[ci];
            let id = self.tracked[c.slot as usize].id;
            let prev = ci
                .checked_sub(1)
                .map(|p| self.tracked[self.scratch.cands[p].slot as usize].id);
            let kind_bits = match c.coded() {
                Coded::Delta { age } if age != common => 2 + eg_bits(age - 1, AGE_EG_K),
                _ => 2,
            };
            let body_len = c.body.map_or(0, |b| b.1 as usize);
            total += gap_bits(prev, id) + kind_bits + body_len;
            if total > bits_avail {
                return false;
            }
        }
        true
    }

    fn fill_order(&mut self) {
        self.scratch.order.clear();
        self.scratch.order.extend(
            self.scratch
                .cands
                .iter()
                .enumerate()
                .map(|(ci, c)| order_key(c.priority, ci)),
        );
    }
}

/// A candidate's place in the priority order as one integer: priority descending (as
/// `f32::total_cmp`), then candidate index ascending, which is entity id ascending (candidates
/// are collected in id order). Keys are unique, so the order is strict.
#[inline]
fn order_key(priority: f32, ci: usize) -> u64 {
    let b = priority.to_bits() as i32;
    let total = b ^ (((b >> 31) as u32) >> 1) as i32; // `total_cmp`'s key
    let ascending = (total as u32) ^ 0x8000_0000;
    ((!ascending as u64) << 32) | ci as u64
}

/// Orders the next `chunk` keys after the first `sorted` (already in order, and all before the
/// rest): returns the new length of the ordered prefix.
///
/// `#[inline]` keeps it inlined into `pack` as it was when the replicator was one file: the
/// compiler places `ClientReplicator`'s methods with their type (in `replicator`'s codegen
/// unit), so a plain function here would be a cross-unit call, which LLVM no longer inlines.
#[inline]
fn sort_prefix(keys: &mut [u64], sorted: usize, chunk: usize) -> usize {
    let rest = &mut keys[sorted..];
    if rest.len() > chunk {
        let (head, _, _) = rest.select_nth_unstable(chunk);
        head.sort_unstable();
        sorted + chunk
    } else {
        rest.sort_unstable();
        keys.len()
    }
}

/// Worst-case record bits without the index (a delta naming its age explicitly; naming the
/// datagram's common age instead only makes it shorter).
fn record_bits(body: usize, coded: Coded) -> usize {
    match coded {
        Coded::Delta { age } => 2 + eg_bits(age - 1, AGE_EG_K) + body,
        Coded::Absolute | Coded::Left => 2 + body,
    }
}

fn eg_bits(v: u64, k: u32) -> usize {
    (2 * bit_width(v + (1 << k)) - k - 1) as usize
}

fn gap_bits(prev: Option<EntityId>, id: EntityId) -> usize {
    eg_bits(gap(prev, id), INDEX_EG_K)
}
