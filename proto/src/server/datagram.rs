//! Datagrams from clients: acknowledgements of transform datagrams (for delta baselines and
//! RTT), movement inputs (server-authoritative players), and the transforms of entities the
//! session owns (client-authoritative players, validated; apps it moves). Datagrams are
//! unreliable: a bad one is dropped and reported, never a reason to close by itself, except
//! one over the protocol's size limit.

use super::{ConnId, ServerCore, ServerEvent};
use crate::time::Time;
use crate::transform::{decode_client_datagram, TransformError};
use crate::types::*;
use crate::wire::limits::DATAGRAM_BYTES_MAX;
use crate::wire::msg::*;

impl ServerCore {
    /// An unreliable datagram arrived.
    pub fn handle_datagram(&mut self, conn: ConnId, data: &[u8], now: Time) {
        // The arrival as the driver saw it, for the hold time of a clock echo; the core's own
        // clock never goes back, so a datagram handed over late is held as of then.
        let arrived = now;
        let now = self.advance(now);
        let arrived = arrived.min(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_heard = now;
        c.figures.datagrams_up += 1;
        c.figures.bytes_up += data.len() as u64;
        c.figures.datagram_bytes_up += data.len() as u64;
        c.heard_since_join |= c.session.is_some();
        if data.len() > DATAGRAM_BYTES_MAX {
            self.close_conn(
                conn,
                CloseReason::ProtocolViolation,
                "datagram over the size limit".into(),
            );
            return;
        }
        let Some(sid) = self.conns.get(&conn).and_then(|c| c.session) else {
            return; // Not joined yet: nothing to apply it to.
        };
        if !self.admit_datagram(sid, conn, data.len()) {
            return; // Past the session's datagram or byte rate: dropped.
        }
        let d = match decode_client_datagram(&self.quantizer, data) {
            Ok(d) => d,
            Err(error) => {
                self.events
                    .push_back(ServerEvent::DatagramRejected { conn, error });
                return;
            }
        };
        let client_auth = self.world.settings.movement == MovementAuthority::Client;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(t) = d.client_time_us {
            // Echoed in the next transform datagram; a later stamp replaces an earlier one.
            s.clock_stamp = Some((t, arrived));
        }
        let acked = s.replicator.handle_ack(&d.ack, now) as u64;
        if s.camera.is_some() {
            // A spectator has no player state to send: only its acknowledgements count.
            if let Some(c) = self.conns.get_mut(&conn) {
                c.figures.datagrams_acked += acked;
            }
            return;
        }
        let own_up = if client_auth {
            0
        } else {
            d.input_blob.len() as u64
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.figures.datagrams_acked += acked;
            c.figures.own_state_bytes_up += own_up;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !client_auth
            && !d.input_blob.is_empty()
            && s.motion.handle_input_datagram(&d.input_blob).is_err()
        {
            let error = TransformError::Malformed("undecodable input blob");
            self.events
                .push_back(ServerEvent::DatagramRejected { conn, error });
        }
        // Owned transforms: only from the newest datagram, only for entities this session owns.
        let fresh = s.up_seq.is_none_or(|old| d.seq.is_newer_than(old));
        if !fresh || d.owned.is_empty() {
            return;
        }
        s.up_seq = Some(d.seq);
        let player = s.player;
        let mut rejected = false;
        for (id, q) in &d.owned {
            let t = self.quantizer.dequantize(q);
            if !self.transform_ok(&t) {
                continue; // Defensive: the quantizer only yields transforms inside the world.
            }
            let Some(e) = self.world.entities.get_mut(id) else {
                continue;
            };
            if e.owner != Some(sid) {
                continue;
            }
            if *id == player {
                if !client_auth {
                    continue; // The server simulates this player; its own transform is ignored.
                }
                let s = self.sessions.get_mut(&sid).expect("looked up above");
                if s.validator.validate(&t, now).is_err() {
                    rejected = true;
                    e.transform = s.validator.accepted();
                    continue;
                }
            }
            e.transform = t;
            if e.kind == EntityKind::App {
                self.moved_apps.insert(*id);
            }
        }
        if rejected {
            // Tell the client where it is held, so it stops simulating from a refused place.
            let held = self.world.entities.get(&player).map(|e| e.transform);
            if let Some(t) = held {
                let rotation_y = (yaw_of(t.rotation) as f32 / 65536.0) * std::f32::consts::TAU;
                self.send(
                    conn,
                    &ServerMsg::PlayerTeleport {
                        position: t.position,
                        rotation_y,
                    },
                );
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                c.figures.corrections += 1;
            }
            self.events
                .push_back(ServerEvent::MoveRejected { session: sid });
        }
    }
}

/// The yaw (u16 turns, as the movement model stores it) of a rotation about +Y.
pub(super) fn yaw_of(q: Quat) -> u16 {
    let [x, y, z, w] = q.to_array();
    let siny = 2.0 * (w * y + z * x);
    let cosy = 1.0 - 2.0 * (x * x + y * y);
    yaw_from_radians(siny.atan2(cosy))
}

/// Radians about +Y to the movement model's u16 yaw (65536 steps per turn).
pub(super) fn yaw_from_radians(r: f32) -> u16 {
    if !r.is_finite() {
        return 0;
    }
    let turns = r / std::f32::consts::TAU;
    ((turns - turns.floor()) * 65536.0) as u32 as u16
}
