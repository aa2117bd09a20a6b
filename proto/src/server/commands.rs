//! Slash commands (`Command` messages): `/chat clear`, `/spawn set|clear`, `/name NEW`,
//! `/admin CODE` (in `admin_code.rs`), the moderation commands (`moderation.rs`), `/delete
//! blueprint ID` (admin: the blueprint and its apps) and `/delete entity ID` (builder: one app).
//! Each checks its own rank rule; unknown commands are refused.

use super::{ConnId, ServerCore};
use crate::persist::Change;
use crate::types::*;
use crate::wire::limits::NAME_BYTES_MAX;
use crate::wire::msg::*;

impl ServerCore {
    pub(super) fn handle_command(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        req: ReqId,
        args: Vec<String>,
    ) {
        let rank = self.rank_of(sid);
        let player = self.sessions.get(&sid).map(|s| s.player);
        let refuse = |core: &mut Self, reason| {
            core.send(conn, &ServerMsg::Refused { req, reason });
        };
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        // ---- identity and moderation (issue 15) ----
        if self.moderation_command(sid, conn, req, &words) {
            return;
        }
        match words.as_slice() {
            ["chat", "clear"] => {
                if rank < Rank::Builder {
                    return refuse(self, Refusal::Rank);
                }
                self.world.chat.clear();
                self.broadcast(&ServerMsg::ChatCleared, None);
                self.commit(sid, conn, Some(req), Change::ClearChat);
            }
            ["spawn", op @ ("set" | "clear")] => {
                if rank < Rank::Builder {
                    return refuse(self, Refusal::Rank);
                }
                match player {
                    Some(p) => self.set_spawn(sid, conn, req, *op == "set", p),
                    // Answered, never left pending: a session without a player has nowhere
                    // to set the spawn from.
                    None => refuse(self, Refusal::NotFound),
                }
            }
            ["name", new] => {
                let new = new.trim();
                if new.is_empty() || new.len() > NAME_BYTES_MAX || new.chars().any(char::is_control)
                {
                    return refuse(self, Refusal::Invalid);
                }
                let new = new.to_string();
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                s.name = new.clone();
                let (user, player) = (s.user, s.player);
                let patch = EntityPatch {
                    set: vec![("name".into(), Bytes::from(new.as_str()))],
                    ..Default::default()
                };
                if let Some(e) = self.world.entities.get_mut(&player) {
                    patch.apply(e);
                }
                self.broadcast(&ServerMsg::EntityModified { id: player, patch }, None);
                let rec = self.world.users.get_mut(&user).map(|u| {
                    u.name = new;
                    u.clone()
                });
                match rec {
                    Some(rec) => self.commit(sid, conn, Some(req), Change::PutUser(rec)),
                    None => self.ack_now(conn, req),
                }
            }
            ["admin", code] => self.admin_code_attempt(sid, conn, req, code),
            // ---- limits half (issue 15): deleting what fills the world ----
            ["delete", "blueprint", id] => {
                if rank < Rank::Admin {
                    return refuse(self, Refusal::Rank);
                }
                let id = BlueprintId((*id).to_string());
                if !self.world.blueprints.contains_key(&id) {
                    return refuse(self, Refusal::NotFound);
                }
                self.remove_blueprint(&id);
                self.commit(sid, conn, Some(req), Change::DeleteBlueprint(id));
            }
            ["delete", "entity", id] => {
                if rank < Rank::Builder {
                    return refuse(self, Refusal::Rank);
                }
                let Some(id) = id.parse().ok().map(EntityId) else {
                    return refuse(self, Refusal::Invalid);
                };
                match self.world.entities.get(&id).map(|e| e.kind) {
                    Some(EntityKind::App) => {}
                    Some(EntityKind::Player) => return refuse(self, Refusal::Invalid),
                    None => return refuse(self, Refusal::NotFound),
                }
                self.remove_app(id);
                self.commit(sid, conn, Some(req), Change::DeleteEntity(id));
            }
            // ---- end of the limits half ----
            _ => refuse(self, Refusal::UnknownCommand),
        }
    }
}
