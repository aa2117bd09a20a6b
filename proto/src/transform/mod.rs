//! Entity transforms over datagrams: quantization, delta compression, priorities, interest.
//!
//! Hand-written, not taken from a crate: this codec is the product's core (its bandwidth is the
//! figure neonet competes on), and no published crate does per-client delta compression against
//! acknowledged baselines with a priority accumulator under a byte budget.
//!
//! # Pieces
//! - [`TransformConfig`] / [`Quantizer`]: world bounds, precision, smallest-three rotations.
//!   Both sides quantize with the same functions, so they agree on every [`QTransform`] bit.
//! - [`Seq`], [`AckHeader`], [`AckTracker`]: wrapping datagram sequence numbers (distinct from
//!   the never-wrapping [`crate::time::Tick`]) and acks as newest + 64-bit field, so a lost ack costs nothing.
//! - [`ClientReplicator`] (server side, one per client): interest, priority accumulator, budget,
//!   delta compression, datagram packing. Call [`ClientReplicator::write_tick`] once per tick and
//!   [`ClientReplicator::handle_ack`] for every ack header the client sends.
//! - [`budget`]: the budget over time (a token bucket of wire bytes) and its rate following the
//!   path ([`PathBudget`], fed by acks and by the transport's [`PathSignals`]).
//! - [`ReplicaReceiver`] (client side): [`ReplicaReceiver::handle_datagram`] (or
//!   [`ReplicaReceiver::handle_datagram_into`], which reuses one [`ReceivedTick`]'s memory),
//!   then [`ReplicaReceiver::latest`] per entity and [`ReplicaReceiver::ack_header`] to send
//!   upstream.
//! - [`encode_client_datagram`] / [`decode_client_datagram`]: the client's upstream datagram
//!   (ack header, opaque input blob, owned entities' transforms).
//! - `scenario` (feature `sim`): deterministic motion generators and the in-process bandwidth
//!   runner.
//!
//! # Which baseline a delta is against
//! Baselines are per entity, not per datagram: with a priority accumulator and a budget, each
//! entity was last sent, and last acknowledged, in a different datagram, so one baseline per
//! datagram (Fiedler's snapshot scheme) would force most entities back to absolute values.
//!
//! - The server keeps, per client and entity, the newest value the client acknowledged (the
//!   baseline) and a ring of the last [`SENT_HISTORY_LEN`] datagrams it sent (which entity values
//!   each carried). An ack for a datagram promotes each value in it to its entity's baseline if
//!   it is newer than the current one.
//! - Every delta record names its baseline by its **tick age** (ticks are unique per entity: an
//!   entity appears at most once per tick, and ticks never wrap, so `(entity, tick)` names one
//!   value without ambiguity). The datagram header carries one common age, and each record costs
//!   1 bit when it uses it, else an Exp-Golomb age.
//! - The receiver keeps, per entity, the [`RECEIVER_BASELINES_PER_ENTITY`] newest values it
//!   received (by tick). The server only deltas against a baseline if fewer than that many sends
//!   of the entity happened since the baseline's send, so the receiver still holds it: the
//!   receiver can always decode unless a later datagram overtook an earlier one by that many
//!   sends (then the earlier one is stale anyway).
//! - A datagram with any record the receiver could not decode is applied in part but **not
//!   acknowledged**, so the server never promotes a value the receiver does not hold.
//! - Each stored value also keeps its *motion* (change from its own baseline and over how many
//!   ticks), derived identically on both sides at no bit cost; a delta may be against the
//!   baseline extrapolated by that motion, one bit says which (the writer picks the shorter).
//!
//! # Unchanged entities
//! An entity whose quantized value equals the last value sent to this client, once that send is
//! acknowledged, is not sent at all: a world at rest costs nothing beyond acks. A changed value
//! that was sent but not yet acknowledged is resent only after an RTT estimate, so a lost
//! datagram is repaired without resending every tick.
//!
//! # Datagram (server → client), kind tag [`KIND_SERVER_STATE`]
//! `kind u8 | seq u16 LE | tick varint | flags u8 (bit 0: own blob) | [blob len u8, blob] |
//! common age varint | record count varint | bit-packed records`, each record being an
//! Exp-Golomb gap to the previous entity id (ascending) followed by the body in [`record`]'s
//! layout. Everything is bounded: count ≤ [`RECORDS_PER_DATAGRAM_MAX`], size ≤
//! [`crate::wire::limits::DATAGRAM_BYTES_MAX`], blob ≤ [`OWN_BLOB_BYTES_MAX`].

// Axis loops (`for a in 0..3`) index several parallel `[_; 3]` arrays at once; iterator
// chains would hide that they are the same axis.
#![allow(clippy::needless_range_loop)]

pub mod bits;
pub mod budget;
pub mod config;
mod grid;
pub mod quant;
mod receiver;
pub mod record;
mod replicator;
#[cfg(feature = "sim")]
pub mod scenario;
pub mod seq;
mod upstream;

pub use budget::{PathBudget, PathSignals, PACKET_OVERHEAD_BYTES};
pub use config::{ConfigError, PriorityWeights, TransformConfig};
pub use grid::InterestGrid;
pub use quant::{QRot, QTransform, Quantizer};
pub use receiver::{
    decode_server_header, Freshness, ReceivedTick, ReplicaReceiver, ServerDatagramHeader,
    FORGOTTEN_MAX,
};
pub use replicator::{ClientReplicator, EntitySample, TickInput, TickSummary};
pub use seq::{AckHeader, AckTracker, Arrival, Seq};
pub use upstream::{
    decode_client_datagram, encode_client_datagram, encode_client_datagram_clocked, ClientDatagram,
};

/// Kind tag of a server → client transform datagram (first byte), for the driver's multiplexer.
pub const KIND_SERVER_STATE: u8 = 0x01;
/// Kind tag of a client → server datagram (acks, inputs, owned transforms).
pub const KIND_CLIENT_STATE: u8 = 0x02;
/// Kind tag of a client → server datagram that also carries the client's clock, for the server
/// to echo in its next datagram (PROTOCOL.md 12.7). Otherwise the same as [`KIND_CLIENT_STATE`],
/// which stays valid: a client that does no clock sync over datagrams never sends this one.
pub const KIND_CLIENT_STATE_CLOCK: u8 = 0x03;
/// Server datagram flag: an own-player blob follows (PROTOCOL.md 12.4).
pub const FLAG_OWN_BLOB: u8 = 0x01;
/// Server datagram flag: a clock echo ([`ClockEcho`]) follows (PROTOCOL.md 12.4).
pub const FLAG_CLOCK_ECHO: u8 = 0x02;

/// A clock echo in a server datagram (PROTOCOL.md 12.4): what the client needs to measure the
/// round trip without the server's hold and to place the server's tick timeline exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockEcho {
    /// The `client_time_us` of the client datagram (kind [`KIND_CLIENT_STATE_CLOCK`]) echoed.
    pub client_time_us: u64,
    /// Microseconds from the server receiving that client datagram to writing this one.
    pub hold_us: u64,
    /// Microseconds from the scheduled start of the datagram's tick to its writing.
    pub phase_us: u64,
}

impl ClockEcho {
    /// Appends the echo's three varints.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, self.client_time_us);
        write_varint(out, self.hold_us);
        write_varint(out, self.phase_us);
    }

    /// Its encoded length, bytes.
    pub(crate) fn encoded_len(&self) -> usize {
        varint_len(self.client_time_us) + varint_len(self.hold_us) + varint_len(self.phase_us)
    }

    /// Reads the three varints at `pos`.
    pub(crate) fn decode(bytes: &[u8], pos: &mut usize) -> Result<ClockEcho, TransformError> {
        Ok(ClockEcho {
            client_time_us: read_varint(bytes, pos)?,
            hold_us: read_varint(bytes, pos)?,
            phase_us: read_varint(bytes, pos)?,
        })
    }
}
/// Largest own-player blob in a server datagram, bytes: the prediction module's authoritative
/// player state is a few dozen bytes; 64 bounds what a peer can make us copy.
pub const OWN_BLOB_BYTES_MAX: usize = 64;
/// Largest input blob in a client datagram, bytes: a handful of redundant inputs.
pub const INPUT_BLOB_BYTES_MAX: usize = 256;
/// Most owned-entity transforms in one client datagram: a player and a few apps it moves.
pub const OWNED_PER_DATAGRAM_MAX: usize = 32;
/// Most records in one server datagram. A left notice is ≥ 3 bits, so 1024 exceeds what a
/// 1500-byte datagram can hold of anything else; it bounds parsing work.
pub const RECORDS_PER_DATAGRAM_MAX: usize = 1024;
/// Datagrams the server remembers per client for acks, a power of two: at 60 Hz and two
/// datagrams per tick that is 2 s, longer than any RTT a game survives; an ack older than that
/// is ignored and the entities it covered are resent.
pub const SENT_HISTORY_LEN: usize = 256;
/// Values the receiver keeps per entity as delta baselines: 16 sends cover 250 ms of round trip
/// at 60 Hz with every tick carrying the entity; beyond that the server falls back to absolute.
pub const RECEIVER_BASELINES_PER_ENTITY: usize = 16;
/// Oldest baseline a delta may name, in ticks (4.5 min at 60 Hz): a cube asleep for minutes
/// wakes with a delta against its resting value (≈ 20 bits of age instead of 90 bits of
/// absolute value); the bound keeps the common-age varint within 2 bytes.
pub const BASELINE_AGE_MAX_TICKS: u64 = 16_383;
/// Smallest datagram the writer will build, bytes: header (≤ 18) + own blob (≤ 65) + a record.
pub const DATAGRAM_BYTES_MIN: usize = 96;

/// Why a transform datagram was refused. Every variant is the peer's fault (or, for
/// [`TransformError::DatagramTooSmall`] and [`TransformError::BlobTooLarge`], the caller's).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The datagram is empty.
    #[error("empty datagram")]
    Empty,
    /// The first byte names no transform datagram kind.
    #[error("unknown datagram kind {0:#04x}")]
    UnknownKind(u8),
    /// The input ended inside a field.
    #[error("truncated datagram")]
    Truncated,
    /// Larger than [`crate::wire::limits::DATAGRAM_BYTES_MAX`].
    #[error("datagram of {0} bytes exceeds the limit")]
    Oversize(usize),
    /// A field holds a value the format does not allow.
    #[error("malformed datagram: {0}")]
    Malformed(&'static str),
    /// More records than [`RECORDS_PER_DATAGRAM_MAX`] or owned transforms than
    /// [`OWNED_PER_DATAGRAM_MAX`].
    #[error("{0} records exceed the per-datagram limit")]
    TooManyRecords(usize),
    /// A blob is longer than its limit.
    #[error("blob of {len} bytes exceeds the {max}-byte limit")]
    BlobTooLarge {
        /// Its length, bytes.
        len: usize,
        /// The limit, bytes.
        max: usize,
    },
    /// A transform lies outside the configured world bounds or quantization ranges.
    #[error("transform outside the configured bounds")]
    OutOfBounds,
    /// The caller wrote a tick that is not after the previous one written.
    #[error("tick {0:?} is not after the last tick written")]
    TickNotAfterLast(crate::time::Tick),
    /// The caller passed entities not sorted by strictly ascending id.
    #[error("entity samples must be sorted by strictly ascending id")]
    UnsortedEntities,
    /// The caller's `max_datagram_size` cannot hold a header, the blob and one record.
    #[error("max datagram size {0} is below the {DATAGRAM_BYTES_MIN}-byte minimum")]
    DatagramTooSmall(usize),
}

pub(crate) fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

pub(crate) fn varint_len(v: u64) -> usize {
    (bits::bit_width(v).max(1) as usize).div_ceil(7)
}

/// Reads a LEB128 varint at `*pos`, advancing it.
pub(crate) fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, TransformError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *bytes.get(*pos).ok_or(TransformError::Truncated)?;
        *pos += 1;
        if i == 9 && b > 1 {
            return Err(TransformError::Malformed("varint overflow"));
        }
        v |= ((b & 0x7F) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(TransformError::Malformed("varint overflow"))
}

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod tests;
