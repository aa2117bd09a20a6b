//! Sessions that survive their connection: a lost connection (a transport disconnect or the
//! idle timeout) leaves its session and player in the world for
//! [`ServerConfig::resume_grace`](super::ServerConfig::resume_grace), the player marked
//! [`LOST_PROP`] so the others can show it; a client that comes back with `ClientMsg::Resume`
//! in time gets the same session, player and id, fresh transform baselines, a fresh snapshot
//! and a new single-use resume token, and nobody else sees a leave or a join. Past the grace
//! period the session ends as an ordinary leave.
//!
//! Exactly-once changes: every change id a session sent is remembered with its outcome (at most
//! [`REQ_OUTCOMES_MAX`] per session, the oldest forgotten first), so a change resent after a
//! lost connection is answered with its original `Ack` or `Refused` and applied once. The
//! outcomes of an ended session are kept (at most [`ENDED_SESSIONS_MAX`] sessions) for a client
//! whose resume came too late: its fresh join as the same user inherits them.
//!
//! Across a restart: with durable acknowledgements the store keeps every acknowledged change's
//! (session, req, user) in the transaction that made the change durable
//! ([`crate::persist::World::acked`]); a new core loads them as ended sessions (all `Acked`)
//! and numbers its sessions past them, so a client resuming after the restart, whose `Ack` was
//! lost in the crash, finds its change answered instead of applied again. Refusals are not
//! persisted: a refused change resent after a restart is judged again.

use std::collections::{BTreeMap, VecDeque};

use super::session::Conn;
use super::{ConnId, ServerCore, ServerEvent};
use crate::persist::AckToken;
use crate::rng::Rng;
use crate::time::Time;
use crate::transform::ClientReplicator;
use crate::types::*;
use crate::wire::limits::{NAME_BYTES_MAX, TOKEN_BYTES_MAX};
use crate::wire::msg::*;

/// The player entity field set (to `[1]`) while its connection is lost and the session waits
/// for a resume; unset when it resumes. Only the server sets it.
pub const LOST_PROP: &str = "lost";

/// Change ids remembered per session with their outcome: 1,024. A client holds at most
/// [`crate::client::PENDING_REQUESTS_MAX`] (256) unanswered changes, so every change it can
/// resend is still remembered; ~16 bytes each, 16 KiB per session.
pub const REQ_OUTCOMES_MAX: usize = 1024;

/// Ended sessions whose change outcomes are kept for a late resume: 256 (4 MiB at most). Older
/// ones are forgotten; a client coming back after that many other sessions ended may see a
/// change it resends applied twice.
pub const ENDED_SESSIONS_MAX: usize = 256;

/// What became of one change id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Applied, its acknowledgement waits for the store (durable acks).
    Pending,
    /// Acknowledged.
    Acked,
    /// Refused, for this reason.
    Refused(Refusal),
}

/// The outcomes of a session's change ids, at most [`REQ_OUTCOMES_MAX`].
#[derive(Clone, Debug, Default)]
pub(super) struct Outcomes {
    map: BTreeMap<ReqId, Outcome>,
    order: VecDeque<ReqId>,
}

impl Outcomes {
    fn get(&self, req: ReqId) -> Option<Outcome> {
        self.map.get(&req).copied()
    }

    fn record(&mut self, req: ReqId, outcome: Outcome) {
        if self.map.insert(req, outcome).is_none() {
            self.order.push_back(req);
            while self.order.len() > REQ_OUTCOMES_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// Earlier sessions a session continues remembered per session (see [`EndedSession`]): 8. Each
/// is a resume that came too late and became a fresh join; more than 8 in a row is a client
/// that keeps losing its connection before its `Welcome`, and its oldest ids are forgotten.
pub const CONTINUES_MAX: usize = 8;

/// A session ended recently: its user, its change outcomes, and the earlier sessions of the same
/// client it continued (fresh joins from a late `Resume`), whose ids a client that never got
/// this session's `Welcome` still names.
#[derive(Clone, Debug)]
pub(super) struct EndedSession {
    user: UserId,
    outcomes: Outcomes,
    continues: Vec<SessionId>,
}

/// Sessions ended recently, at most [`ENDED_SESSIONS_MAX`].
#[derive(Debug, Default)]
pub(super) struct EndedSessions {
    map: BTreeMap<SessionId, EndedSession>,
}

impl EndedSessions {
    pub(super) fn insert(
        &mut self,
        sid: SessionId,
        user: UserId,
        outcomes: Outcomes,
        continues: Vec<SessionId>,
    ) {
        self.map.insert(
            sid,
            EndedSession {
                user,
                outcomes,
                continues,
            },
        );
        while self.map.len() > ENDED_SESSIONS_MAX {
            self.map.pop_first();
        }
    }

    /// The sessions of changes a store made durable before a restart (see
    /// [`crate::persist::World::acked`]), each with its changes `Acked`: the newest
    /// [`ENDED_SESSIONS_MAX`] sessions, the newest [`REQ_OUTCOMES_MAX`] changes of each.
    pub(super) fn from_acked(acked: &[AckToken]) -> EndedSessions {
        let mut by_session: BTreeMap<SessionId, (UserId, Outcomes)> = BTreeMap::new();
        for a in acked {
            let (_, outcomes) = by_session
                .entry(a.session)
                .or_insert_with(|| (a.user, Outcomes::default()));
            outcomes.record(a.req, Outcome::Acked);
        }
        let mut ended = EndedSessions::default();
        for (sid, (user, outcomes)) in by_session {
            ended.insert(sid, user, outcomes, Vec::new());
        }
        ended
    }

    /// Takes the newest ended session of `user` that is `named` or continued it.
    fn take(&mut self, named: SessionId, user: UserId) -> Option<(SessionId, EndedSession)> {
        let sid = self
            .map
            .iter()
            .rev()
            .find(|(sid, e)| e.user == user && (**sid == named || e.continues.contains(&named)))
            .map(|(sid, _)| *sid)?;
        self.map.remove(&sid).map(|e| (sid, e))
    }
}

/// The generator of resume tokens (see [`super::ServerConfig::resume_seed`]).
#[derive(Debug)]
pub(super) struct ResumeTokens {
    rng: Rng,
}

impl ResumeTokens {
    pub(super) fn new(seed: u64) -> ResumeTokens {
        ResumeTokens {
            rng: Rng::new(seed),
        }
    }

    /// A new token for `sid`: the session id and 128 random bits, in hex.
    pub(super) fn issue(&mut self, sid: SessionId) -> String {
        format!(
            "{:x}.{:016x}{:016x}",
            sid.0,
            self.rng.next_u64(),
            self.rng.next_u64()
        )
    }
}

/// The fields of a `ClientMsg::Resume`.
pub(super) struct ResumeRequest {
    pub(super) protocol_version: u16,
    pub(super) name: String,
    pub(super) token: Option<String>,
    pub(super) session: SessionId,
    pub(super) resume_token: String,
}

impl ServerCore {
    /// The first message of `conn` is a `Resume`: resume the session it names if it may, else
    /// a fresh join exactly as `Hello` (inheriting the old session's change outcomes when the
    /// user is the same).
    pub(super) fn handle_resume(&mut self, conn: ConnId, r: ResumeRequest) {
        let user = r
            .token
            .as_ref()
            .filter(|t| t.len() <= TOKEN_BYTES_MAX)
            .and_then(|t| self.auth.verify(t).ok())
            .and_then(|claims| self.admit_token(claims).ok())
            .map(|a| a.user);
        let now_ms = self.unix_ms();
        let name = r.name.trim().to_string();
        let resumable = r.protocol_version == PROTOCOL_VERSION
            && !self.config.resume_grace.is_zero()
            && !name.is_empty()
            && name.len() <= NAME_BYTES_MAX
            && !name.chars().any(char::is_control)
            && r.resume_token.len() <= TOKEN_BYTES_MAX
            && self.sessions.get(&r.session).is_some_and(|s| {
                Some(s.user) == user
                    && !s.resume_token.is_empty()
                    && s.resume_token == r.resume_token
                    && self
                        .world
                        .users
                        .get(&s.user)
                        .is_some_and(|u| !u.is_banned(now_ms))
            });
        if resumable {
            return self.resume(conn, r.session);
        }
        self.handle_hello(
            conn,
            ClientMsg::Hello {
                protocol_version: r.protocol_version,
                name: r.name,
                token: r.token,
            },
        );
        // A fresh join as the same user inherits the outcomes of the session its client last
        // knew (or of a later one that continued it, whose `Welcome` the client never got), so
        // the changes it resends are still applied once.
        let (Some(new), Some(user)) = (self.conns.get(&conn).and_then(|c| c.session), user) else {
            return;
        };
        let Some((sid, ended)) = self.ended.take(r.session, user) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&new) {
            s.outcomes = ended.outcomes;
            let mut continues = ended.continues;
            continues.push(sid);
            if continues.len() > CONTINUES_MAX {
                continues.drain(..continues.len() - CONTINUES_MAX);
            }
            s.continues = continues;
        }
    }

    /// Moves session `sid` onto `conn`: its old connection (if the server had not noticed it
    /// die) is closed, its player unmarked, its transform baselines restarted, and its client
    /// sent `Welcome` (same session), a fresh `Snapshot` and a new resume token.
    fn resume(&mut self, conn: ConnId, sid: SessionId) {
        self.flush_blueprints();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let old = s.conn.replace(conn);
        s.lost_at = None;
        s.up_seq = None;
        s.clock_stamp = None;
        let mut replicator = ClientReplicator::new(self.config.transform.clone(), Some(sid))
            .expect("validated transform config");
        replicator.set_own_entity(Some(s.player));
        s.replicator = replicator;
        let player = s.player;
        if let Some(old) = old {
            if let Some(c) = self.conns.get_mut(&old) {
                c.session = None;
            }
            self.close_conn(
                old,
                CloseReason::Timeout,
                "the session resumed on another connection".into(),
            );
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(sid);
        }
        self.set_lost(sid, player, false);
        self.send_welcome(conn, sid);
        self.events
            .push_back(ServerEvent::Resumed { session: sid, conn });
    }

    /// Marks (or unmarks) `player` as having lost its connection, telling everyone else.
    fn set_lost(&mut self, sid: SessionId, player: EntityId, lost: bool) {
        let Some(e) = self.world.entities.get_mut(&player) else {
            return;
        };
        let has = e.props.iter().any(|(k, _)| k == LOST_PROP);
        if has == lost {
            return;
        }
        let patch = if lost {
            EntityPatch {
                set: vec![(LOST_PROP.into(), Bytes(vec![1]))],
                ..Default::default()
            }
        } else {
            EntityPatch {
                unset: vec![LOST_PROP.into()],
                ..Default::default()
            }
        };
        patch.apply(e);
        self.broadcast(&ServerMsg::EntityModified { id: player, patch }, Some(sid));
    }

    /// Session `sid` lost its connection: kept for the grace period with its player marked
    /// lost, or ended at once without a grace period.
    pub(super) fn lose_connection(&mut self, sid: SessionId, reason: CloseReason) {
        if self.config.resume_grace.is_zero() {
            return self.end_session(sid, reason);
        }
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(c) = s.conn.take().and_then(|c| self.conns.get_mut(&c)) {
            c.session = None;
        }
        s.lost_at = Some(now);
        let player = s.player;
        self.set_lost(sid, player, true);
        self.events
            .push_back(ServerEvent::ConnectionLost { session: sid });
    }

    /// Ends the sessions whose grace period passed.
    pub(super) fn end_expired(&mut self, now: Time) {
        let grace = self.config.resume_grace;
        let expired: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.lost_at.is_some_and(|t| now.saturating_since(t) > grace))
            .map(|s| s.id)
            .collect();
        for sid in expired {
            self.end_session(sid, CloseReason::Timeout);
        }
    }

    /// A change `req` of session `sid` arrived: if it was seen before, answers it with its
    /// original outcome and returns `true` (nothing more to do); else remembers it as pending.
    pub(super) fn replay_outcome(&mut self, sid: SessionId, conn: ConnId, req: ReqId) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        match s.outcomes.get(req) {
            None => {
                s.outcomes.record(req, Outcome::Pending);
                false
            }
            Some(Outcome::Pending) => true,
            Some(Outcome::Acked) => {
                self.send(conn, &ServerMsg::Ack { req });
                true
            }
            Some(Outcome::Refused(reason)) => {
                self.send(conn, &ServerMsg::Refused { req, reason });
                true
            }
        }
    }

    /// Remembers the outcome of change `req` of session `sid` (live or recently ended).
    pub(super) fn record_outcome(&mut self, sid: SessionId, req: ReqId, outcome: Outcome) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.outcomes.record(req, outcome);
        } else if let Some(e) = self.ended.map.get_mut(&sid) {
            e.outcomes.record(req, outcome);
        }
    }

    /// The session a connection carries, if any.
    pub(super) fn session_of_conn(&self, conn: ConnId) -> Option<SessionId> {
        self.conns.get(&conn).and_then(|c: &Conn| c.session)
    }
}
