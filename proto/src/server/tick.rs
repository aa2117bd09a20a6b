//! The tick: at the tick rate, server-authoritative players move by their inputs, the world
//! is sampled once (quantized, indexed for interest), and every client's transform datagrams
//! are written from that one snapshot (interest, priority, budget, delta compression). A tick
//! can be written in steps of a few clients ([`ServerCore::handle_timeout_step`]) so a driver
//! sends the first clients' datagrams while later ones are written. At the end of each tick
//! the state of apps moved by datagrams is emitted for the store, and idle connections closed.

use super::{ServerCore, ServerEvent, Transmit};
use crate::persist::Change;
use crate::time::{Tick, Time};
use crate::transform::{ClockEcho, EntitySample, TickInput};
use crate::types::*;

/// A tick under way: its world snapshot (`samples`, `grid`) is taken; clients from `next` on
/// (by session id) still need their datagrams.
#[derive(Clone, Copy, Debug)]
pub(super) struct TickJob {
    /// Session to write next (the first with an id at or above it); `None` past the largest
    /// possible id.
    next: Option<SessionId>,
    /// Whether players move server-side (their own-state blob rides in the datagram).
    server_auth: bool,
    /// When the tick was scheduled to start (the tick clock's, not when it ran): clock echoes
    /// give their phase from it.
    scheduled_at: Time,
    /// What the tick wrote so far.
    stats: TickStats,
}

/// Whether [`ServerCore::handle_timeout_step`] finished what was due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutProgress {
    /// Clients of a due tick are left: call again (after sending what was written).
    More,
    /// Every due tick is written and idle connections are closed.
    Done,
}

/// What the last tick did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickStats {
    /// The tick.
    pub tick: Tick,
    /// Transform datagrams written.
    pub datagrams: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Entity updates written (summed over clients).
    pub updates: usize,
}

impl ServerCore {
    /// Runs every tick due at `now` and closes idle connections. Safe to call early.
    pub fn handle_timeout(&mut self, now: Time) {
        while self.handle_timeout_step(now, usize::MAX) == TimeoutProgress::More {}
    }

    /// [`handle_timeout`](Self::handle_timeout) in steps of at most `clients_max` clients'
    /// datagrams (at least one), so a driver can send the first clients' datagrams while the
    /// others' are still being written: the first client of a 1,000-client tick no longer waits
    /// for the whole tick. Returns [`TimeoutProgress::More`] while clients of a due tick are
    /// left; the tick's world snapshot is taken when it starts, so every client of one tick sees
    /// the same world. Between steps a driver should only drain outputs (`poll_*`); an input
    /// handled in between is applied as if it arrived before the tick's remaining clients.
    pub fn handle_timeout_step(&mut self, now: Time, clients_max: usize) -> TimeoutProgress {
        let now = self.advance(now);
        self.close_snapshot_overflows();
        let mut budget = clients_max.max(1);
        loop {
            if self.tick_job.is_none() {
                let Some(tick) = self.clock.poll_tick(now) else {
                    break;
                };
                self.begin_tick(tick);
            }
            if !self.continue_tick(&mut budget) || budget == 0 {
                return TimeoutProgress::More;
            }
        }
        self.persist_moved_apps();
        self.close_idle(now);
        self.refresh_tokens();
        TimeoutProgress::Done
    }

    /// Starts a server tick: moves server-authoritative players by their inputs and takes the
    /// world snapshot every client's datagrams are written from.
    pub(super) fn begin_tick(&mut self, tick: Tick) {
        self.flush_blueprints();
        let server_auth = self.world.settings.movement == MovementAuthority::Server;
        if server_auth {
            for s in self.sessions.values_mut() {
                s.motion.tick(tick);
                if let Some(e) = self.world.entities.get_mut(&s.player) {
                    e.transform = s.motion.transform();
                }
            }
        }
        self.samples.clear();
        let entities = &self.world.entities;
        self.host_weights.retain(|id, _| entities.contains_key(id));
        let mut weights = self.host_weights.iter().peekable();
        for e in self.world.entities.values() {
            let mut sample = EntitySample::new(e.id, &e.transform, &self.quantizer);
            sample.owner = e.owner;
            // Both maps ascend by id: one walk finds each entity's host weights.
            while weights.next_if(|(id, _)| **id < e.id).is_some() {}
            if let Some((_, w)) = weights.next_if(|(id, _)| **id == e.id) {
                sample.weight = w.weight;
                sample.global = w.global;
            }
            self.samples.push(sample);
        }
        // Each client looks only at the entities near its player: a tick then costs clients ×
        // entities nearby, not clients × entities (exact: see `InterestGrid`).
        let t = &self.config.transform;
        self.grid
            .build(&self.samples, t.interest_radius_m + t.interest_hysteresis_m);
        self.tick_updates.clear();
        // The clock already moved on to the next tick: this one was due a period earlier.
        let scheduled_at = self.clock.next_at() - self.clock.period();
        self.tick_job = Some(TickJob {
            next: Some(SessionId(0)),
            server_auth,
            scheduled_at,
            stats: TickStats {
                tick,
                ..TickStats::default()
            },
        });
    }

    /// Writes the transform datagrams (interest, priority, budget, delta compression) of the
    /// tick under way for up to `budget` more clients, counting them off `budget`. Returns
    /// whether the tick is complete (and ends it).
    pub(super) fn continue_tick(&mut self, budget: &mut usize) -> bool {
        let Some(mut job) = self.tick_job else {
            return true;
        };
        let (tick, now) = (job.stats.tick, self.now);
        // Past the largest possible session id nothing is left.
        let mut rest = job.next.map(|first| self.sessions.range_mut(first..));
        let complete = loop {
            if *budget == 0 {
                break false;
            }
            let Some((&sid, s)) = rest.as_mut().and_then(Iterator::next) else {
                break true;
            };
            job.next = sid.0.checked_add(1).map(SessionId);
            let Some(conn) = s.conn else { continue };
            let Some(c) = self.conns.get(&conn) else {
                continue;
            };
            if c.closed {
                continue;
            }
            *budget -= 1;
            let viewer = match s.camera {
                Some(camera) => Some(camera),
                None => self
                    .world
                    .entities
                    .get(&s.player)
                    .map(|e| e.transform.position),
            };
            // The own-player state only when it changed or its client may not have it yet: a
            // player standing still costs nothing.
            let blob = if job.server_auth && s.camera.is_none() {
                s.motion
                    .own_state_blob()
                    .filter(|b| s.own_sent.needs(b, &s.replicator))
            } else {
                None
            };
            let own_bytes = blob.as_ref().map_or(0, |b| b.len() as u64);
            let entities: &[EntitySample] = match viewer {
                Some(v) => {
                    // Entities the host made relevant to everyone join the retained ones.
                    let globals = self
                        .host_weights
                        .iter()
                        .filter(|(_, w)| w.global)
                        .map(|(id, _)| *id);
                    let keep = s.replicator.retained().chain(globals);
                    self.grid.query(&self.samples, v, keep, &mut self.nearby);
                    &self.nearby
                }
                None => &self.samples,
            };
            let input = TickInput {
                tick,
                now,
                viewer,
                entities,
                max_datagram_size: c.max_datagram_size,
                own_blob: blob.as_deref(),
            };
            if let Some((client_time_us, arrived)) = s.clock_stamp.take() {
                s.replicator.set_clock_echo(ClockEcho {
                    client_time_us,
                    hold_us: now.saturating_since(arrived).as_micros() as u64,
                    phase_us: now.saturating_since(job.scheduled_at).as_micros() as u64,
                });
            }
            match s.replicator.write_tick(&input, &mut self.datagrams) {
                Ok(sum) => {
                    job.stats.updates += sum.updates;
                    let seqs = s.replicator.last_tick_seqs();
                    if blob.is_some() && !seqs.is_empty() {
                        s.own_sent.carried_by(seqs.start);
                    }
                    let each = (sum.bytes / sum.updates.max(1)) as u32;
                    // Reserved first: `extend` on the chained iterator (no size hint) checked
                    // the capacity at every element. `for_each` walks each datagram's records
                    // as one slice loop, where a `for` loop went through the chain's `next`.
                    self.tick_updates.reserve(sum.updates);
                    let updates = &mut self.tick_updates;
                    s.replicator
                        .last_tick_updates()
                        .for_each(|id| updates.push((sid, id, each)));
                }
                Err(error) => self
                    .events
                    .push_back(ServerEvent::DatagramRejected { conn, error }),
            }
            let f = &mut self.conns.get_mut(&conn).expect("checked above").figures;
            f.own_state_bytes_down += own_bytes;
            f.last_tick_bytes = 0;
            for data in self.datagrams.drain(..) {
                job.stats.datagrams += 1;
                job.stats.bytes += data.len();
                f.datagrams_down += 1;
                f.bytes_down += data.len() as u64;
                f.datagram_bytes_down += data.len() as u64;
                f.last_tick_bytes += data.len() as u64;
                self.transmits
                    .push_back(Transmit::Datagram { conn, tick, data });
            }
        };
        if complete {
            self.stats = job.stats;
            self.tick_job = None;
        } else {
            self.tick_job = Some(job);
        }
        complete
    }

    /// Emits the state of every app moved by datagrams since the last call, once per app
    /// ([`Change::PutEntityState`]): the store coalesces it and writes it at its own interval.
    pub(super) fn persist_moved_apps(&mut self) {
        for id in std::mem::take(&mut self.moved_apps) {
            if let Some(e) = self.world.entities.get(&id) {
                let state = Change::PutEntityState(e.clone());
                self.persist(state);
            }
        }
    }
}
