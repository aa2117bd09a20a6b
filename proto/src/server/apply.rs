//! Applying changes: what an admitted message does to the world, whom it is relayed to, and
//! what is persisted. Accepted changes are relayed to every session, the sender included:
//! clients never apply their own changes before the server orders them, so every mirror sees
//! one order. Entity events go to everyone but the sender, or to one player.

use super::{yaw_from_radians, ConnId, ServerCore, MOVER_PROP};
use crate::persist::Change;
use crate::predict::Movement;
use crate::types::*;
use crate::wire::limits::CHAT_HISTORY_LEN;
use crate::wire::msg::*;

impl ServerCore {
    /// A message from joined session `sid`: admitted by policy, then applied.
    pub(super) fn handle_session_msg(&mut self, sid: SessionId, conn: ConnId, msg: ClientMsg) {
        // A change seen before (resent after a lost connection) gets its original answer and
        // is not applied again.
        if let Some(req) = msg.req() {
            if self.replay_outcome(sid, conn, req) {
                return;
            }
        }
        let mut msg = msg;
        super::guard::normalize_msg(&mut msg);
        if !self.admit(sid, conn, &msg) {
            return;
        }
        let (user, player, name) = match self.sessions.get(&sid) {
            Some(s) => (s.user, s.player, s.name.clone()),
            None => return,
        };
        match msg {
            ClientMsg::Hello { .. } | ClientMsg::Spectate { .. } | ClientMsg::Resume { .. } => {}
            ClientMsg::SpectatorCamera { position } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.camera = Some(position);
                }
            }
            ClientMsg::Ping { client_time_us } => {
                let pong = ServerMsg::Pong {
                    client_time_us,
                    server_time_us: self.now.as_micros(),
                    server_tick: self.clock.tick().0,
                };
                self.send(conn, &pong);
            }
            ClientMsg::Goodbye => {
                self.close_conn(conn, CloseReason::ClientLeft, "goodbye".into());
            }
            ClientMsg::Chat { req, body } => {
                let m = ChatMessage {
                    id: self.alloc_chat_id(),
                    from_user: Some(user),
                    from_name: name,
                    from_entity: Some(player),
                    body,
                    created_at_ms: self.config.unix_ms_at_zero + self.now.as_micros() / 1000,
                };
                self.push_chat(m.clone());
                self.broadcast(&ServerMsg::ChatAdded(m.clone()), None);
                self.commit(sid, conn, Some(req), Change::AppendChat(m));
            }
            ClientMsg::Command { req, args } => self.handle_command(sid, conn, req, args),
            ClientMsg::BlueprintAdd { req, blueprint } => {
                self.usage.add_blueprint(&blueprint, user);
                self.world
                    .blueprints
                    .insert(blueprint.id.clone(), blueprint.clone());
                self.broadcast(&ServerMsg::BlueprintAdded(blueprint.clone()), None);
                self.commit(sid, conn, Some(req), Change::PutBlueprint(blueprint));
            }
            ClientMsg::BlueprintModify {
                req,
                id,
                version,
                patch,
            } => {
                let Some(current) = self.world.blueprints.get_mut(&id) else {
                    return;
                };
                if version <= current.version {
                    // Optimistic concurrency: the sender loses and gets the current blueprint.
                    let full = ServerMsg::BlueprintModified {
                        id,
                        version: current.version,
                        patch: BlueprintPatch::full(current),
                    };
                    self.send(conn, &full);
                    return self.refuse(sid, conn, "BlueprintModify", Some(req), Refusal::Conflict);
                }
                let before = super::quota::blueprint_bytes(current);
                patch.apply(current);
                current.version = version;
                let stored = current.clone();
                let after = super::quota::blueprint_bytes(&stored);
                self.usage.resize_blueprint(&id, before, after);
                match self.pending_blueprints.get_mut(&id) {
                    Some((v, pending)) => {
                        *v = version;
                        pending.merge(patch);
                    }
                    None => {
                        self.pending_blueprints.insert(id, (version, patch));
                    }
                }
                self.commit(sid, conn, Some(req), Change::PutBlueprint(stored));
            }
            ClientMsg::EntityAdd {
                req,
                blueprint,
                transform,
                props,
            } => {
                let id = self.alloc_entity_id();
                let e = Entity {
                    id,
                    kind: EntityKind::App,
                    owner: None,
                    // The app's creator: counted against their quota, across restarts.
                    user: Some(user),
                    blueprint: Some(blueprint),
                    transform,
                    props,
                };
                self.usage.add_app(&e);
                self.world.entities.insert(id, e.clone());
                // Everyone, the sender included: it learns the id the server allocated.
                self.broadcast(&ServerMsg::EntityAdded(e.clone()), None);
                self.commit(sid, conn, Some(req), Change::PutEntity(e));
            }
            ClientMsg::EntityModify { req, id, mut patch } => {
                let Some(e) = self.world.entities.get_mut(&id) else {
                    return;
                };
                // The reference engine's `mover`: setting it on an app makes the sender its
                // owner (its transform then streams from the sender's datagrams); unsetting it
                // releases the app. The server stamps the value: the mover's session id.
                if e.kind == EntityKind::App {
                    if let Some(slot) = patch.set.iter_mut().find(|(k, _)| k == MOVER_PROP) {
                        slot.1 = Bytes(sid.0.to_le_bytes().to_vec());
                        e.owner = Some(sid);
                    } else if patch.unset.iter().any(|k| k == MOVER_PROP) {
                        e.owner = None;
                    }
                }
                let before = super::quota::app_bytes(e);
                patch.apply(e);
                let stored = e.clone();
                if stored.kind == EntityKind::App {
                    self.usage
                        .resize_app(before, super::quota::app_bytes(&stored));
                }
                self.broadcast(&ServerMsg::EntityModified { id, patch }, None);
                if stored.kind == EntityKind::App {
                    self.commit(sid, conn, Some(req), Change::PutEntity(stored));
                } else {
                    self.ack_now(conn, req);
                }
            }
            ClientMsg::EntityRemove { req, id } => {
                self.remove_app(id);
                self.commit(sid, conn, Some(req), Change::DeleteEntity(id));
            }
            ClientMsg::BlueprintRemove { req, id } => {
                self.remove_blueprint(&id);
                self.commit(sid, conn, Some(req), Change::DeleteBlueprint(id));
            }
            ClientMsg::EntityEvent {
                entity,
                blueprint_version,
                name,
                data,
                to,
            } => {
                let ev = ServerMsg::EntityEvent {
                    entity,
                    blueprint_version,
                    name,
                    data,
                    from: Some(player),
                };
                match to {
                    Some(to) => {
                        if let Some(c) = self.player_session(to).and_then(|s| s.conn) {
                            self.send(c, &ev);
                        }
                    }
                    None => self.broadcast(&ev, Some(sid)),
                }
            }
            ClientMsg::PlayerTeleport {
                target,
                position,
                rotation_y,
            } => {
                let yaw = yaw_from_radians(rotation_y);
                if let Some(owner) = self.player_session(target).map(|s| s.id) {
                    let state = self.model.spawn(position, yaw);
                    let t = self.model.transform(&state);
                    let now = self.now;
                    if let Some(s) = self.sessions.get_mut(&owner) {
                        s.motion.teleport(state);
                        s.validator.teleport(t, now);
                    }
                    if let Some(e) = self.world.entities.get_mut(&target) {
                        e.transform = t;
                    }
                }
                if let Some(c) = self.player_session(target).and_then(|s| s.conn) {
                    self.send(
                        c,
                        &ServerMsg::PlayerTeleport {
                            position,
                            rotation_y,
                        },
                    );
                }
            }
            ClientMsg::PlayerPush { target, force } => {
                if let Some(c) = self.player_session(target).and_then(|s| s.conn) {
                    self.send(c, &ServerMsg::PlayerPush { force });
                }
            }
            ClientMsg::SettingsModify { req, setting } => {
                let default_rank = self.world.settings.default_rank;
                setting.apply(&mut self.world.settings);
                self.broadcast(&ServerMsg::SettingsModified(setting), None);
                self.default_rank_changed(default_rank);
                let s = self.world.settings.clone();
                self.commit(sid, conn, Some(req), Change::PutSettings(s));
            }
            ClientMsg::SpawnModify { req, set } => {
                self.set_spawn(sid, conn, req, set, player);
            }
            ClientMsg::ModifyRank { req, user, rank } => {
                self.set_rank(sid, conn, req, user, rank);
            }
            ClientMsg::Kick { req, target } => {
                match self.player_session(target).map(|s| (s.id, s.conn)) {
                    Some((_, Some(c))) => {
                        self.close_conn(c, CloseReason::Moderation, format!("kicked by {name}"))
                    }
                    // Its connection is lost: the session waiting for a resume ends now.
                    Some((target_sid, None)) => {
                        self.end_session(target_sid, CloseReason::Moderation)
                    }
                    None => {}
                }
                self.ack_now(conn, req);
            }
            ClientMsg::Mute { req, target, muted } => {
                let Some(u) = self.player_session(target).map(|s| s.user) else {
                    return;
                };
                let rec = match self.world.users.get_mut(&u) {
                    Some(rec) => {
                        rec.muted = muted;
                        rec.standing.muted_until_ms = None;
                        rec.clone()
                    }
                    None => return,
                };
                self.broadcast(
                    &ServerMsg::Muted {
                        player: target,
                        muted,
                    },
                    None,
                );
                self.commit(sid, conn, Some(req), Change::PutUser(rec));
            }
        }
    }

    pub(super) fn set_spawn(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        req: ReqId,
        set: bool,
        player: EntityId,
    ) {
        let spawn = if set {
            let t = self
                .world
                .entities
                .get(&player)
                .map(|e| e.transform)
                .unwrap_or_default();
            Spawn {
                position: t.position,
                rotation: t.rotation,
            }
        } else {
            Spawn::default()
        };
        self.world.spawn = spawn;
        self.broadcast(&ServerMsg::SpawnModified(spawn), None);
        self.commit(sid, conn, Some(req), Change::PutSpawn(spawn));
    }

    /// Removes app `id` from the world (quota, moved set) and tells everyone. The caller
    /// emits or commits its `DeleteEntity`.
    pub(super) fn remove_app(&mut self, id: EntityId) {
        if let Some(e) = self.world.entities.remove(&id) {
            self.usage.remove_app(&e);
        }
        self.moved_apps.remove(&id);
        self.broadcast(&ServerMsg::EntityRemoved(id), None);
    }

    /// Removes blueprint `id` and every app instantiating it (each persisted as deleted), and
    /// tells everyone: the apps first, then the blueprint. The caller emits or commits the
    /// blueprint's `DeleteBlueprint`.
    pub(super) fn remove_blueprint(&mut self, id: &BlueprintId) {
        let apps: Vec<EntityId> = self
            .world
            .entities
            .values()
            .filter(|e| e.kind == EntityKind::App && e.blueprint.as_ref() == Some(id))
            .map(|e| e.id)
            .collect();
        for app in apps {
            self.remove_app(app);
            self.persist(Change::DeleteEntity(app));
        }
        self.pending_blueprints.remove(id);
        if let Some(b) = self.world.blueprints.remove(id) {
            self.usage.remove_blueprint(&b);
        }
        self.broadcast(&ServerMsg::BlueprintRemoved(id.clone()), None);
    }

    fn push_chat(&mut self, m: ChatMessage) {
        self.world.chat.push_back(m);
        while self.world.chat.len() > CHAT_HISTORY_LEN {
            self.world.chat.pop_front();
        }
    }
}
