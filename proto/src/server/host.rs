//! The host's authority: a game that hosts its own [`ServerCore`] changes the world directly,
//! with no client involved. Spawning, modifying and removing entities and blueprints goes out
//! through the same broadcasts (on the World channel, in the same order as every other change),
//! the same interest and the same persistence effects as the changes clients send
//! (`apply.rs`); nobody is acknowledged, since nobody asked.
//!
//! Entities the host simulates (server-side physics) get their transform set every tick with
//! [`ServerCore::host_set_transform`]: the tick quantizes the world once and every client's
//! transform datagrams carry it, exactly like a player's motion. Their state is emitted for the
//! store once per tick they moved in ([`Change::PutEntityState`]), like apps moved by clients.
//!
//! Per-entity priority weights ([`ServerCore::host_set_priority`]) feed the priority
//! accumulator of every client's replicator (Fiedler's: each tick an entity that needs sending
//! gains its weight; the highest go first, and sent ones start over). The [`priority`]
//! constants are his scale. An entity marked relevant to everyone
//! ([`ServerCore::host_set_global`]) is in every client's interest whatever the distance, with
//! the distance factor of an entity right next to the viewer.

use super::{ServerCore, MOVER_PROP};
use crate::persist::Change;
use crate::types::*;
use crate::wire::msg::ServerMsg;

/// Fiedler's priority weights ("State Synchronization"): set one with
/// [`ServerCore::host_set_priority`].
pub mod priority {
    /// An entity a player controls: always goes first (a million times an entity at rest).
    pub const PLAYER: f32 = 1_000_000.0;
    /// An entity interacting with a player (pushed, carried, colliding with it).
    pub const INTERACTING: f32 = 100.0;
    /// An entity at rest or far from any interaction: the default weight.
    pub const AT_REST: f32 = 1.0;
}

/// What the host said about one entity beyond the entity itself: how it is prioritised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct HostWeights {
    /// Priority weight (see [`priority`]).
    pub(super) weight: f32,
    /// In every client's interest regardless of distance.
    pub(super) global: bool,
}

impl Default for HostWeights {
    fn default() -> Self {
        HostWeights {
            weight: priority::AT_REST,
            global: false,
        }
    }
}

/// Why a host call did nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// No entity has this id.
    #[error("no entity {0:?}")]
    NoEntity(EntityId),
    /// No blueprint has this id.
    #[error("no blueprint {0:?}")]
    NoBlueprint(BlueprintId),
    /// Players belong to their sessions: the host may move and modify them but not remove
    /// them (close their connection instead).
    #[error("{0:?} is a player")]
    IsPlayer(EntityId),
    /// A value is not finite or out of range.
    #[error("invalid value: {0}")]
    Invalid(&'static str),
}

fn transform_ok(t: &Transform) -> bool {
    t.position.is_finite() && t.rotation.is_finite() && t.scale.is_none_or(|s| s.is_finite())
}

impl ServerCore {
    /// Adds a blueprint, or replaces one with the same id (its version is then one above the
    /// stored one, so every client takes it). Broadcast and persisted.
    pub fn host_add_blueprint(&mut self, mut blueprint: Blueprint) {
        if let Some(old) = self.world.blueprints.get(&blueprint.id) {
            blueprint.version = blueprint.version.max(old.version + 1);
            let patch = BlueprintPatch::full(&blueprint);
            let id = blueprint.id.clone();
            let version = blueprint.version;
            self.world.blueprints.insert(id.clone(), blueprint.clone());
            self.broadcast(&ServerMsg::BlueprintModified { id, version, patch }, None);
        } else {
            self.world
                .blueprints
                .insert(blueprint.id.clone(), blueprint.clone());
            self.broadcast(&ServerMsg::BlueprintAdded(blueprint.clone()), None);
        }
        self.persist(Change::PutBlueprint(blueprint));
    }

    /// Modifies a blueprint: its version goes up by one. Merged with other modifications of
    /// the same tick into one `BlueprintModified`, as clients' are.
    pub fn host_modify_blueprint(
        &mut self,
        id: &BlueprintId,
        patch: BlueprintPatch,
    ) -> Result<u32, HostError> {
        let Some(current) = self.world.blueprints.get_mut(id) else {
            return Err(HostError::NoBlueprint(id.clone()));
        };
        patch.apply(current);
        current.version += 1;
        let (version, stored) = (current.version, current.clone());
        match self.pending_blueprints.get_mut(id) {
            Some((v, pending)) => {
                *v = version;
                pending.merge(patch);
            }
            None => {
                self.pending_blueprints.insert(id.clone(), (version, patch));
            }
        }
        self.persist(Change::PutBlueprint(stored));
        Ok(version)
    }

    /// Spawns an app (an instance of `blueprint`, if any) at `transform` and returns its id.
    /// Everyone is sent `EntityAdded` after any blueprint added before it; it is persisted.
    pub fn host_spawn(
        &mut self,
        blueprint: Option<BlueprintId>,
        transform: Transform,
        props: Vec<(String, Bytes)>,
    ) -> Result<EntityId, HostError> {
        if !transform_ok(&transform) {
            return Err(HostError::Invalid("transform not finite"));
        }
        if let Some(b) = &blueprint {
            if !self.world.blueprints.contains_key(b) {
                return Err(HostError::NoBlueprint(b.clone()));
            }
        }
        let id = self.alloc_entity_id();
        let e = Entity {
            id,
            kind: EntityKind::App,
            owner: None,
            user: None,
            blueprint,
            transform,
            props,
        };
        self.world.entities.insert(id, e.clone());
        self.broadcast(&ServerMsg::EntityAdded(e.clone()), None);
        self.persist(Change::PutEntity(e));
        Ok(id)
    }

    /// Modifies an entity's fields (and, reliably, its transform): `EntityModified` to
    /// everyone; apps are persisted. Player fields the server owns (`name`, `rank`) and the
    /// `mover` prop stay as they are.
    pub fn host_modify(&mut self, id: EntityId, mut patch: EntityPatch) -> Result<(), HostError> {
        if patch.transform.as_ref().is_some_and(|t| !transform_ok(t)) {
            return Err(HostError::Invalid("transform not finite"));
        }
        let Some(e) = self.world.entities.get_mut(&id) else {
            return Err(HostError::NoEntity(id));
        };
        let reserved = |k: &str| {
            k == MOVER_PROP
                || (e.kind == EntityKind::Player && super::PLAYER_RESERVED_PROPS.contains(&k))
        };
        patch.set.retain(|(k, _)| !reserved(k));
        patch.unset.retain(|k| !reserved(k));
        patch.apply(e);
        let stored = e.clone();
        self.broadcast(&ServerMsg::EntityModified { id, patch }, None);
        if stored.kind == EntityKind::App {
            self.moved_apps.remove(&id);
            self.persist(Change::PutEntity(stored));
        }
        Ok(())
    }

    /// Removes an app: `EntityRemoved` to everyone, deleted from the store.
    pub fn host_remove(&mut self, id: EntityId) -> Result<(), HostError> {
        match self.world.entities.get(&id) {
            None => return Err(HostError::NoEntity(id)),
            Some(e) if e.kind == EntityKind::Player => return Err(HostError::IsPlayer(id)),
            Some(_) => {}
        }
        self.world.entities.remove(&id);
        self.moved_apps.remove(&id);
        self.host_weights.remove(&id);
        self.broadcast(&ServerMsg::EntityRemoved(id), None);
        self.persist(Change::DeleteEntity(id));
        Ok(())
    }

    /// Sets where an entity the host simulates is now. Call it every tick for every moving
    /// body, before the tick runs: the tick quantizes it once and streams it to every client
    /// that has it in interest, in their transform datagrams (unreliable, delta-compressed).
    /// An app's new state is emitted for the store at the end of the tick. A player's
    /// transform is its movement's to set (server-authoritative mode overwrites it).
    pub fn host_set_transform(
        &mut self,
        id: EntityId,
        transform: Transform,
    ) -> Result<(), HostError> {
        if !transform_ok(&transform) {
            return Err(HostError::Invalid("transform not finite"));
        }
        let Some(e) = self.world.entities.get_mut(&id) else {
            return Err(HostError::NoEntity(id));
        };
        if e.transform != transform {
            e.transform = transform;
            if e.kind == EntityKind::App {
                self.moved_apps.insert(id);
            }
        }
        Ok(())
    }

    /// Sends an entity event (`from` none: the host) to everyone, or to the player `to` only.
    pub fn host_event(
        &mut self,
        entity: EntityId,
        name: String,
        data: Bytes,
        to: Option<EntityId>,
    ) -> Result<(), HostError> {
        let Some(e) = self.world.entities.get(&entity) else {
            return Err(HostError::NoEntity(entity));
        };
        let blueprint_version = e
            .blueprint
            .as_ref()
            .and_then(|b| self.world.blueprints.get(b))
            .map_or(0, |b| b.version);
        let ev = ServerMsg::EntityEvent {
            entity,
            blueprint_version,
            name,
            data,
            from: None,
        };
        match to {
            Some(to) => {
                let conn = self.player_session(to).and_then(|s| s.conn);
                match conn {
                    Some(c) => self.send(c, &ev),
                    None => return Err(HostError::NoEntity(to)),
                }
            }
            None => self.broadcast(&ev, None),
        }
        Ok(())
    }

    /// Sets an entity's priority weight for every client's replicator (see [`priority`]):
    /// higher goes first when the budget is short. Not finite or negative is refused.
    pub fn host_set_priority(&mut self, id: EntityId, weight: f32) -> Result<(), HostError> {
        if !weight.is_finite() || weight < 0.0 {
            return Err(HostError::Invalid("priority weight not finite and ≥ 0"));
        }
        if !self.world.entities.contains_key(&id) {
            return Err(HostError::NoEntity(id));
        }
        self.host_weights.entry(id).or_default().weight = weight;
        Ok(())
    }

    /// Makes an entity relevant to everyone regardless of distance (a scoreboard, the ball of
    /// a match), or no longer.
    pub fn host_set_global(&mut self, id: EntityId, global: bool) -> Result<(), HostError> {
        if !self.world.entities.contains_key(&id) {
            return Err(HostError::NoEntity(id));
        }
        self.host_weights.entry(id).or_default().global = global;
        Ok(())
    }
}
