//! Quotas that keep the world joinable: what the world's blueprints and apps weigh (in all and
//! per user), checked by policy before anything grows, kept up to date by `apply`. Sizes are
//! estimates of the encoded size ([`blueprint_bytes`], [`app_bytes`]), never below it, so a
//! world under [`super::limits::LimitsConfig::world_bytes_max`] has a snapshot under it too
//! (plus players, chat and settings).
//!
//! Who made what: an app's creator is its `Entity::user` (set at `EntityAdd`, stored with it,
//! so it survives a restart); a blueprint's creator is remembered in memory only (the
//! blueprint's wire form has no field for it), so after a restart old blueprints count
//! against the world's cap but no user's.

use std::collections::BTreeMap;

use super::MOVER_PROP;
use crate::persist::World;
use crate::types::*;

/// Fixed part of a blueprint's estimated size, bytes: its version, flags, the length prefixes
/// and option tags of its nine fields (postcard: at most a few bytes each), rounded up.
const BLUEPRINT_OVERHEAD_BYTES: usize = 64;
/// Fixed part of an app's estimated size, bytes: id, kind, owner, user, the transform (up to
/// ten f32s, 40 bytes), length prefixes, rounded up.
const APP_OVERHEAD_BYTES: usize = 96;
/// Per-prop overhead, bytes: two length prefixes.
const PROP_OVERHEAD_BYTES: usize = 8;

/// A blueprint's estimated encoded size, bytes (never below postcard's).
pub fn blueprint_bytes(b: &Blueprint) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    BLUEPRINT_OVERHEAD_BYTES
        + b.id.0.len()
        + b.name.len()
        + b.author.len()
        + b.desc.len()
        + opt(&b.model)
        + opt(&b.script)
        + opt(&b.image)
        + b.props.0.len()
}

/// An app's estimated encoded size, bytes (never below postcard's, but for the server-stamped
/// `mover` prop, which is not counted so that taking and releasing an app never changes it).
pub fn app_bytes(e: &Entity) -> usize {
    APP_OVERHEAD_BYTES
        + e.blueprint.as_ref().map_or(0, |b| b.0.len())
        + e.props
            .iter()
            .filter(|(k, _)| k != MOVER_PROP)
            .map(|(k, v)| PROP_OVERHEAD_BYTES + k.len() + v.0.len())
            .sum::<usize>()
}

/// What one user's things weigh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserUsage {
    /// App entities they placed.
    pub entities: u32,
    /// Bytes of the blueprints they added ([`blueprint_bytes`]).
    pub blueprint_bytes: usize,
}

/// What the world's blueprints and apps weigh, in all and per user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of every blueprint and app ([`blueprint_bytes`], [`app_bytes`]).
    pub world_bytes: usize,
    /// App entities in the world.
    pub apps: usize,
    /// Per user.
    pub(super) per_user: BTreeMap<UserId, UserUsage>,
    /// Who added each blueprint this run.
    pub(super) blueprint_owner: BTreeMap<BlueprintId, UserId>,
}

impl Usage {
    /// The usage of a loaded world (blueprints attributed to nobody, see the module docs).
    pub fn of_world(world: &World) -> Usage {
        let mut u = Usage::default();
        for b in world.blueprints.values() {
            u.world_bytes += blueprint_bytes(b);
        }
        for e in world.entities.values() {
            if e.kind == EntityKind::App {
                u.add_app(e);
            }
        }
        u
    }

    /// One user's usage.
    pub fn user(&self, user: UserId) -> UserUsage {
        self.per_user.get(&user).copied().unwrap_or_default()
    }

    /// Who added blueprint `id` this run, if known.
    pub fn blueprint_owner(&self, id: &BlueprintId) -> Option<UserId> {
        self.blueprint_owner.get(id).copied()
    }

    /// A blueprint was added by `by`.
    pub(super) fn add_blueprint(&mut self, b: &Blueprint, by: UserId) {
        let n = blueprint_bytes(b);
        self.world_bytes += n;
        self.per_user.entry(by).or_default().blueprint_bytes += n;
        self.blueprint_owner.insert(b.id.clone(), by);
    }

    /// A blueprint changed from `before` bytes to `after`.
    pub(super) fn resize_blueprint(&mut self, id: &BlueprintId, before: usize, after: usize) {
        self.world_bytes = (self.world_bytes + after).saturating_sub(before);
        if let Some(owner) = self.blueprint_owner.get(id) {
            let u = self.per_user.entry(*owner).or_default();
            u.blueprint_bytes = (u.blueprint_bytes + after).saturating_sub(before);
        }
    }

    /// A blueprint was removed.
    pub(super) fn remove_blueprint(&mut self, b: &Blueprint) {
        let n = blueprint_bytes(b);
        self.world_bytes = self.world_bytes.saturating_sub(n);
        if let Some(owner) = self.blueprint_owner.remove(&b.id) {
            let u = self.per_user.entry(owner).or_default();
            u.blueprint_bytes = u.blueprint_bytes.saturating_sub(n);
        }
    }

    /// An app was added (its creator is `e.user`).
    pub(super) fn add_app(&mut self, e: &Entity) {
        self.world_bytes += app_bytes(e);
        self.apps += 1;
        if let Some(user) = e.user {
            self.per_user.entry(user).or_default().entities += 1;
        }
    }

    /// An app changed from `before` bytes to `after`.
    pub(super) fn resize_app(&mut self, before: usize, after: usize) {
        self.world_bytes = (self.world_bytes + after).saturating_sub(before);
    }

    /// An app was removed.
    pub(super) fn remove_app(&mut self, e: &Entity) {
        self.world_bytes = self.world_bytes.saturating_sub(app_bytes(e));
        self.apps = self.apps.saturating_sub(1);
        if let Some(user) = e.user {
            let u = self.per_user.entry(user).or_default();
            u.entities = u.entities.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimated_sizes_are_never_below_the_encoded_sizes() {
        let b = Blueprint {
            id: BlueprintId("b".repeat(64)),
            version: u32::MAX,
            name: "n".repeat(300),
            author: "a".into(),
            model: Some("m".repeat(200)),
            script: Some("s".repeat(70_000)),
            image: None,
            desc: "d".repeat(5),
            props: Bytes(vec![7; 1000]),
            flags: BlueprintFlags::default(),
        };
        assert!(blueprint_bytes(&b) >= postcard::to_allocvec(&b).unwrap().len());
        let e = Entity {
            id: EntityId(u32::MAX),
            kind: EntityKind::App,
            owner: Some(SessionId(u64::MAX)),
            user: Some(UserId(u64::MAX)),
            blueprint: Some(BlueprintId("b".repeat(64))),
            transform: Transform {
                scale: Some(Vec3::ONE),
                ..Transform::default()
            },
            props: (0..64)
                .map(|i| (format!("k{i}").repeat(30), Bytes(vec![1; 300])))
                .collect(),
        };
        assert!(app_bytes(&e) >= postcard::to_allocvec(&e).unwrap().len());
    }
}
