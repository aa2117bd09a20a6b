//! Admission: the first message of a connection must be a valid `Hello`. Version, name and
//! token are checked, the player limit and bans enforced, a user found or created, a session
//! and its player entity made, and the joiner sent `Welcome` and the world's `Snapshot`.
//!
//! One session per user: a second join of the same user **replaces** the first, which is closed
//! with [`CloseReason::DuplicateUser`]. Newer wins because the usual cause is a client
//! reconnecting before the server noticed its old connection die; refusing would lock that user
//! out until the idle timeout.

use super::rate::MessageRate;
use super::resume::Outcomes;
use super::session::Session;
use super::{yaw_of, ConnId, ServerCore, ServerEvent, NO_PLAYER};
use crate::persist::Change;
use crate::predict::{MoveValidator, Movement, PlayerMotion, ValidatorConfig};
use crate::transform::ClientReplicator;
use crate::types::*;
use crate::wire::limits::*;
use crate::wire::msg::*;

impl ServerCore {
    /// A new visitor `u` named `name`, stored: a tokenless join's or one a signed token
    /// vouches for.
    fn create_user(&mut self, u: UserId, name: &str) {
        let rec = User {
            id: u,
            name: name.to_string(),
            rank: Rank::Visitor,
            muted: false,
            banned: false,
            last_position: None,
            standing: Standing::default(),
        };
        self.world.users.insert(u, rec.clone());
        self.persist(Change::PutUser(rec));
    }

    /// The first message of connection `conn`, which must be `Hello`.
    pub(super) fn handle_hello(&mut self, conn: ConnId, msg: ClientMsg) {
        // Modifications the world already holds reach the joiner in its snapshot, not before.
        self.flush_blueprints();
        let (protocol_version, name, token, camera) = match msg {
            ClientMsg::Hello {
                protocol_version,
                name,
                token,
            } => (protocol_version, name, token, None),
            ClientMsg::Spectate {
                protocol_version,
                name,
                token,
                camera,
            } => (protocol_version, name, token, Some(camera)),
            _ => {
                return self.close_conn(
                    conn,
                    CloseReason::ProtocolViolation,
                    format!("expected hello, got {}", msg.name()),
                )
            }
        };
        if camera.is_some_and(|c| !c.is_finite()) {
            return self.close_conn(
                conn,
                CloseReason::ProtocolViolation,
                "spectator camera not finite".into(),
            );
        }
        if protocol_version != PROTOCOL_VERSION {
            return self.close_conn(
                conn,
                CloseReason::VersionMismatch,
                format!(
                    "client speaks protocol version {protocol_version}, this server speaks {PROTOCOL_VERSION}"
                ),
            );
        }
        let name_ok = |n: &str| {
            !n.is_empty() && n.len() <= NAME_BYTES_MAX && !n.chars().any(char::is_control)
        };
        let mut name = name.trim().to_string();
        if !name_ok(&name) {
            return self.close_conn(
                conn,
                CloseReason::ProtocolViolation,
                format!("name must be 1 to {NAME_BYTES_MAX} bytes without control characters"),
            );
        }
        if token.as_ref().is_some_and(|t| t.len() > TOKEN_BYTES_MAX) {
            return self.close_conn(conn, CloseReason::AuthFailed, "token too long".into());
        }
        // Player limit: sessions that would be replaced do not count.
        let limit = self.world.settings.player_limit as usize;
        // The signature is the authenticator's to check; time, revocation and the rest the
        // core's (`moderation.rs`). Each refusal has its own detail.
        let admitted = match &token {
            Some(t) => match self.auth.verify(t).and_then(|c| self.admit_token(c)) {
                Ok(a) => Some(a),
                Err(e) => return self.close_conn(conn, CloseReason::AuthFailed, e.to_string()),
            },
            None => None,
        };
        if let Some(n) = admitted.as_ref().and_then(|a| a.name.as_deref()) {
            if name_ok(n.trim()) {
                name = n.trim().to_string();
            }
        }
        if admitted
            .as_ref()
            .is_some_and(|a| a.create && self.world.users.len() >= USERS_MAX)
        {
            return self.close_conn(
                conn,
                CloseReason::PlayerLimit,
                format!("this world knows {USERS_MAX} users"),
            );
        }
        let user = admitted.as_ref().map(|a| a.user);
        let replacing = user.and_then(|u| self.by_user.get(&u).copied());
        if limit > 0 && self.sessions.len() - usize::from(replacing.is_some()) >= limit {
            return self.close_conn(
                conn,
                CloseReason::PlayerLimit,
                format!("the world is full ({limit} players)"),
            );
        }
        let user = match admitted {
            Some(a) => {
                let u = a.user;
                if a.create {
                    // A user vouched for by a signed token: created with its id.
                    self.world.next_user_id = self.world.next_user_id.max(u.0.saturating_add(1));
                    self.reserve_ids();
                    self.create_user(u, &name);
                }
                let now_ms = self.unix_ms();
                let rec = &self.world.users[&u];
                if rec.is_banned(now_ms) {
                    let mut detail = match rec.standing.banned_until_ms {
                        Some(t) => format!(
                            "banned for another {}",
                            super::moderation::format_duration(std::time::Duration::from_millis(
                                t - now_ms
                            ))
                        ),
                        None => "banned".to_string(),
                    };
                    if let Some(r) = &rec.standing.ban_reason {
                        detail = format!("{detail}: {r}");
                    }
                    return self.close_conn(conn, CloseReason::AuthFailed, detail);
                }
                if let Some(rank) = a.rank {
                    // The signer's rank claim is the user's rank from this join on.
                    if let Some(rec) = self.world.users.get_mut(&u).filter(|r| r.rank != rank) {
                        rec.rank = rank;
                        let rec = rec.clone();
                        self.persist(Change::PutUser(rec));
                    }
                }
                u
            }
            None => {
                if !self.admit_tokenless_join(conn) {
                    return;
                }
                if self.world.users.len() >= USERS_MAX {
                    return self.close_conn(
                        conn,
                        CloseReason::PlayerLimit,
                        format!("this world knows {USERS_MAX} users: join with your token"),
                    );
                }
                let u = self.alloc_user_id();
                self.create_user(u, &name);
                u
            }
        };
        if let Some(old) = replacing {
            if let Some(old_conn) = self.sessions.get(&old).and_then(|s| s.conn) {
                self.close_conn(
                    old_conn,
                    CloseReason::DuplicateUser,
                    "you joined again elsewhere".into(),
                );
            }
            self.end_session(old, CloseReason::DuplicateUser);
        }
        if let Some(u) = self.world.users.get_mut(&user) {
            u.name = name.clone();
        }
        if self.world.entities.len() >= ENTITIES_MAX {
            return self.close_conn(conn, CloseReason::PlayerLimit, "world entity limit".into());
        }
        self.join(conn, user, name, camera);
    }

    /// Makes the session of an admitted `user` on `conn`: its player (none for a spectator,
    /// which has a `camera`), its replicator and movement, and the joiner's `Welcome` and
    /// `Snapshot`.
    fn join(&mut self, conn: ConnId, user: UserId, name: String, camera: Option<Vec3>) {
        let sid = SessionId(self.next_session);
        self.next_session += 1;
        let player = match camera {
            Some(_) => NO_PLAYER,
            None => self.alloc_entity_id(),
        };
        let rank = self.world.effective_rank(user);
        let spawn = self.world.spawn;
        let position = if self.config.spawn_at_last_position {
            self.world.users[&user]
                .last_position
                .unwrap_or(spawn.position)
        } else {
            spawn.position
        };
        let spawn_state = self.model.spawn(position, yaw_of(spawn.rotation));
        // The player starts where the movement model puts it (on the ground, quantized).
        let transform = self.model.transform(&spawn_state);
        let entity = Entity {
            id: player,
            kind: EntityKind::Player,
            owner: Some(sid),
            user: Some(user),
            blueprint: None,
            transform,
            props: vec![
                ("name".into(), Bytes::from(name.as_str())),
                ("rank".into(), Bytes(vec![rank as u8])),
            ],
        };
        if camera.is_none() {
            self.world.entities.insert(player, entity.clone());
        }
        let mut replicator = ClientReplicator::new(self.config.transform.clone(), Some(sid))
            .expect("validated transform config");
        replicator.set_own_entity(camera.is_none().then_some(player));
        let motion = PlayerMotion::new(
            self.model,
            spawn_state,
            self.config.tick_hz,
            self.clock.tick(),
        );
        let validator = MoveValidator::new(
            ValidatorConfig::for_character(&self.config.character),
            transform,
            self.now,
        );
        self.sessions.insert(
            sid,
            Session {
                id: sid,
                user,
                name: name.clone(),
                conn: Some(conn),
                player,
                camera,
                joined_at: self.now,
                replicator,
                motion,
                validator,
                up_seq: None,
                clock_stamp: None,
                rate: MessageRate::new(self.config.message_burst, self.now),
                token_refresh_at: self.token_refresh_due(),
                own_sent: Default::default(),
                rates: super::rate::SessionRates::new(&self.config.limits, self.now),
                lost_at: None,
                resume_token: String::new(),
                outcomes: Outcomes::default(),
                continues: Vec::new(),
            },
        );
        self.by_user.insert(user, sid);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(sid);
        }
        if camera.is_none() {
            self.broadcast(&ServerMsg::EntityAdded(entity), Some(sid));
        }
        self.send_welcome(conn, sid);
        self.events.push_back(ServerEvent::Joined {
            session: sid,
            conn,
            user,
            player,
            name,
        });
    }

    /// Sends session `sid`'s client, on `conn`, everything it needs to be in the world:
    /// `Welcome`, the world's `Snapshot` (in pieces if it is big, see `snapshot.rs`), and a new single-use resume token (which replaces the
    /// session's previous one). A join and a resume both end here.
    pub(super) fn send_welcome(&mut self, conn: ConnId, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let (player, user) = (s.player, s.user);
        let rank = self.world.effective_rank(user);
        self.send(
            conn,
            &ServerMsg::Welcome {
                protocol_version: PROTOCOL_VERSION,
                session: sid,
                tick_hz: self.config.tick_hz,
                transform: Box::new(self.config.transform.clone()),
                character: self.config.character,
            },
        );
        let snapshot = Snapshot {
            player,
            user,
            rank,
            server_tick: self.clock.tick().0,
            server_time_us: self.now.as_micros(),
            settings: self.world.settings.clone(),
            spawn: self.world.spawn,
            chat: self.world.chat.iter().cloned().collect(),
            blueprints: self.world.blueprints.values().cloned().collect(),
            entities: self.world.entities.values().cloned().collect(),
            auth_token: self.fresh_token(user),
        };
        self.send_snapshot(conn, snapshot);
        let token = self.resume_tokens.issue(sid);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.resume_token = token.clone();
        }
        self.send(conn, &ServerMsg::ResumeToken { token });
    }
}
