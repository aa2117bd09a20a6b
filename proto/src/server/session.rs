//! Connections and sessions: what the core knows of each, and how they end (a close, a
//! disconnect, an idle or join timeout). A [`SessionId`] is one join of one user; a [`ConnId`]
//! is one transport connection; the two are kept apart so a session can outlive its
//! connection (resume, QUIC migration).

use super::rate::MessageRate;
use super::resume::Outcomes;
use super::{ConnId, ServerCore, ServerEvent, Transmit, TransportKind, MOVER_PROP};
use crate::persist::Change;
use crate::predict::{MoveValidator, PlayerMotion};
use crate::time::Time;
use crate::transform::{ClientReplicator, Seq};
use crate::types::*;
use crate::wire::msg::{CloseReason, ServerMsg};

/// A joined session, as the core sees it.
#[derive(Clone, Debug)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The user.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// The current connection (`None` while disconnected and resumable).
    pub conn: Option<ConnId>,
    /// The player entity; [`NO_PLAYER`] for a spectator.
    pub player: EntityId,
    /// A spectator's camera (its viewpoint for interest); `None` for a session with a player.
    pub camera: Option<Vec3>,
    /// When it joined.
    pub joined_at: Time,
    /// Transform replication towards this session's client.
    pub(super) replicator: ClientReplicator,
    /// Server-authoritative movement of its player.
    pub(super) motion: PlayerMotion,
    /// Validation of its player's moves in client-authoritative mode.
    pub(super) validator: MoveValidator,
    /// Newest upstream datagram sequence applied (older owned transforms are ignored).
    pub(super) up_seq: Option<Seq>,
    /// The clock to echo in its next transform datagram (PROTOCOL.md 12.4): the newest
    /// `client_time_us` received and when it arrived.
    pub(super) clock_stamp: Option<(u64, Time)>,
    /// Its reliable-message budget.
    pub(super) rate: MessageRate,
    /// When its client is sent a fresh auth token ([`ServerMsg::AuthToken`]).
    pub(super) token_refresh_at: Time,
    /// The own-player state last sent: a player standing still is sent nothing.
    pub(super) own_sent: OwnSent,
    /// Its budgets by kind (chat, commands, changes, datagrams, bytes).
    pub(super) rates: super::rate::SessionRates,
    /// When its connection was lost, while it waits for a resume.
    pub(super) lost_at: Option<Time>,
    /// The single-use token its client must present to resume it (empty before the first).
    pub(super) resume_token: String,
    /// The outcomes of the change ids it sent, for answering resent ones.
    pub(super) outcomes: Outcomes,
    /// The earlier sessions of its client it continues (fresh joins from a late `Resume`),
    /// oldest first, at most [`super::resume::CONTINUES_MAX`].
    pub(super) continues: Vec<SessionId>,
}

/// Datagrams remembered as carrying the current own-player state: more than a round trip's
/// worth of ticks on any path the budget serves (64 ticks is a second at 60 Hz).
const OWN_STATE_CARRIERS_MAX: usize = 64;

/// The own-player state a session was last sent, and whether its client has it: an unchanged
/// state goes out again every tick until a datagram carrying it is acknowledged, then no more.
#[derive(Clone, Debug, Default)]
pub(super) struct OwnSent {
    /// The blob without its server tick (bytes 1..9), which changes every tick regardless.
    key: Vec<u8>,
    /// Full sequence numbers of datagrams that carried it, oldest first.
    carriers: std::collections::VecDeque<u64>,
    /// A carrier was acknowledged.
    acked: bool,
}

impl OwnSent {
    /// Where the blob's server tick is.
    const TICK_BYTES: std::ops::Range<usize> = 1..9;

    /// Whether `blob` must be sent: it changed, or no datagram carrying it was acknowledged.
    pub(super) fn needs(&mut self, blob: &[u8], replicator: &ClientReplicator) -> bool {
        let key = blob
            .iter()
            .enumerate()
            .filter(|(i, _)| !Self::TICK_BYTES.contains(i))
            .map(|(_, b)| *b);
        if !key.clone().eq(self.key.iter().copied()) {
            self.key.clear();
            self.key.extend(key);
            self.carriers.clear();
            self.acked = false;
            return true;
        }
        if !self.acked {
            self.acked = self
                .carriers
                .iter()
                .any(|&q| replicator.datagram_acked(q) == Some(true));
        }
        !self.acked
    }

    /// The datagram `seq_full` carried it.
    pub(super) fn carried_by(&mut self, seq_full: u64) {
        if self.carriers.len() >= OWN_STATE_CARRIERS_MAX {
            self.carriers.pop_front();
        }
        self.carriers.push_back(seq_full);
    }
}

/// The player id of a spectator's session and `Snapshot`: no entity ever has id 0.
pub const NO_PLAYER: EntityId = EntityId(0);

impl Session {
    /// Whether it watches without a player.
    pub fn is_spectator(&self) -> bool {
        self.camera.is_some()
    }

    /// Whether its connection is lost and it waits (within the grace period) for a resume.
    pub fn is_lost(&self) -> bool {
        self.lost_at.is_some()
    }

    /// The replicator's round-trip estimate, if any acks arrived.
    pub fn rtt_estimate_us(&self) -> Option<u64> {
        self.replicator.rtt_estimate_us()
    }
}

/// An open transport connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) transport: TransportKind,
    pub(super) session: Option<SessionId>,
    /// A close was queued: nothing more is read from it.
    pub(super) closed: bool,
    pub(super) connected_at: Time,
    pub(super) last_heard: Time,
    /// Something arrived after its join (a `Ping`, a datagram): the client has its `Welcome`,
    /// so silence from now on is a dead peer. Until then only the join timeout applies: the
    /// client cannot speak before its `Welcome` arrives, however slow the link.
    pub(super) heard_since_join: bool,
    pub(super) max_datagram_size: usize,
    /// The peer's address as the driver reported it (per-address limits).
    pub(super) addr: Option<std::net::IpAddr>,
    /// What it cost so far (see `figures`).
    pub(super) figures: super::ConnFigures,
    /// Bytes waiting in its send queue: the driver's last report plus what was sent since;
    /// `None` while the driver never reported (see `snapshot.rs`).
    pub(super) queued: Option<usize>,
    /// Its snapshot, while its pieces are on their way.
    pub(super) snapshot: Option<Box<super::snapshot::SnapshotStream>>,
}

impl ServerCore {
    /// Closes `conn`: a `Close` frame, then [`Transmit::Close`] with the same reason and detail,
    /// and the end of its session. Misbehaviour is reported as [`ServerEvent::PeerError`].
    pub(super) fn close_conn(&mut self, conn: ConnId, reason: CloseReason, detail: String) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closed {
            return;
        }
        c.closed = true;
        let session = c.session.take();
        // The close goes now, not behind a snapshot still on its way.
        self.drop_snapshot(conn);
        self.send(
            conn,
            &ServerMsg::Close {
                reason,
                detail: detail.clone(),
            },
        );
        self.transmits.push_back(Transmit::Close {
            conn,
            reason,
            detail: detail.clone(),
        });
        if matches!(
            reason,
            CloseReason::ProtocolViolation
                | CloseReason::VersionMismatch
                | CloseReason::AuthFailed
                | CloseReason::Flooding
        ) {
            self.events.push_back(ServerEvent::PeerError {
                conn,
                reason,
                detail,
            });
        }
        if let Some(sid) = session {
            if reason == CloseReason::Timeout {
                // Silence is a lost connection, not a decision: the session may be resumed.
                self.lose_connection(sid, reason);
            } else {
                self.end_session(sid, reason);
            }
        }
    }

    /// Ends a session: its player leaves the world (its last position saved), the apps it was
    /// moving are released where they are (and saved), everyone is told.
    pub(super) fn end_session(&mut self, sid: SessionId, reason: CloseReason) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        self.ended.insert(
            sid,
            s.user,
            std::mem::take(&mut s.outcomes),
            std::mem::take(&mut s.continues),
        );
        if self.by_user.get(&s.user) == Some(&sid) {
            self.by_user.remove(&s.user);
        }
        if let Some(conn) = s.conn {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session = None;
            }
        }
        let moved: Vec<EntityId> = self
            .world
            .entities
            .values()
            .filter(|e| e.kind == EntityKind::App && e.owner == Some(sid))
            .map(|e| e.id)
            .collect();
        for id in moved {
            if let Some(e) = self.world.entities.get_mut(&id) {
                e.owner = None;
                e.props.retain(|(k, _)| k != MOVER_PROP);
                let stored = e.clone();
                let patch = EntityPatch {
                    unset: vec![MOVER_PROP.into()],
                    transform: Some(stored.transform),
                    ..Default::default()
                };
                self.broadcast(&ServerMsg::EntityModified { id, patch }, Some(sid));
                // Stored whole: it supersedes the motion state emitted for it before.
                self.moved_apps.remove(&id);
                self.persist(Change::PutEntity(stored));
            }
        }
        if let Some(player) = self.world.entities.remove(&s.player) {
            if let Some(u) = self.world.users.get_mut(&s.user) {
                u.last_position = Some(player.transform.position);
                let u = u.clone();
                self.persist(Change::PutUser(u));
            }
            self.broadcast(&ServerMsg::EntityRemoved(s.player), None);
        }
        self.events.push_back(ServerEvent::Left {
            session: sid,
            reason,
        });
    }

    /// Closes connections silent for longer than the idle timeout and those that did not join
    /// in time, and ends the lost sessions whose grace period passed.
    pub(super) fn close_idle(&mut self, now: Time) {
        let (idle, join) = (self.config.idle_timeout, self.config.join_timeout);
        let stale: Vec<(ConnId, &'static str)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closed)
            .filter_map(|(id, c)| {
                // Until the client is heard after its join only the join timeout applies: a
                // `Hello` or a `Welcome` held up by a lossy link is not a dead peer (the idle
                // timeout is much shorter).
                if c.session.is_none() || !c.heard_since_join {
                    (now.saturating_since(c.connected_at) > join)
                        .then_some((*id, "did not join in time"))
                } else if now.saturating_since(c.last_heard) > idle {
                    Some((*id, "no traffic"))
                } else {
                    None
                }
            })
            .collect();
        for (conn, why) in stale {
            self.close_conn(conn, CloseReason::Timeout, why.into());
        }
        self.end_expired(now);
    }

    /// The effective rank of a session's user.
    pub(super) fn rank_of(&self, sid: SessionId) -> Rank {
        self.sessions
            .get(&sid)
            .map_or(Rank::Visitor, |s| self.world.effective_rank(s.user))
    }

    /// The session whose player is `player`.
    pub(super) fn player_session(&self, player: EntityId) -> Option<&Session> {
        let e = self.world.entities.get(&player)?;
        if e.kind != EntityKind::Player {
            return None;
        }
        self.sessions.get(&e.owner?)
    }
}
