//! [`ClientReplicator`]: the server's transform sender for one client.
//!
//! Per tick: update interest, grow the priority of every entity that needs sending, then fill
//! datagrams highest priority first up to the client's byte budget and the connection's current
//! datagram size. Memory is bounded: one [`Tracked`] per world entity, [`SENT_HISTORY_LEN`]
//! remembered datagrams, scratch buffers reused across ticks.
//!
//! This file holds the public types and the replicator's state; its work is split by concern:
//! - [`tracked`]: the per-entity state (baseline, last value sent, interest) and its packed
//!   value layout;
//! - [`priority`]: aligning that state with the tick's entities, interest changes and the
//!   priority accumulator that picks this tick's candidates;
//! - [`pack`]: [`ClientReplicator::write_tick`], the byte budget and packing candidates into
//!   datagrams;
//! - [`datagram`]: encoding one datagram and recording what it carried;
//! - [`ack`]: the sent-datagram history, [`ClientReplicator::handle_ack`] (RTT, budget) and the
//!   acknowledged values becoming baselines as the next tick starts;
//! - [`memo`]: delta bodies encoded once per thread and tick, shared by every client coding
//!   the same value against the same baseline;
//! - [`slot_set`]: the bitset of slots chosen for the datagram being filled.

mod ack;
mod datagram;
mod memo;
mod pack;
mod priority;
mod slot_set;
#[cfg(test)]
mod tests;
mod tracked;

#[cfg(test)]
pub(crate) use self::ack::SPARE_RECORD_LISTS_MAX;
use self::ack::{SentDatagram, SentRecord};
#[cfg(test)]
pub(crate) use self::datagram::{RECORD_LIST_SLACK, RECORD_LIST_STEP};
use self::pack::Scratch;
use self::tracked::Tracked;
use super::budget::{ByteBucket, PathBudget, PathSignals};
use super::quant::{QTransform, Quantizer};
use super::{ClockEcho, ConfigError, TransformConfig, SENT_HISTORY_LEN};
use crate::time::{Tick, Time};
use crate::types::{EntityId, SessionId, Transform, Vec3};

/// Spare room a per-client list is given when it grows, as a fraction of what it needs: an
/// eighth (see [`fit_capacity`]).
const LIST_HEADROOM_DIV: usize = 8;
/// Elements a per-client list may hold beyond its need and a quarter before [`fit_capacity`]
/// shrinks it: small lists are left alone, so a list whose need wobbles around a few is not
/// reallocated over and over.
const LIST_SHRINK_SLACK: usize = 16;

/// Gives the per-client entity list (`tracked`) room for `needed` elements with a capacity
/// that follows that need: when it must grow, to `needed` plus an eighth, and back to that once
/// it holds more than that plus another eighth and [`LIST_SHRINK_SLACK`].
///
/// `Vec`'s own growth doubles: a list whose need once passed its capacity kept about twice its
/// need for the connection's lifetime, and as the largest crowd a client had seen grew over a
/// run, one client after another doubled. Shrinking only below half its capacity did no
/// better in a soak: each client's list rose to the largest crowd it had met, and with players
/// walking that largest crowd only grows (300 clients: capacity +18% in 4 minutes for +4% of
/// entities tracked). Now the capacity stays within a quarter and the slack of the need of
/// the moment; it is reallocated when the crowd grows by an eighth, or shrinks by an eighth
/// and a dozen entities more. Record lists follow their need in fixed steps instead
/// (`fit_record_list`).
#[inline]
fn fit_capacity<T>(v: &mut Vec<T>, needed: usize) {
    let target = needed + needed / LIST_HEADROOM_DIV;
    if v.capacity() < needed {
        v.reserve_exact(target.saturating_sub(v.len()));
    } else if v.capacity() > target + target / LIST_HEADROOM_DIV + LIST_SHRINK_SLACK {
        v.shrink_to(target);
    }
}

/// Exp-Golomb order of entity index gaps: consecutive ids cost 1 bit.
pub(crate) const INDEX_EG_K: u32 = 0;
/// Round-trip estimate before the first ack, microseconds: a typical internet RTT, so resends
/// of unacknowledged values start neither at once nor after seconds.
const RTT_INITIAL_US: u64 = 200_000;
// The ack bitset `unacked` has one bit per history slot in whole words.
const _: () = assert!(SENT_HISTORY_LEN % 64 == 0);

/// One entity's current state, quantized once per tick and shared by every client's replicator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EntitySample {
    /// The entity.
    pub id: EntityId,
    /// Its quantized transform this tick.
    pub q: QTransform,
    /// Its position, metres (for interest and distance priority).
    pub position: Vec3,
    /// Per-entity priority weight (1 = normal; higher for important entities, 0 = only when
    /// nothing else needs the budget).
    pub weight: f32,
    /// The session that owns it, if any: owners already predict it, so it weighs less for them.
    pub owner: Option<SessionId>,
    /// Relevant to every client regardless of distance: always in interest, weighted as if
    /// next to the viewer.
    pub global: bool,
}

impl EntitySample {
    /// A sample of `t` with weight 1 and no owner.
    pub fn new(id: EntityId, t: &Transform, qz: &Quantizer) -> EntitySample {
        EntitySample {
            id,
            q: qz.quantize(t),
            position: t.position,
            weight: 1.0,
            owner: None,
            global: false,
        }
    }
}

/// The inputs of one [`ClientReplicator::write_tick`] call.
#[derive(Clone, Copy, Debug)]
pub struct TickInput<'a> {
    /// The server tick being sent.
    pub tick: Tick,
    /// Now.
    pub now: Time,
    /// The client's viewpoint (its player's position), `None` for no interest limit.
    pub viewer: Option<Vec3>,
    /// The entities of the world this tick, sorted by strictly ascending id: all of them, or
    /// those an [`InterestGrid`](super::InterestGrid) query found near the viewer (which include
    /// [`ClientReplicator::retained`]). An entity held before and missing now is taken as
    /// removed from the world (the reliable stream tells the client), so leave out only what
    /// the grid leaves out.
    pub entities: &'a [EntitySample],
    /// The connection's current `max_datagram_size()`, bytes (asked again at every call).
    pub max_datagram_size: usize,
    /// The client's own-player authoritative state, ≤
    /// [`OWN_BLOB_BYTES_MAX`](super::OWN_BLOB_BYTES_MAX) bytes, carried byte-aligned in the
    /// tick's first datagram.
    pub own_blob: Option<&'a [u8]>,
}

/// What one [`ClientReplicator::write_tick`] produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickSummary {
    /// Datagrams written.
    pub datagrams: usize,
    /// Their total size, bytes.
    pub bytes: usize,
    /// Entity updates (delta or absolute) written.
    pub updates: usize,
    /// Of those, absolute (no usable baseline).
    pub absolute: usize,
    /// Left-interest notices written.
    pub left_notices: usize,
    /// Candidates left for a later tick by the budget or datagram size.
    pub deferred: usize,
    /// The budget's rate this tick, bits per second (see [`super::budget`]).
    pub budget_bits_per_s: u32,
}

/// The server's transform sender for one client. See the [module docs](super) for the format.
///
/// Drive it with [`ClientReplicator::write_tick`] once per server tick (after quantizing the
/// world once into [`EntitySample`]s) and [`ClientReplicator::handle_ack`] for every ack header
/// the client sends; hand each datagram written to the connection's unreliable datagram send.
#[derive(Clone, Debug)]
pub struct ClientReplicator {
    config: TransformConfig,
    qz: Quantizer,
    session: Option<SessionId>,
    own_entity: Option<EntityId>,
    /// The budget's token bucket (bytes on the wire).
    bucket: ByteBucket,
    /// The budget's rate, following the path.
    path: PathBudget,
    /// Whether the last tick left candidates for later (the budget limited the sender).
    budget_limited_last: bool,
    /// Datagrams before this sequence number have had their fate (delivered or lost) told to
    /// `path`.
    fate_next_seq: u64,
    tracked: Vec<Tracked>,
    /// The ids of `tracked` in interest or owed a "left interest" notice, ascending: what
    /// [`ClientReplicator::retained`] gives. Rebuilt by every `write_tick`, kept exact by
    /// `handle_ack` (which is what ends a pending notice).
    retained_ids: Vec<EntityId>,
    history: Vec<SentDatagram>,
    /// Emptied record lists of acknowledged datagrams, reused by the next datagrams: with
    /// prompt acks a few lists, warm in the cache, serve every datagram instead of one per
    /// history slot. At most [`SPARE_RECORD_LISTS_MAX`](ack::SPARE_RECORD_LISTS_MAX) here, and
    /// at most [`SENT_HISTORY_LEN`] lists in `history` and here together.
    spare_records: Vec<Vec<SentRecord>>,
    /// The `history` slots of datagrams acknowledged whose records are not yet applied to
    /// `tracked` (see [`ClientReplicator::apply_acked`]): at most [`SENT_HISTORY_LEN`], each
    /// slot acknowledged at most once between two `write_tick`s.
    acked_unapplied: Vec<u16>,
    /// One bit per `history` slot: set while it holds a datagram sent and not yet acknowledged
    /// (`valid && !acked`), so an ack looks at [`SENT_HISTORY_LEN`] / 8 bytes, not at every
    /// remembered datagram its window covers.
    unacked: [u64; SENT_HISTORY_LEN / 64],
    next_seq: u64,
    /// The first sequence number the last `write_tick` used (its datagrams are
    /// `tick_first_seq..next_seq`).
    tick_first_seq: u64,
    next_epoch: u32,
    last_tick: Option<Tick>,
    srtt_us: Option<u64>,
    /// Buffers used only within one `write_tick`: empty between calls, the thread's
    /// [`SCRATCH`](pack::SCRATCH) moved in for the call.
    scratch: Scratch,
    /// Whether the last tick's candidates did not fit in one datagram.
    single_failed_last: bool,
    /// The clock echo the next `write_tick` carries ([`ClientReplicator::set_clock_echo`]).
    echo: Option<ClockEcho>,
}

impl ClientReplicator {
    /// A replicator for one client. `session` is the client's session (for ownership weights).
    pub fn new(config: TransformConfig, session: Option<SessionId>) -> Result<Self, ConfigError> {
        let qz = Quantizer::new(&config)?;
        Ok(ClientReplicator {
            bucket: ByteBucket::full(config.budget_bits_per_s, config.tick_hz),
            path: PathBudget::new(config.budget_bits_per_s),
            budget_limited_last: false,
            fate_next_seq: 0,
            config,
            qz,
            session,
            own_entity: None,
            tracked: Vec::new(),
            retained_ids: Vec::new(),
            history: vec![SentDatagram::default(); SENT_HISTORY_LEN],
            unacked: [0; SENT_HISTORY_LEN / 64],
            spare_records: Vec::new(),
            acked_unapplied: Vec::new(),
            next_seq: 0,
            tick_first_seq: 0,
            next_epoch: 0,
            last_tick: None,
            srtt_us: None,
            scratch: Scratch::default(),
            single_failed_last: false,
            echo: None,
        })
    }

    /// Has the next [`ClientReplicator::write_tick`] carry `echo` in its first datagram (flags
    /// bit 1, PROTOCOL.md 12.4), writing a datagram without records for it if the tick has
    /// nothing else to send. Set it just before that call: its hold and phase are as of then.
    /// The next call consumes it whatever it writes.
    pub fn set_clock_echo(&mut self, echo: ClockEcho) {
        self.echo = Some(echo);
    }

    /// The quantizer (same config as the client's receiver).
    pub fn quantizer(&self) -> &Quantizer {
        &self.qz
    }

    /// Excludes the client's own player from the stream (it rides in the own blob instead).
    pub fn set_own_entity(&mut self, id: Option<EntityId>) {
        self.own_entity = id;
    }

    /// The entity excluded as the client's own player, if any.
    pub fn own_entity_id(&self) -> Option<EntityId> {
        self.own_entity
    }

    /// Overrides this client's budget ceiling, bits per second (clamped to the configured
    /// minimum): the rate adapts to the path below it.
    pub fn set_budget_bits_per_s(&mut self, bits_per_s: u32) {
        self.path.set_ceiling(bits_per_s);
    }

    /// What the transport reports about this client's path (quinn's path stats: RTT,
    /// congestion window, congestion events), for the budget to follow. Call it before each
    /// tick when the transport has them; without it the budget follows the acks alone.
    pub fn handle_path_signals(&mut self, signals: PathSignals) {
        self.path.on_path_signals(signals);
    }

    /// The budget's rate controller (rate, loss and queueing delay it sees).
    pub fn path_budget(&self) -> &PathBudget {
        &self.path
    }

    /// Bytes in the budget's bucket now (wire bytes: payload and per-datagram overhead).
    pub fn budget_tokens(&self) -> i64 {
        self.bucket.tokens()
    }

    /// Smoothed round-trip estimate from acks, if any ack arrived yet.
    pub fn rtt_estimate_us(&self) -> Option<u64> {
        self.srtt_us
    }

    /// Whether the entity is currently in this client's interest.
    pub fn in_interest(&self, id: EntityId) -> bool {
        self.find(id).is_some_and(|i| self.tracked[i].in_interest)
    }

    /// The entities this replicator holds state for that must stay in its input while they
    /// exist: those in interest and those owed a "left interest" notice. A caller that gives
    /// [`ClientReplicator::write_tick`] only the entities near the viewer (an
    /// [`InterestGrid`](super::InterestGrid)) adds these, so that leaving is noticed; any
    /// other entity it leaves out is one this tick would not touch.
    ///
    /// Ascending by id, read from a list kept beside the per-entity state (one `u32` each), so
    /// a caller with many replicators does not walk all their state to get it.
    pub fn retained(&self) -> impl Iterator<Item = EntityId> + '_ {
        debug_assert!(self
            .tracked
            .iter()
            .filter(|t| t.in_interest || t.left().is_pending())
            .map(|t| t.id)
            .eq(self.retained_ids.iter().copied()));
        self.retained_ids.iter().copied()
    }

    /// Wire bytes this client may be sent per tick at the budget's current rate.
    pub fn budget_bytes_per_tick(&self) -> usize {
        super::budget::per_tick_bytes(self.path.rate_bits_per_s(), self.config.tick_hz)
    }

    /// The most the budget's bucket holds, wire bytes: [`super::budget::BUDGET_BURST_S`] at
    /// the ceiling. Over any run of ticks the wire bytes sent (payload plus
    /// [`super::budget::PACKET_OVERHEAD_BYTES`] per datagram) never exceed ticks × the
    /// ceiling's share per tick + this (own blobs aside).
    pub fn budget_burst_bytes(&self) -> usize {
        super::budget::capacity_bytes(self.path.ceiling_bits_per_s(), self.config.tick_hz)
    }

    /// The entities the last [`ClientReplicator::write_tick`] sent updates for, in datagram
    /// order (for bandwidth attribution and operator views). One pass over that tick's records.
    pub fn last_tick_updates(&self) -> impl Iterator<Item = EntityId> + '_ {
        (self.tick_first_seq..self.next_seq).flat_map(move |s| {
            let d = &self.history[(s % SENT_HISTORY_LEN as u64) as usize];
            d.records.iter().filter(|r| !r.is_left()).map(|r| r.id)
        })
    }

    /// The full sequence numbers of the datagrams the last [`ClientReplicator::write_tick`]
    /// wrote (the first carries the own blob, if any).
    pub fn last_tick_seqs(&self) -> std::ops::Range<u64> {
        self.tick_first_seq..self.next_seq
    }

    /// Whether the datagram with full sequence number `seq_full` was acknowledged; `None` once
    /// it is no longer remembered (or was never sent).
    pub fn datagram_acked(&self, seq_full: u64) -> Option<bool> {
        let d = &self.history[(seq_full % SENT_HISTORY_LEN as u64) as usize];
        (d.valid && d.seq_full == seq_full).then_some(d.acked)
    }

    /// Starts sequence numbers further on (tests of wrap-around).
    #[cfg(test)]
    pub(crate) fn skip_seqs(&mut self, n: u64) {
        self.next_seq += n;
    }

    /// The record lists it holds (remembered datagrams' and spare ones): how many, and their
    /// bytes by capacity (tests of what a stall leaves behind).
    #[cfg(test)]
    pub(crate) fn record_lists_held(&self) -> (usize, usize) {
        let lists = self
            .history
            .iter()
            .map(|d| &d.records)
            .chain(&self.spare_records)
            .filter(|r| r.capacity() != 0);
        let (n, cap) = lists.fold((0, 0), |(n, cap), r| (n + 1, cap + r.capacity()));
        (n, cap * std::mem::size_of::<SentRecord>())
    }

    /// The per-entity state's capacity, entities (tests of memory following the crowd).
    #[cfg(test)]
    pub(crate) fn tracked_capacity(&self) -> usize {
        self.tracked.capacity()
    }

    fn find(&self, id: EntityId) -> Option<usize> {
        self.tracked.binary_search_by_key(&id, |t| t.id).ok()
    }

    fn resend_after_us(&self) -> u64 {
        let rtt = self.srtt_us.unwrap_or(RTT_INITIAL_US);
        rtt + rtt / 4 + 1_000_000 / self.config.tick_hz.max(1) as u64
    }
}
