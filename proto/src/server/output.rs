//! The core's outputs: what a driver must send ([`Transmit`]), what happened ([`ServerEvent`]),
//! and the helpers every room uses to queue them (send, broadcast, refuse, commit).
//!
//! An output says everything a driver needs: a transmit names its connection, a close carries
//! its reason and detail, a datagram is already sized for its path. No driver decodes a frame
//! the core encoded.

use std::sync::Arc;

use super::resume::Outcome;
use super::{ConnId, ServerCore};
use crate::persist::{AckToken, Change, Effect};
use crate::time::Tick;
use crate::transform::TransformError;
use crate::types::{EntityId, ReqId, SessionId, UserId};
use crate::wire::codec;
use crate::wire::msg::{Channel, CloseReason, Refusal, ServerMsg};

/// What the driver must send.
#[derive(Clone, Debug, PartialEq)]
pub enum Transmit {
    /// A reliable frame (length prefix included) on a channel's stream. Broadcasts share one
    /// encoded buffer.
    Frame {
        /// To whom.
        conn: ConnId,
        /// Which stream.
        channel: Channel,
        /// The encoded frame.
        frame: Arc<[u8]>,
    },
    /// An unreliable datagram, already sized to the connection's `max_datagram_size`.
    Datagram {
        /// To whom.
        conn: ConnId,
        /// The tick it was written at: a transport that cannot drop packets (a WebSocket over
        /// TCP) keeps only the newest tick's datagrams waiting, and drops older unsent ones.
        tick: Tick,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Close the connection after flushing what was queued before. The peer was already sent a
    /// `Close` frame with the same reason and detail; a transport with a close frame of its own
    /// (QUIC's application close, WebSocket's close frame) carries them there too.
    Close {
        /// Which connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
        /// What happened, in words, for the peer and the logs (never empty).
        detail: String,
    },
}

impl Transmit {
    /// The connection this transmit is for.
    pub fn conn(&self) -> ConnId {
        match self {
            Transmit::Frame { conn, .. }
            | Transmit::Datagram { conn, .. }
            | Transmit::Close { conn, .. } => *conn,
        }
    }
}

/// Something that happened, for the driver's logs and metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    /// A session joined (the `enter` event).
    Joined {
        /// The session.
        session: SessionId,
        /// Its connection.
        conn: ConnId,
        /// Its user.
        user: UserId,
        /// Its player entity.
        player: EntityId,
        /// Display name.
        name: String,
    },
    /// A session's connection was lost (a transport disconnect, the idle timeout): its player
    /// stays, marked [`super::LOST_PROP`], for the grace period.
    ConnectionLost {
        /// The session.
        session: SessionId,
    },
    /// A lost session was resumed on a new connection.
    Resumed {
        /// The session.
        session: SessionId,
        /// Its new connection.
        conn: ConnId,
    },
    /// A session ended.
    Left {
        /// The session.
        session: SessionId,
        /// Why.
        reason: CloseReason,
    },
    /// A connection was refused or closed for misbehaving.
    PeerError {
        /// The connection.
        conn: ConnId,
        /// Why it was closed.
        reason: CloseReason,
        /// Detail for logs.
        detail: String,
    },
    /// A datagram was dropped because it could not be decoded or broke a limit. Datagrams are
    /// unreliable, so this never closes the connection by itself.
    DatagramRejected {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: TransformError,
    },
    /// Datagrams were dropped before the core read them, by the [`super::DatagramInbox`]
    /// bounds: `conn_full` past one connection's share, `inbox_full` past the whole inbox's.
    DatagramsDropped {
        /// Dropped because their connection had its share waiting.
        conn_full: u64,
        /// Dropped because the inbox was full.
        inbox_full: u64,
    },
    /// A client-authoritative move was refused (too fast, out of bounds): the player is held
    /// at its last accepted position.
    MoveRejected {
        /// The session.
        session: SessionId,
    },
    /// A message was refused.
    Refused {
        /// The session.
        session: SessionId,
        /// Which message.
        msg: &'static str,
        /// Why.
        reason: Refusal,
    },
}

impl ServerCore {
    /// Queues `msg` for one connection.
    pub(super) fn send(&mut self, conn: ConnId, msg: &ServerMsg) {
        if msg.channel() == Channel::World {
            self.flush_blueprints();
        }
        let frame: Arc<[u8]> = codec::encode_frame(msg).into();
        self.push_frame(conn, msg.channel(), frame);
    }

    /// Sends `msg` to every joined session except `except`, encoding it once.
    pub(super) fn broadcast(&mut self, msg: &ServerMsg, except: Option<SessionId>) {
        if msg.channel() == Channel::World {
            self.flush_blueprints();
        }
        self.broadcast_now(msg, except);
    }

    /// [`ServerCore::broadcast`] without flushing pending blueprint modifications first.
    pub(super) fn broadcast_now(&mut self, msg: &ServerMsg, except: Option<SessionId>) {
        let frame: Arc<[u8]> = codec::encode_frame(msg).into();
        let channel = msg.channel();
        let conns: Vec<ConnId> = self
            .sessions
            .values()
            .filter(|s| Some(s.id) != except)
            .filter_map(|s| s.conn)
            .collect();
        for conn in conns {
            self.push_frame(conn, channel, frame.clone());
        }
    }

    /// Sends the merged blueprint modifications (see `pending_blueprints`) to everyone.
    pub(super) fn flush_blueprints(&mut self) {
        if self.pending_blueprints.is_empty() {
            return;
        }
        for (id, (version, patch)) in std::mem::take(&mut self.pending_blueprints) {
            self.broadcast_now(&ServerMsg::BlueprintModified { id, version, patch }, None);
        }
    }

    /// Refuses message `msg` (its name) from session `sid`: a `Refused` answer if it carried a
    /// change id, and an event either way.
    pub(super) fn refuse(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        msg: &'static str,
        req: Option<ReqId>,
        reason: Refusal,
    ) {
        if let Some(req) = req {
            self.record_outcome(sid, req, Outcome::Refused(reason));
            self.send(conn, &ServerMsg::Refused { req, reason });
        }
        self.events.push_back(ServerEvent::Refused {
            session: sid,
            msg,
            reason,
        });
    }

    /// Records a durable change and acknowledges its sender now or once it is durable.
    pub(super) fn commit(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        req: Option<ReqId>,
        change: Change,
    ) {
        let user = self.sessions.get(&sid).map_or(UserId(0), |s| s.user);
        let ack = req.map(|req| AckToken {
            session: sid,
            req,
            user,
        });
        if self.config.durable_acks {
            self.effects.push_back(Effect { change, ack });
        } else {
            self.effects.push_back(Effect { change, ack: None });
            if let Some(req) = req {
                self.record_outcome(sid, req, Outcome::Acked);
                self.send(conn, &ServerMsg::Ack { req });
            }
        }
    }

    /// Emits a change nobody waits on.
    pub(super) fn persist(&mut self, change: Change) {
        self.effects.push_back(Effect { change, ack: None });
    }

    /// Acknowledges a change that needs no storage.
    pub(super) fn ack_now(&mut self, conn: ConnId, req: ReqId) {
        if let Some(sid) = self.session_of_conn(conn) {
            self.record_outcome(sid, req, Outcome::Acked);
        }
        self.send(conn, &ServerMsg::Ack { req });
    }
}
