//! The snapshot on its way: a snapshot whose encoding is larger than
//! [`SNAPSHOT_PIECE_BYTES_MAX`] goes as `SnapshotPiece`s, each sent only while the
//! connection's send queue has room ([`SNAPSHOT_QUEUE_BUDGET_BYTES`]), so a big world reaches a
//! newcomer at its path's pace instead of filling its send queue at once (which the relay
//! answers by closing the connection: no world the quotas admit can become unjoinable that way).
//!
//! How full a connection's send queue is the driver reports ([`ServerCore::handle_send_queue`],
//! before every tick, as it reports path signals); between two reports the core counts what it
//! sent since as queued. A connection whose driver never reported gets every piece at once (a
//! test harness, a host game that drains every transmit in full).
//!
//! While the pieces go, every other reliable frame for that connection (broadcasts, chat, its
//! `ResumeToken`) is held in the core, in order, and released after the last piece: the client
//! receives nothing it cannot apply before its snapshot. What is held is bounded
//! ([`SNAPSHOT_HELD_BYTES_MAX`]); past it the newcomer is closed as too slow, as the relay
//! closes a connection whose send queue overflows. A `Close` is never held: it drops the rest.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{ConnId, ServerCore, Transmit};
use crate::types::Bytes;
use crate::wire::codec;
use crate::wire::limits::{SNAPSHOT_PIECES_MAX, SNAPSHOT_PIECE_BYTES_MAX};
use crate::wire::msg::{Channel, CloseReason, ServerMsg, Snapshot};

/// Most bytes the core lets wait in a connection's send queue while its snapshot's pieces go:
/// 1 MiB. A piece is sent only if the queue (as last reported, plus what was sent since) stays
/// within this with it. A quarter of the relay's 4 MiB queue per channel
/// (`CHANNEL_QUEUE_BYTES_MAX`), leaving room for what is held meanwhile
/// ([`SNAPSHOT_HELD_BYTES_MAX`]) when it is released; on a 100 Mbit/s path with 50 ms of round
/// trip it is still more than one bandwidth-delay product (625 KB), so pacing costs a fast path
/// nothing.
pub const SNAPSHOT_QUEUE_BUDGET_BYTES: usize = 1024 * 1024;

/// Most bytes of other reliable frames held for one connection while its snapshot's pieces go:
/// 2 MiB. Released at once after the last piece, so with [`SNAPSHOT_QUEUE_BUDGET_BYTES`] they
/// still fit the relay's 4 MiB send queue. A world changing faster than a newcomer's path can
/// take the snapshot and the changes passes it: the newcomer is closed (`Timeout`, so its
/// client tries again) rather than the core's memory growing.
pub const SNAPSHOT_HELD_BYTES_MAX: usize = 2 * 1024 * 1024;

/// A snapshot whose pieces are on their way to one connection, and what waits behind it.
#[derive(Debug)]
pub(super) struct SnapshotStream {
    /// The encoded `Snapshot` message (tag included).
    body: Vec<u8>,
    /// The next piece to send.
    next: u32,
    /// How many pieces there are.
    count: u32,
    /// Reliable frames for the connection sent meanwhile, in order.
    held: VecDeque<(Channel, Arc<[u8]>)>,
    /// Their bytes.
    held_bytes: usize,
    /// `held_bytes` passed its bound: the connection is to be closed at the next pump.
    overflowed: bool,
}

impl ServerCore {
    /// The driver reports `queued_bytes` of reliable frames waiting in `conn`'s send queue
    /// (the fullest channel's, bytes not yet handed to the transport). Call before every tick,
    /// and once when the connection opens, for every connection whose transport can tell; the
    /// core then paces a big snapshot's pieces to [`SNAPSHOT_QUEUE_BUDGET_BYTES`].
    pub fn handle_send_queue(&mut self, conn: ConnId, queued_bytes: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.queued = Some(queued_bytes);
        self.pump_snapshot(conn);
    }

    /// Sends `snapshot` to `conn`: as one message if its encoding fits one piece, else as
    /// pieces, the first ones now and the rest as the send queue drains.
    pub(super) fn send_snapshot(&mut self, conn: ConnId, snapshot: Snapshot) {
        let msg = ServerMsg::Snapshot(Box::new(snapshot));
        let body = codec::encode(&msg);
        if body.len() <= SNAPSHOT_PIECE_BYTES_MAX {
            return self.send(conn, &msg);
        }
        let count = body.len().div_ceil(SNAPSHOT_PIECE_BYTES_MAX);
        if count > SNAPSHOT_PIECES_MAX {
            // The quotas keep every world far below this (3 MiB of world data by default).
            return self.close_conn(
                conn,
                CloseReason::PlayerLimit,
                format!(
                    "the world's snapshot is {} bytes, too large to send",
                    body.len()
                ),
            );
        }
        self.flush_blueprints();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.snapshot = Some(Box::new(SnapshotStream {
            body,
            next: 0,
            count: count as u32,
            held: VecDeque::new(),
            held_bytes: 0,
            overflowed: false,
        }));
        self.pump_snapshot(conn);
    }

    /// Queues a reliable frame for `conn`, or holds it while `conn`'s snapshot is on its way.
    pub(super) fn push_frame(&mut self, conn: ConnId, channel: Channel, frame: Arc<[u8]>) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.figures.frames_down += 1;
            c.figures.bytes_down += frame.len() as u64;
            if let Some(st) = c.snapshot.as_mut() {
                if !st.overflowed {
                    st.held_bytes += frame.len();
                    st.held.push_back((channel, frame));
                    if st.held_bytes > SNAPSHOT_HELD_BYTES_MAX {
                        st.overflowed = true;
                        st.held = VecDeque::new();
                        self.snapshot_overflows.push(conn);
                    }
                }
                return;
            }
            if let Some(q) = c.queued.as_mut() {
                *q += frame.len();
            }
        }
        self.transmits.push_back(Transmit::Frame {
            conn,
            channel,
            frame,
        });
    }

    /// Drops what `conn` still had to send of its snapshot and held (it is closing).
    pub(super) fn drop_snapshot(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.snapshot = None;
        }
    }

    /// Closes the connections that held too much behind their snapshot.
    pub(super) fn close_snapshot_overflows(&mut self) {
        for conn in std::mem::take(&mut self.snapshot_overflows) {
            self.close_conn(
                conn,
                CloseReason::Timeout,
                format!(
                    "too slow: more than {SNAPSHOT_HELD_BYTES_MAX} bytes of changes waited behind the snapshot"
                ),
            );
        }
    }

    /// Sends `conn`'s next snapshot pieces while its send queue has room; after the last one,
    /// what was held.
    fn pump_snapshot(&mut self, conn: ConnId) {
        self.close_snapshot_overflows();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(st) = c.snapshot.as_mut() else {
            return;
        };
        while st.next < st.count {
            let start = st.next as usize * SNAPSHOT_PIECE_BYTES_MAX;
            let end = (start + SNAPSHOT_PIECE_BYTES_MAX).min(st.body.len());
            let piece = ServerMsg::SnapshotPiece {
                index: st.next,
                count: st.count,
                data: Bytes(st.body[start..end].to_vec()),
            };
            let frame: Arc<[u8]> = codec::encode_frame(&piece).into();
            if let Some(q) = c.queued.as_mut() {
                if *q > 0 && *q + frame.len() > SNAPSHOT_QUEUE_BUDGET_BYTES {
                    return;
                }
                *q += frame.len();
            }
            st.next += 1;
            c.figures.frames_down += 1;
            c.figures.bytes_down += frame.len() as u64;
            c.figures.snapshot_pieces += 1;
            self.transmits.push_back(Transmit::Frame {
                conn,
                channel: Channel::World,
                frame,
            });
        }
        // The last piece is out: what waited behind it follows, in order.
        let Some(st) = c.snapshot.take() else {
            return;
        };
        if let Some(q) = c.queued.as_mut() {
            *q += st.held_bytes;
        }
        for (channel, frame) in st.held {
            self.transmits.push_back(Transmit::Frame {
                conn,
                channel,
                frame,
            });
        }
    }
}
