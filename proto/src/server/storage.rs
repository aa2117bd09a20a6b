//! The core's side of persistence: what the store reports back ([`ServerCore::handle_store`]),
//! the storage health that decides whether changes are accepted, and ids handed out under a
//! durable reservation (see [`crate::persist`]).

use super::resume::Outcome;
use super::ServerCore;
use crate::persist::{AckToken, Change, NextIds, StoreReport, ID_RESERVE_BLOCK};
use crate::types::{EntityId, UserId};
use crate::wire::msg::{Refusal, ServerMsg};

impl ServerCore {
    /// What the store did with the effects it was given: acknowledgements now due, changes it
    /// could not store (the disk failed), or changes it could not take (its queue was full).
    /// See [`StoreReport`] for what each does.
    pub fn handle_store(&mut self, report: StoreReport) {
        let (tokens, refusal) = match &report {
            StoreReport::Durable(tokens) => {
                self.storage_ok = true;
                (tokens, None)
            }
            StoreReport::Failed(tokens) => {
                self.storage_ok = false;
                (tokens, Some(Refusal::Storage))
            }
            StoreReport::Full(tokens) => (tokens, Some(Refusal::Busy)),
        };
        for t in tokens {
            self.answer(t, refusal);
        }
    }

    /// Acknowledges (`None`) or refuses the change `t` names, if its session is still here.
    fn answer(&mut self, t: &AckToken, refusal: Option<Refusal>) {
        let outcome = match refusal {
            None => Outcome::Acked,
            Some(r) => Outcome::Refused(r),
        };
        // Remembered even while the session's connection is lost: a resend after the resume
        // gets this answer.
        self.record_outcome(t.session, t.req, outcome);
        let Some(conn) = self.sessions.get(&t.session).and_then(|s| s.conn) else {
            return;
        };
        let msg = match refusal {
            None => ServerMsg::Ack { req: t.req },
            Some(reason) => ServerMsg::Refused { req: t.req, reason },
        };
        self.send(conn, &msg);
    }

    /// Whether the store works, as far as the core knows (a failed commit makes it `false`
    /// until the next durable one).
    pub fn storage_ok(&self) -> bool {
        self.storage_ok
    }

    /// Reserves the next block of ids if less than half of the current one is left, with a
    /// [`Change::ReserveIds`] effect.
    pub(super) fn reserve_ids(&mut self) {
        let half = u64::from(ID_RESERVE_BLOCK / 2);
        let next = self.world.next_ids();
        let low = |next: u64, reserved: u64| reserved.saturating_sub(next) < half;
        if !low(u64::from(next.entity), u64::from(self.reserved.entity))
            && !low(next.user, self.reserved.user)
            && !low(next.chat, self.reserved.chat)
        {
            return;
        }
        let block = u64::from(ID_RESERVE_BLOCK);
        self.reserved = NextIds {
            entity: next.entity.saturating_add(ID_RESERVE_BLOCK),
            user: next.user.saturating_add(block),
            chat: next.chat.saturating_add(block),
        };
        self.persist(Change::ReserveIds(self.reserved));
    }

    /// A new entity id, never handed out before (even before a crash).
    pub(super) fn alloc_entity_id(&mut self) -> EntityId {
        self.reserve_ids();
        let id = EntityId(self.world.next_entity_id);
        self.world.next_entity_id += 1;
        id
    }

    /// A new user id, never handed out before.
    pub(super) fn alloc_user_id(&mut self) -> UserId {
        self.reserve_ids();
        let id = UserId(self.world.next_user_id);
        self.world.next_user_id += 1;
        id
    }

    /// A new chat message id, never handed out before.
    pub(super) fn alloc_chat_id(&mut self) -> u64 {
        self.reserve_ids();
        let id = self.world.next_chat_id;
        self.world.next_chat_id += 1;
        id
    }
}
