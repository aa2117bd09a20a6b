//! Writing one datagram: header, index gaps and kind codes around the encoded record bodies,
//! and committing each record to its entity's state and the sent history for acks.

use super::ack::{SentDatagram, SentRecord};
use super::priority::Coded;
use super::tracked::{LeftState, PackedSample, Tracked, RECORD_LEFT_NOTICE};
use super::{ClientReplicator, TickInput, TickSummary, INDEX_EG_K};
use crate::transform::bits::BitRun;
use crate::transform::budget::PACKET_OVERHEAD_BYTES;
use crate::transform::record::{write_absolute_run, Sample, AGE_EG_K};
use crate::transform::{
    write_varint, ClockEcho, FLAG_CLOCK_ECHO, FLAG_OWN_BLOB, KIND_SERVER_STATE,
    RECORDS_PER_DATAGRAM_MAX, SENT_HISTORY_LEN,
};
use crate::types::EntityId;
use crate::wire::limits::DATAGRAM_BYTES_MAX;

/// Records a record list's capacity is a whole number of: 16 (1 KiB of 64-byte
/// [`SentRecord`]s). Lists come in few sizes, so the one a client frees is the size another
/// asks for and the allocator reuses it whole.
pub(crate) const RECORD_LIST_STEP: usize = 16;

/// Records of capacity beyond its need a reused record list may keep: 32 (2 KiB). Less, and a
/// client whose datagrams' record counts wobble around a step boundary would reallocate its
/// lists every few datagrams; more, and lists sized for a past crowd outlive it.
pub(crate) const RECORD_LIST_SLACK: usize = 32;

/// Gives a datagram's record list, empty, room for `needed` records: the list as it is when
/// its capacity is within [`RECORD_LIST_SLACK`] above `needed`, else a new one of `needed`
/// rounded up to [`RECORD_LIST_STEP`].
///
/// Reused lists used to only grow (to their largest need plus an eighth): every client's
/// few lists rose to the largest datagram it had been sent, and a 300-client soak counted
/// them creeping (the same ≈ 745 lists held 4.69 MB, then 5.69 MB three minutes later) while
/// the datagrams did not grow. Now a client's lists hold its present crowd, within the slack.
#[inline]
fn fit_record_list(list: &mut Vec<SentRecord>, needed: usize) {
    debug_assert!(list.is_empty());
    if list.capacity() < needed || list.capacity() > needed + RECORD_LIST_SLACK {
        *list = Vec::with_capacity(needed.div_ceil(RECORD_LIST_STEP).max(1) * RECORD_LIST_STEP);
    }
}

/// What a tick's first datagram carries besides records, in its byte-aligned header.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Extras<'a> {
    /// The own-player state blob (flags bit 0).
    pub(super) blob: Option<&'a [u8]>,
    /// The clock echo (flags bit 1).
    pub(super) echo: Option<ClockEcho>,
}

impl Extras<'_> {
    /// Header bytes they take.
    pub(super) fn len(&self) -> usize {
        self.blob.map_or(0, |b| 1 + b.len()) + self.echo.map_or(0, |e| e.encoded_len())
    }

    /// Whether the datagram carrying them is sent even without records or over budget.
    pub(super) fn forced(&self) -> bool {
        self.blob.is_some() || self.echo.is_some()
    }
}

/// Ages below this may become a datagram's common age: round trips of up to 4 s at 60 Hz.
const COMMON_AGE_CANDIDATES_MAX: usize = 256;

impl ClientReplicator {
    pub(super) fn write_datagram(
        &mut self,
        input: &TickInput,
        extras: Extras,
        summary: &mut TickSummary,
    ) -> Vec<u8> {
        let common = common_age(self.scratch.chosen.iter().map(|&(_, ci)| {
            match self.scratch.cands[ci].coded() {
                Coded::Delta { age } => age,
                _ => 0,
            }
        }));
        self.scratch.out_bits.clear();
        let mut prev: Option<EntityId> = None;
        let mut w = BitRun::new(&mut self.scratch.out_bits);
        for &(id, ci) in &self.scratch.chosen {
            let g = gap(prev, id);
            prev = Some(id);
            let c = &self.scratch.cands[ci];
            let Some((start, len)) = c.body else {
                w.write_eg(g, INDEX_EG_K);
                continue; // unreachable: every chosen candidate has its body computed
            };
            write_index_kind(&mut w, g, c.coded(), common);
            w.append_bits(&self.scratch.body, start as usize, len as usize);
        }
        w.finish();
        let prompt_ack = !self.scratch.chosen.is_empty() || extras.blob.is_some();
        let (seq_full, buf, mut records) =
            self.begin_datagram(input, extras, common, self.scratch.chosen.len());
        let tracked = &mut self.tracked;
        let cands = &self.scratch.cands;
        let left_before = summary.left_notices;
        records.extend(self.scratch.chosen.iter().map(|&(_, ci)| {
            let c = cands[ci];
            commit_record(tracked, c.slot as usize, c.coded(), input, summary)
        }));
        let left = summary.left_notices != left_before;
        self.finish_datagram(input, seq_full, records, buf.len(), prompt_ack, left);
        buf
    }

    /// Writes the header and the packed records; returns the sequence, the buffer and the
    /// (cleared) record list of its history slot.
    fn begin_datagram(
        &mut self,
        input: &TickInput,
        extras: Extras,
        common: u64,
        count: usize,
    ) -> (u64, Vec<u8>, Vec<SentRecord>) {
        let seq_full = self.next_seq;
        self.next_seq += 1;
        let mut buf = Vec::with_capacity(input.max_datagram_size.min(DATAGRAM_BYTES_MAX));
        buf.push(KIND_SERVER_STATE);
        buf.extend_from_slice(&(seq_full as u16).to_le_bytes());
        write_varint(&mut buf, input.tick.0);
        let mut flags = 0;
        if extras.blob.is_some() {
            flags |= FLAG_OWN_BLOB;
        }
        if extras.echo.is_some() {
            flags |= FLAG_CLOCK_ECHO;
        }
        buf.push(flags);
        if let Some(b) = extras.blob {
            buf.push(b.len() as u8);
            buf.extend_from_slice(b);
        }
        if let Some(e) = extras.echo {
            e.encode(&mut buf);
        }
        write_varint(&mut buf, common);
        write_varint(&mut buf, count as u64);
        self.scratch.out_bits.copy_to(&mut buf);
        let slot = (seq_full % SENT_HISTORY_LEN as u64) as usize;
        let mut records = std::mem::take(&mut self.history[slot].records);
        if records.capacity() == 0 {
            records = self.spare_records.pop().unwrap_or_default();
        }
        records.clear();
        fit_record_list(&mut records, count);
        (seq_full, buf, records)
    }

    fn finish_datagram(
        &mut self,
        input: &TickInput,
        seq_full: u64,
        records: Vec<SentRecord>,
        len: usize,
        prompt_ack: bool,
        left_notices: bool,
    ) {
        let slot = (seq_full % SENT_HISTORY_LEN as u64) as usize;
        self.history[slot] = SentDatagram {
            seq_full,
            tick: input.tick,
            valid: true,
            acked: false,
            sent_at: input.now,
            wire_bytes: (len + PACKET_OVERHEAD_BYTES) as u32,
            prompt_ack,
            left_notices,
            records,
        };
        self.unacked[slot / 64] |= 1u64 << (slot % 64);
    }

    /// Fast path: every candidate, in id order, written straight into one datagram. Returns
    /// `None` (and leaves all state as it was) if they do not fit in `bits_avail` bits.
    pub(super) fn try_single_datagram(
        &mut self,
        input: &TickInput,
        extras: Extras,
        bits_avail: usize,
        summary: &mut TickSummary,
    ) -> Option<Vec<u8>> {
        let n = self.scratch.cands.len();
        if n == 0 || n > RECORDS_PER_DATAGRAM_MAX {
            return None;
        }
        let common = common_age(self.scratch.cands.iter().map(|c| c.age as u64));
        // Written into the body scratch (empty until now), each body's range remembered: if the
        // records do not fit, the packer reuses the bodies instead of encoding them again.
        debug_assert_eq!(self.scratch.body.len_bits(), 0);
        let mut prev: Option<EntityId> = None;
        let mut w = BitRun::new(&mut self.scratch.body);
        for c in self.scratch.cands.iter_mut() {
            let slot = c.slot as usize;
            let t = &self.tracked[slot];
            let q = &input.entities[slot].q;
            let coded = c.coded();
            write_index_kind(&mut w, gap(prev, t.id), coded, common);
            prev = Some(t.id);
            let start = w.len_bits();
            match (coded, t.baseline_tick()) {
                (Coded::Delta { .. }, Some(base_tick)) => self
                    .scratch
                    .memo
                    .write_delta(&mut w, &self.qz, t.id, q, input.tick, base_tick, &t.base),
                (Coded::Absolute, _) => write_absolute_run(&mut w, &self.qz, q),
                _ => {}
            }
            let end = w.len_bits();
            c.body = Some((start as u32, (end - start) as u32));
            if end > bits_avail {
                w.finish();
                return None;
            }
        }
        w.finish();
        std::mem::swap(&mut self.scratch.body, &mut self.scratch.out_bits);
        let (seq_full, buf, mut records) = self.begin_datagram(input, extras, common, n);
        let tracked = &mut self.tracked;
        let left_before = summary.left_notices;
        // `extend` over a slice's `map` writes each record in place, with one capacity check.
        records.extend(self.scratch.cands.iter_mut().map(|c| {
            c.placed = true;
            commit_record(tracked, c.slot as usize, c.coded(), input, summary)
        }));
        let left = summary.left_notices != left_before;
        // Never empty: the fast path has at least one candidate.
        self.finish_datagram(input, seq_full, records, buf.len(), true, left);
        Some(buf)
    }
}

/// The most frequent nonzero delta age among `ages` (0 for none), which a datagram names once
/// as its common age. Ages of at least [`COMMON_AGE_CANDIDATES_MAX`] (rare old baselines) never
/// become it. The counts live on the stack, always cached (a field would be one more cold
/// buffer per client).
#[inline(always)]
pub(super) fn common_age(ages: impl Iterator<Item = u64>) -> u64 {
    let mut counts = [0u16; COMMON_AGE_CANDIDATES_MAX];
    let (mut common, mut best) = (0u64, 0u16);
    for age in ages.filter(|&a| a != 0) {
        let Some(n) = counts.get_mut(age as usize) else {
            continue;
        };
        *n += 1;
        if *n > best {
            best = *n;
            common = age;
        }
    }
    common
}

/// The Exp-Golomb value of the gap from `prev` to `id` (ids strictly ascending).
#[inline]
pub(super) fn gap(prev: Option<EntityId>, id: EntityId) -> u64 {
    match prev {
        None => id.0 as u64,
        Some(p) => (id.0 - p.0 - 1) as u64,
    }
}

/// Writes a record's index gap, then its kind code and baseline reference: the usual record
/// (next id, delta against the common age) in one write.
#[inline(always)]
fn write_index_kind(w: &mut BitRun, gap: u64, coded: Coded, common: u64) {
    if gap == 0 && matches!(coded, Coded::Delta { age } if age == common) {
        // Exp-Golomb (order 0) of 0 is `1`; then the kind `11`.
        w.write_fitting(0b111, 3);
    } else {
        w.write_eg(gap, INDEX_EG_K);
        write_kind(w, coded, common);
    }
}

/// Writes a record's kind code and, for deltas, its baseline reference.
#[inline(always)]
fn write_kind(w: &mut BitRun, coded: Coded, common: u64) {
    match coded {
        Coded::Delta { age } => {
            if age == common {
                w.write_fitting(0b11, 2);
            } else {
                w.write_fitting(0b01, 2);
                w.write_eg(age - 1, AGE_EG_K);
            }
        }
        Coded::Absolute => w.write_fitting(0b10, 2),
        Coded::Left => w.write_fitting(0b00, 2),
    }
}

/// The sample field of a left notice's [`SentRecord`]: only its flag is read.
const LEFT_NOTICE_SAMPLE: PackedSample = PackedSample {
    flags: RECORD_LEFT_NOTICE,
    ..PackedSample::ZERO
};

/// Updates the state of the entity in `tracked[slot]` for a record just written and returns
/// what acks need of it. A delta was coded against the entity's current baseline.
///
/// Inlined into the loops over a datagram's records: as a call it saved and restored six
/// registers and spilled its locals for each record.
#[inline(always)]
fn commit_record(
    tracked: &mut [Tracked],
    slot: usize,
    coded: Coded,
    input: &TickInput,
    summary: &mut TickSummary,
) -> SentRecord {
    let t = &mut tracked[slot];
    t.priority = 0.0;
    let (id, epoch) = (t.id, t.epoch);
    match coded {
        Coded::Left => {
            t.set_left(LeftState::sent_at(input.now));
            summary.left_notices += 1;
            SentRecord {
                id,
                slot: slot as u32,
                epoch,
                send_index: 0,
                sample: LEFT_NOTICE_SAMPLE,
            }
        }
        Coded::Delta { .. } | Coded::Absolute => {
            let q = &input.entities[slot].q;
            // Packed straight from the stored baseline: unpacking it into a `Sample`, deriving
            // the new one and packing that again touched three copies per record.
            let sample = match coded {
                Coded::Delta { age } if t.has_baseline() => {
                    PackedSample::from_base(q, age as u16, &t.base)
                }
                _ => PackedSample::absolute(q),
            };
            debug_assert_eq!(
                sample.unpack(input.tick),
                match (coded, &t.baseline()) {
                    (Coded::Delta { .. }, Some(b)) => Sample::from_base(input.tick, *q, b),
                    _ => Sample::absolute(input.tick, *q),
                }
            );
            let send_index = t.sends;
            t.sends = t.sends.wrapping_add(1);
            t.set_last_sent(q, send_index, input.now);
            summary.updates += 1;
            if matches!(coded, Coded::Absolute) {
                summary.absolute += 1;
            }
            SentRecord {
                id,
                slot: slot as u32,
                epoch,
                send_index,
                sample,
            }
        }
    }
}
