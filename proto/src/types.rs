//! The world's data types, shared by the wire protocol, the cores and persistence.
//!
//! Ids are small integers chosen by the server (entities, users, sessions) or short strings
//! chosen by the author (blueprints), so they stay compact on the wire and in the delta codec.

use serde::{Deserialize, Serialize};

/// Opaque, application-defined bytes (a game's own encoding: JSON, msgpack, its own structs).
/// Encoded as a length-prefixed byte string, not a list of numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Bytes {
        Bytes(v.to_vec())
    }
}

impl From<&str> for Bytes {
    fn from(v: &str) -> Bytes {
        Bytes(v.as_bytes().to_vec())
    }
}

/// An entity's id, allocated by the server, unique for the world's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityId(pub u32);

/// A user's id, stable across sessions (the auth token names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub u64);

/// A session's id: one join of one user, which may outlive several transport connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// A blueprint's id, chosen by its author (at most [`crate::wire::limits::ID_BYTES_MAX`] bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlueprintId(pub String);

/// The id a client gives one of its reliable changes, echoed in the `Ack` or `Refused` that
/// answers it. Chosen by the client; the server only echoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReqId(pub u32);

/// A unit quaternion: glam's. On the wire it is four `f32`s, x, y, z, w.
pub use glam::Quat;
/// A position or vector in metres, world space: glam's (the Rust game ecosystem's math type).
/// On the wire it is three `f32`s, x, y, z.
pub use glam::Vec3;

/// Where an entity is. Scale is optional because most entities never scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// Position in metres.
    pub position: Vec3,
    /// Rotation as a unit quaternion.
    pub rotation: Quat,
    /// Non-uniform scale, `None` for `[1, 1, 1]`.
    pub scale: Option<Vec3>,
}

impl Default for Transform {
    fn default() -> Self {
        Transform {
            position: Vec3::ZERO,
            rotation: Quat::IDENTITY,
            scale: None,
        }
    }
}

/// A user's rank. Ordered: `Visitor < Builder < Admin`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Rank {
    /// May chat, move its own player and modify entities it owns.
    #[default]
    Visitor,
    /// May also add and modify blueprints and entities, settings, spawn, and clear chat.
    Builder,
    /// May also change ranks.
    Admin,
}

/// What kind of thing an entity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntityKind {
    /// A connected user's avatar, spawned by the server on join and removed on leave.
    Player,
    /// An instance of a blueprint, placed by a builder; persists.
    App,
}

/// An entity: a player or an app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// Server-allocated id.
    pub id: EntityId,
    /// Player or app.
    pub kind: EntityKind,
    /// The session that owns it (a player's own session; for apps, the session moving it, if any).
    pub owner: Option<SessionId>,
    /// For players, the user it represents.
    pub user: Option<UserId>,
    /// The blueprint it instantiates (apps), if any.
    pub blueprint: Option<BlueprintId>,
    /// Where it is.
    pub transform: Transform,
    /// Free-form named fields (name, avatar, health, app state...), application-defined bytes.
    pub props: Vec<(String, Bytes)>,
}

/// A change to an entity's non-transform fields, carried reliably.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityPatch {
    /// Fields set (added or replaced).
    pub set: Vec<(String, Bytes)>,
    /// Fields removed.
    pub unset: Vec<String>,
    /// A new transform, applied reliably (placing an app); streaming motion uses datagrams.
    pub transform: Option<Transform>,
}

impl EntityPatch {
    /// Applies the patch to `e`, as server and clients alike do: removes the `unset` fields,
    /// then sets each `set` field (replacing it in place, or appending it), then the transform.
    pub fn apply(&self, e: &mut Entity) {
        for k in &self.unset {
            e.props.retain(|(pk, _)| pk != k);
        }
        for (k, v) in &self.set {
            match e.props.iter_mut().find(|(pk, _)| pk == k) {
                Some(slot) => slot.1 = v.clone(),
                None => e.props.push((k.clone(), v.clone())),
            }
        }
        if let Some(t) = self.transform {
            e.transform = t;
        }
    }
}

/// A blueprint: the template apps are instances of. Versioned for optimistic concurrency.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Blueprint {
    /// Author-chosen id.
    pub id: BlueprintId,
    /// Version, incremented by every accepted modification.
    pub version: u32,
    /// Display name.
    pub name: String,
    /// Who made it.
    pub author: String,
    /// Model asset URL.
    pub model: Option<String>,
    /// Script asset URL.
    pub script: Option<String>,
    /// Image asset URL.
    pub image: Option<String>,
    /// Description.
    pub desc: String,
    /// Application-defined properties.
    pub props: Bytes,
    /// Flags: preload, public, locked, frozen, unique, scene, disabled.
    pub flags: BlueprintFlags,
}

/// A blueprint's boolean flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueprintFlags {
    /// Load before the world shows.
    pub preload: bool,
    /// Listed for other worlds.
    pub public: bool,
    /// Not editable.
    pub locked: bool,
    /// Not movable.
    pub frozen: bool,
    /// Instances do not share state.
    pub unique: bool,
    /// The world's scene blueprint.
    pub scene: bool,
    /// Instances are not run.
    pub disabled: bool,
}

/// A shallow change to a blueprint: each `Some` replaces that field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlueprintPatch {
    /// New name.
    pub name: Option<String>,
    /// New author.
    pub author: Option<String>,
    /// New model URL (`Some(None)` clears it).
    pub model: Option<Option<String>>,
    /// New script URL.
    pub script: Option<Option<String>>,
    /// New image URL.
    pub image: Option<Option<String>>,
    /// New description.
    pub desc: Option<String>,
    /// New properties.
    pub props: Option<Bytes>,
    /// New flags.
    pub flags: Option<BlueprintFlags>,
}

impl BlueprintPatch {
    /// A patch that sets every field to the blueprint's: used to send a full blueprint back.
    pub fn full(b: &Blueprint) -> BlueprintPatch {
        BlueprintPatch {
            name: Some(b.name.clone()),
            author: Some(b.author.clone()),
            model: Some(b.model.clone()),
            script: Some(b.script.clone()),
            image: Some(b.image.clone()),
            desc: Some(b.desc.clone()),
            props: Some(b.props.clone()),
            flags: Some(b.flags),
        }
    }

    /// Folds a later patch into this one: applying the result equals applying `self`, then
    /// `later`.
    pub fn merge(&mut self, later: BlueprintPatch) {
        let BlueprintPatch {
            name,
            author,
            model,
            script,
            image,
            desc,
            props,
            flags,
        } = later;
        fn take<T>(into: &mut Option<T>, v: Option<T>) {
            if v.is_some() {
                *into = v;
            }
        }
        take(&mut self.name, name);
        take(&mut self.author, author);
        take(&mut self.model, model);
        take(&mut self.script, script);
        take(&mut self.image, image);
        take(&mut self.desc, desc);
        take(&mut self.props, props);
        take(&mut self.flags, flags);
    }

    /// Applies the patch to `b` (shallow merge, as the reference engine does).
    pub fn apply(&self, b: &mut Blueprint) {
        if let Some(v) = &self.name {
            b.name = v.clone();
        }
        if let Some(v) = &self.author {
            b.author = v.clone();
        }
        if let Some(v) = &self.model {
            b.model = v.clone();
        }
        if let Some(v) = &self.script {
            b.script = v.clone();
        }
        if let Some(v) = &self.image {
            b.image = v.clone();
        }
        if let Some(v) = &self.desc {
            b.desc = v.clone();
        }
        if let Some(v) = &self.props {
            b.props = v.clone();
        }
        if let Some(v) = self.flags {
            b.flags = v;
        }
    }
}

/// A chat message as the server stamped it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Server-assigned, increasing.
    pub id: u64,
    /// The sending user, `None` for system messages.
    pub from_user: Option<UserId>,
    /// The sender's display name at the time (stamped by the server).
    pub from_name: String,
    /// The sender's player entity, if any.
    pub from_entity: Option<EntityId>,
    /// The text.
    pub body: String,
    /// Server time of arrival, milliseconds since the Unix epoch as the driver reported it.
    pub created_at_ms: u64,
}

/// World settings (the reference engine's set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// World title.
    pub title: String,
    /// World description.
    pub desc: String,
    /// World image URL.
    pub image: Option<String>,
    /// Default avatar URL.
    pub avatar: Option<String>,
    /// Whether users may choose their own avatar.
    pub custom_avatars: bool,
    /// The rank every user has at least.
    pub default_rank: Rank,
    /// Maximum connected players, 0 for unlimited.
    pub player_limit: u32,
    /// Ambient occlusion on.
    pub ao: bool,
    /// Player movement authority: the server simulates (default) or trusts and validates clients.
    pub movement: MovementAuthority,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            title: "neonet world".into(),
            desc: String::new(),
            image: None,
            avatar: None,
            custom_avatars: false,
            default_rank: Rank::Visitor,
            player_limit: 0,
            ao: true,
            movement: MovementAuthority::Server,
        }
    }
}

/// Who simulates player movement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovementAuthority {
    /// The server runs the movement model on the client's inputs; clients predict.
    #[default]
    Server,
    /// Clients send their own transforms (the reference engine's mode); the server validates
    /// speed and bounds.
    Client,
}

/// One setting change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Setting {
    /// See [`Settings::title`].
    Title(String),
    /// See [`Settings::desc`].
    Desc(String),
    /// See [`Settings::image`].
    Image(Option<String>),
    /// See [`Settings::avatar`].
    Avatar(Option<String>),
    /// See [`Settings::custom_avatars`].
    CustomAvatars(bool),
    /// See [`Settings::default_rank`].
    DefaultRank(Rank),
    /// See [`Settings::player_limit`].
    PlayerLimit(u32),
    /// See [`Settings::ao`].
    Ao(bool),
    /// See [`Settings::movement`].
    Movement(MovementAuthority),
}

impl Setting {
    /// Applies the change to `s`.
    pub fn apply(&self, s: &mut Settings) {
        match self.clone() {
            Setting::Title(v) => s.title = v,
            Setting::Desc(v) => s.desc = v,
            Setting::Image(v) => s.image = v,
            Setting::Avatar(v) => s.avatar = v,
            Setting::CustomAvatars(v) => s.custom_avatars = v,
            Setting::DefaultRank(v) => s.default_rank = v,
            Setting::PlayerLimit(v) => s.player_limit = v,
            Setting::Ao(v) => s.ao = v,
            Setting::Movement(v) => s.movement = v,
        }
    }
}

/// Where players appear.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spawn {
    /// Position in metres.
    pub position: Vec3,
    /// Rotation.
    pub rotation: Quat,
}

impl Default for Spawn {
    fn default() -> Self {
        Spawn {
            position: Vec3::ZERO,
            rotation: Quat::IDENTITY,
        }
    }
}

/// A user as the world knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Stable id.
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Stored rank (the effective rank is at least the world's default rank).
    pub rank: Rank,
    /// Muted users' chat is dropped.
    pub muted: bool,
    /// Banned users are refused at join.
    pub banned: bool,
    /// Where the user's player was when they last left, if known.
    pub last_position: Option<Vec3>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merged_patch_applies_as_both_in_order() {
        let first = BlueprintPatch {
            name: Some("one".into()),
            model: Some(Some("m.glb".into())),
            desc: Some("first".into()),
            ..Default::default()
        };
        let second = BlueprintPatch {
            model: Some(None),
            desc: Some("second".into()),
            flags: Some(BlueprintFlags::default()),
            ..Default::default()
        };
        let mut in_order = Blueprint::default();
        first.apply(&mut in_order);
        second.apply(&mut in_order);
        let mut merged = first.clone();
        merged.merge(second);
        let mut at_once = Blueprint::default();
        merged.apply(&mut at_once);
        assert_eq!(in_order, at_once);
        assert_eq!(at_once.name, "one");
        assert_eq!(at_once.model, None);
        assert_eq!(at_once.desc, "second");
    }
}
