//! Policy: the one place every message of a joined session passes before it can change
//! anything. In order: the rate limit ([`super::rate`]), authorization and validation (rank
//! rules, ownership, every field within its limit: [`ServerCore::authorize`]), and storage
//! health (while the store fails, changes are refused up front). A refusal is answered with
//! `Refused` for the change's id; a broken limit on a message without one closes that session
//! only.

use super::quota;
use super::rate::Limit;
use super::{ConnId, ServerCore, PLAYER_RESERVED_PROPS};
use crate::types::*;
use crate::wire::limits::*;
use crate::wire::msg::*;

impl ServerCore {
    /// Whether message `msg` of session `sid` may be applied. If not, it was refused (or the
    /// session closed) here.
    pub(super) fn admit(&mut self, sid: SessionId, conn: ConnId, msg: &ClientMsg) -> bool {
        if !self.admit_kind(sid, conn, msg) {
            return false;
        }
        if !matches!(msg, ClientMsg::Goodbye) {
            let (per_s, burst, now) = (
                self.config.messages_per_s,
                self.config.message_burst,
                self.now,
            );
            let limit = match self.sessions.get_mut(&sid) {
                Some(s) => s.rate.take(per_s, burst, now),
                None => Limit::Pass,
            };
            match limit {
                Limit::Pass => {}
                Limit::Close => {
                    self.close_conn(
                        conn,
                        CloseReason::Flooding,
                        format!("more than {burst} messages past the rate limit"),
                    );
                    return false;
                }
                Limit::Refuse => {
                    self.refuse(sid, conn, msg.name(), msg.req(), Refusal::RateLimited);
                    return false;
                }
            }
        }
        if let Err(reason) = self.authorize(sid, msg) {
            if matches!(msg, ClientMsg::Hello { .. } | ClientMsg::Resume { .. }) {
                self.close_conn(
                    conn,
                    CloseReason::ProtocolViolation,
                    "hello sent twice".into(),
                );
            } else if msg.req().is_none() && reason == Refusal::Invalid {
                self.close_conn(
                    conn,
                    CloseReason::ProtocolViolation,
                    format!("{} breaks a limit", msg.name()),
                );
            } else {
                self.refuse(sid, conn, msg.name(), msg.req(), reason);
            }
            return false;
        }
        if self.config.durable_acks
            && !self.storage_ok
            && msg.req().is_some()
            && !matches!(msg, ClientMsg::Command { .. } | ClientMsg::Kick { .. })
        {
            self.refuse(sid, conn, msg.name(), msg.req(), Refusal::Storage);
            return false;
        }
        true
    }

    /// The one authorization point: may session `sid` do `msg`? Rank rules, ownership and
    /// limits. Nothing changes before this says yes.
    pub(super) fn authorize(&self, sid: SessionId, msg: &ClientMsg) -> Result<(), Refusal> {
        use ClientMsg::*;
        if let Some(answer) = self.authorize_spectator(sid, msg) {
            return answer;
        }
        let rank = self.rank_of(sid);
        let builder = rank >= Rank::Builder;
        let need = |ok: bool| if ok { Ok(()) } else { Err(Refusal::Rank) };
        let text_ok = |s: &str, max: usize| s.len() <= max;
        let opt_ok = |s: &Option<String>| s.as_ref().is_none_or(|s| s.len() <= TEXT_BYTES_MAX);
        let props_ok = |p: &[(String, Bytes)]| {
            p.len() <= ENTITY_PROPS_MAX
                && p.iter()
                    .all(|(k, v)| k.len() <= ID_BYTES_MAX && v.0.len() <= EVENT_DATA_BYTES_MAX)
        };
        let transform_ok = |t: &Transform| self.transform_ok(t);
        let limits = &self.config.limits;
        let blueprint_ok = |b: &Blueprint| {
            !b.id.0.is_empty()
                && b.id.0.len() <= ID_BYTES_MAX
                && text_ok(&b.name, TEXT_BYTES_MAX)
                && text_ok(&b.author, TEXT_BYTES_MAX)
                && text_ok(&b.desc, TEXT_BYTES_MAX)
                && opt_ok(&b.model)
                && opt_ok(&b.script)
                && opt_ok(&b.image)
        };
        let outranks = |target: EntityId| -> Result<(), Refusal> {
            let t = self.player_session(target).ok_or(Refusal::NotFound)?;
            if rank > self.world.effective_rank(t.user) {
                Ok(())
            } else {
                Err(Refusal::Rank)
            }
        };
        match msg {
            Hello { .. } | Spectate { .. } | SpectatorCamera { .. } | Resume { .. } => {
                Err(Refusal::Invalid)
            }
            Ping { .. } | Goodbye => Ok(()),
            Command { args, .. } => {
                if args.is_empty()
                    || args.len() > COMMAND_ARGS_MAX
                    || args.iter().any(|a| a.len() > COMMAND_ARG_BYTES_MAX)
                {
                    Err(Refusal::Invalid)
                } else {
                    Ok(())
                }
            }
            Chat { body, .. } => {
                if body.trim().is_empty() || body.len() > CHAT_BYTES_MAX {
                    return Err(Refusal::Invalid);
                }
                let user = self.sessions.get(&sid).map(|s| s.user);
                // A mute past its end no longer holds (issue 15: timed mutes).
                let now_ms = self.unix_ms();
                if user
                    .and_then(|u| self.world.users.get(&u))
                    .is_some_and(|u| u.is_muted(now_ms))
                {
                    return Err(Refusal::Muted);
                }
                // `/admin CODE` typed as chat is never relayed: the code would reach everyone.
                if super::moderation::chat_carries_secret(body) {
                    return Err(Refusal::Invalid);
                }
                Ok(())
            }
            BlueprintAdd { blueprint, .. } => {
                need(builder)?;
                if !blueprint_ok(blueprint) || blueprint.props.0.len() > FRAME_BYTES_MAX / 2 {
                    return Err(Refusal::Invalid);
                }
                if self.world.blueprints.contains_key(&blueprint.id) {
                    return Err(Refusal::Exists);
                }
                if blueprint.version > limits.blueprint_version_step_max {
                    return Err(Refusal::Invalid);
                }
                if self.world.blueprints.len() >= BLUEPRINTS_MAX {
                    return Err(Refusal::WorldFull);
                }
                self.quota_allows_blueprint(sid, 0, quota::blueprint_bytes(blueprint))
            }
            BlueprintModify {
                id, patch, version, ..
            } => {
                need(builder)?;
                let current = self.world.blueprints.get(id).ok_or(Refusal::NotFound)?;
                let mut b = current.clone();
                patch.apply(&mut b);
                if !blueprint_ok(&b) || b.props.0.len() > FRAME_BYTES_MAX / 2 {
                    return Err(Refusal::Invalid);
                }
                // A version at or below the stored one is a conflict (answered in `apply`); one
                // too far above would freeze the blueprint for everyone else.
                if version.saturating_sub(current.version) > limits.blueprint_version_step_max {
                    return Err(Refusal::Invalid);
                }
                let owner = self.usage.blueprint_owner(id);
                let before = quota::blueprint_bytes(current);
                self.quota_allows_blueprint_of(owner, before, quota::blueprint_bytes(&b))
            }
            EntityAdd {
                blueprint,
                transform,
                props,
                ..
            } => {
                need(builder)?;
                if !self.world.blueprints.contains_key(blueprint) {
                    return Err(Refusal::NotFound);
                }
                if !transform_ok(transform) || !props_ok(props) {
                    return Err(Refusal::Invalid);
                }
                if self.world.entities.len() >= ENTITIES_MAX || self.usage.apps >= limits.apps_max {
                    return Err(Refusal::WorldFull);
                }
                let user = self.sessions.get(&sid).map(|s| s.user);
                if user.is_some_and(|u| self.usage.user(u).entities >= limits.entities_per_user_max)
                {
                    return Err(Refusal::WorldFull);
                }
                let bytes = quota::app_bytes(&Entity {
                    id: EntityId(0),
                    kind: EntityKind::App,
                    owner: None,
                    user,
                    blueprint: Some(blueprint.clone()),
                    transform: *transform,
                    props: props.clone(),
                });
                if self.usage.world_bytes + bytes > limits.world_bytes_max {
                    return Err(Refusal::WorldFull);
                }
                Ok(())
            }
            EntityModify { id, patch, .. } => {
                let e = self.world.entities.get(id).ok_or(Refusal::NotFound)?;
                if !builder && e.owner != Some(sid) {
                    return Err(Refusal::NotOwner);
                }
                let added = patch
                    .set
                    .iter()
                    .filter(|(k, _)| !e.props.iter().any(|(pk, _)| pk == k))
                    .count();
                if !props_ok(&patch.set)
                    || patch.unset.len() > ENTITY_PROPS_MAX
                    || patch.transform.as_ref().is_some_and(|t| !transform_ok(t))
                    || e.props.len() + added > ENTITY_PROPS_MAX
                {
                    return Err(Refusal::Invalid);
                }
                // A player's name and rank are the server's to set (`/name`, `ModifyRank`).
                let reserved = |k: &String| PLAYER_RESERVED_PROPS.contains(&k.as_str());
                if e.kind == EntityKind::Player
                    && (patch.set.iter().any(|(k, _)| reserved(k))
                        || patch.unset.iter().any(reserved))
                {
                    return Err(Refusal::Rank);
                }
                if e.kind == EntityKind::App {
                    let mut after = e.clone();
                    patch.apply(&mut after);
                    let (before, after) = (quota::app_bytes(e), quota::app_bytes(&after));
                    if after > before
                        && self.usage.world_bytes + after - before > limits.world_bytes_max
                    {
                        return Err(Refusal::WorldFull);
                    }
                }
                Ok(())
            }
            EntityRemove { id, .. } => {
                need(builder)?;
                let e = self.world.entities.get(id).ok_or(Refusal::NotFound)?;
                if e.kind == EntityKind::Player {
                    return Err(Refusal::Invalid);
                }
                Ok(())
            }
            EntityEvent {
                entity,
                name,
                data,
                to,
                ..
            } => {
                if !self.world.entities.contains_key(entity) {
                    return Err(Refusal::NotFound);
                }
                if name.len() > EVENT_NAME_BYTES_MAX || data.0.len() > EVENT_DATA_BYTES_MAX {
                    return Err(Refusal::Invalid);
                }
                if let Some(to) = to {
                    self.player_session(*to).ok_or(Refusal::NotFound)?;
                }
                Ok(())
            }
            PlayerTeleport {
                target,
                position,
                rotation_y,
            } => {
                self.player_session(*target).ok_or(Refusal::NotFound)?;
                let own = self.sessions.get(&sid).map(|s| s.player) == Some(*target);
                need(own || builder)?;
                if !position.is_finite() || !rotation_y.is_finite() || !self.inside_world(position)
                {
                    return Err(Refusal::Invalid);
                }
                Ok(())
            }
            PlayerPush { target, force } => {
                self.player_session(*target).ok_or(Refusal::NotFound)?;
                let own = self.sessions.get(&sid).map(|s| s.player) == Some(*target);
                need(own || builder)?;
                let speed = f64::from(force.length());
                if !force.is_finite() || speed > f64::from(limits.push_speed_max) {
                    return Err(Refusal::Invalid);
                }
                Ok(())
            }
            SettingsModify { setting, .. } => {
                need(builder)?;
                let ok = match setting {
                    Setting::Title(s) | Setting::Desc(s) => s.len() <= TEXT_BYTES_MAX,
                    Setting::Image(s) | Setting::Avatar(s) => opt_ok(s),
                    // Raising the default rank above builder would make everyone admin.
                    Setting::DefaultRank(r) => *r <= Rank::Builder || rank == Rank::Admin,
                    _ => true,
                };
                if ok {
                    Ok(())
                } else {
                    Err(Refusal::Invalid)
                }
            }
            SpawnModify { .. } => need(builder),
            ModifyRank { user, .. } => {
                need(rank >= Rank::Admin)?;
                if !self.world.users.contains_key(user) {
                    return Err(Refusal::NotFound);
                }
                Ok(())
            }
            Kick { target, .. } | Mute { target, .. } => outranks(*target),
            BlueprintRemove { id, .. } => {
                need(rank >= Rank::Admin)?;
                if !self.world.blueprints.contains_key(id) {
                    return Err(Refusal::NotFound);
                }
                Ok(())
            }
        }
    }

    /// A spectator's messages: it watches and talks (chat and commands then pass the usual
    /// rules, `None`), and changes nothing in the world. `None` for a session with a player.
    fn authorize_spectator(&self, sid: SessionId, msg: &ClientMsg) -> Option<Result<(), Refusal>> {
        use ClientMsg::*;
        self.sessions.get(&sid)?.camera?;
        match msg {
            Chat { .. } | Command { .. } => None,
            Ping { .. } | Goodbye => Some(Ok(())),
            SpectatorCamera { position } if position.is_finite() => Some(Ok(())),
            Hello { .. } | Spectate { .. } | SpectatorCamera { .. } => Some(Err(Refusal::Invalid)),
            _ => Some(Err(Refusal::Rank)),
        }
    }
}
