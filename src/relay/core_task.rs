//! The core task: the one place world state changes. It owns the [`ServerCore`] on a thread
//! of its own and is a thin loop around it: take inputs ([`Inbound`], the datagram inbox, the
//! store's reports), run the due tick in steps, and carry out the outputs (transmits to each
//! connection's [`Link`], events to the log and metrics, effects to the store). Every decision
//! is the core's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use neonet_proto::persist::{AckToken, StoreReport};
use neonet_proto::server::{
    ConnId, InboxBatch, ServerCore, ServerEvent, TimeoutProgress, Transmit,
};
use neonet_proto::wire::codec;
use neonet_proto::Time;

use super::accept::SharedInbox;
use super::{EffectSink, EventSink, Inbound, Link, INBOUND_BATCH_MAX, TICK_STEP_CLIENTS};
use crate::metrics::{ConnectionStatus, EntityBytesBatch, Metrics, UserReport};
use crate::store::{Store, SubmitError};

/// Interval between user reports to the metrics (what `/status` shows).
pub const USERS_REPORT_INTERVAL: Duration = Duration::from_millis(250);

pub(super) struct LinkEntry {
    link: Arc<dyn Link>,
    /// Stream and datagram bytes received on this connection.
    bytes_in: u64,
    /// Stream and datagram bytes sent on this connection.
    bytes_out: u64,
}

/// Least time between two logs of changes the store would not take, so a full queue under
/// load logs once a second rather than once per input batch.
const SUBMIT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct CoreTask {
    pub(super) core: ServerCore,
    pub(super) start: Instant,
    /// QUIC datagrams waiting for the core ([`CoreTask::take_datagrams`]).
    pub(super) inbox: Arc<SharedInbox>,
    /// Reused: the datagrams taken from the inbox.
    pub(super) inbox_batch: InboxBatch<Bytes>,
    pub(super) links: HashMap<ConnId, LinkEntry>,
    pub(super) effects: Option<EffectSink>,
    /// The store of a persistent relay; effects go there instead of `effects`.
    pub(super) store: Option<Arc<Store>>,
    /// Reused: tokens of changes the store would not take because its queue was full.
    pub(super) full: Vec<AckToken>,
    /// Reused: tokens of changes the store would not take because its writer stopped.
    pub(super) failed: Vec<AckToken>,
    pub(super) events: Option<EventSink>,
    pub(super) metrics: Option<Arc<Metrics>>,
    /// The hosting game's per-tick call, if any.
    pub(super) host: Option<super::HostFn>,
    /// Reused every tick: bytes per entity, merged into the metrics once per tick.
    pub(super) entity_bytes: EntityBytesBatch,
    pub(super) next_users_report: Instant,
}

impl CoreTask {
    /// The core's clock now (the core keeps it from running backwards).
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }

    /// Hands the core every datagram waiting in the inbox, at its arrival time.
    fn take_datagrams(&mut self) {
        let mut batch = std::mem::take(&mut self.inbox_batch);
        self.inbox.take(&mut batch);
        for d in &batch.datagrams {
            self.count_in(d.conn, d.data.len(), true);
        }
        self.core.handle_inbox(&mut batch);
        self.inbox_batch = batch;
    }

    /// One datagram from `conn` that arrived at `at`: counted, then handed to the core.
    fn handle_datagram(&mut self, conn: ConnId, data: &[u8], at: Time) {
        self.count_in(conn, data.len(), true);
        self.core.handle_datagram(conn, data, at);
    }

    fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_micros(t.0)
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Inbound>,
        mut commits: Option<mpsc::UnboundedReceiver<Inbound>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Arc<Store>> {
        let mut last_submit_error_log = None;
        loop {
            let deadline = self
                .core
                .poll_timeout()
                .map(|t| self.instant(t))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                // Acknowledgements first: they are what a waiting client is blocked on.
                Some(m) = next_commit(&mut commits) => {
                    self.handle(m);
                    if let Some(c) = commits.as_mut() {
                        while let Ok(m) = c.try_recv() {
                            self.handle(m);
                        }
                    }
                }
                // Before input, so a steady stream of messages can never starve the tick.
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.timeout();
                }
                m = rx.recv() => {
                    let Some(m) = m else { break };
                    let mut handled = self.handle(m);
                    // Bounded in frames, not messages (one read can hold hundreds), and cut
                    // short when a commit lands: its acknowledgements go out first.
                    while handled < INBOUND_BATCH_MAX
                        && commits.as_ref().is_none_or(|c| c.is_empty())
                    {
                        match rx.try_recv() {
                            Ok(m) => handled += self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.take_datagrams();
            self.drain(&mut last_submit_error_log);
        }
        if let Some(store) = self.store.clone() {
            // Make what was submitted durable so its senders get their acks before the close.
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
                tracing::error!(error = %e, "flushing the world database at shutdown failed");
            }
            if let Some(c) = commits.as_mut() {
                while let Ok(m) = c.try_recv() {
                    self.handle(m);
                }
            }
            self.drain(&mut last_submit_error_log);
        }
        tracing::info!(
            sessions = self.core.sessions().count(),
            "shutting down: closing every session"
        );
        self.core.shutdown();
        self.drain(&mut last_submit_error_log);
        self.store
    }

    /// Runs the ticks that are due (and idle checks), with fresh datagram sizes and path
    /// signals. A tick's
    /// recorded duration runs from its start until its last client's datagrams are written,
    /// with the earlier clients' already handed to QUIC.
    fn timeout(&mut self) {
        for (conn, entry) in &self.links {
            if let Some(bytes) = entry.link.max_datagram_size() {
                self.core.handle_max_datagram_size(*conn, bytes);
            }
            if let Some(signals) = entry.link.path_signals() {
                self.core.handle_path_signals(*conn, signals);
            }
            if let Some(bytes) = entry.link.queued_bytes() {
                self.core.handle_send_queue(*conn, bytes);
            }
        }
        let tick = self.core.tick();
        let started = Instant::now();
        // The tick uses every input and acknowledgement that arrived before it.
        self.take_datagrams();
        let now = self.now();
        if let Some(host) = self.host.as_mut() {
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                host(&mut self.core);
                self.drain_outputs();
            }
        }
        // In steps, each handed to QUIC before the next is written: the first clients'
        // datagrams leave while later clients' are still being written.
        while self.core.handle_timeout_step(now, TICK_STEP_CLIENTS) == TimeoutProgress::More {
            self.drain_outputs();
        }
        let Some(m) = &self.metrics else { return };
        if let Some(store) = &self.store {
            m.set_persist_queue_depth(store.stats().queued);
        }
        let ticks = self.core.tick().0.saturating_sub(tick.0);
        if ticks > 0 {
            let each = started.elapsed() / ticks as u32;
            for _ in 0..ticks {
                m.record_tick(each);
            }
            m.set_entity_count(self.core.world().entities.len());
            // Which entities cost the bytes, and the live view's packet trails.
            let updates = self.core.last_tick_updates();
            for &(_, entity, bytes) in updates {
                self.entity_bytes.add(entity.0, bytes as usize);
            }
            m.merge_entity_bytes(&mut self.entity_bytes);
            m.record_trails(
                updates
                    .iter()
                    .map(|&(session, entity, bytes)| (entity.0, session.0, bytes as usize)),
            );
        }
        if started >= self.next_users_report {
            self.next_users_report = started + USERS_REPORT_INTERVAL;
            let users: Vec<UserReport> = self
                .core
                .sessions()
                .filter_map(|s| {
                    let entry = self.links.get(&s.conn?)?;
                    Some(UserReport {
                        session_id: s.id.0,
                        name: s.name.clone(),
                        addr: entry.link.remote_addr()?,
                        rtt_ms: entry.link.rtt().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                        bytes_in: entry.bytes_in,
                        bytes_out: entry.bytes_out,
                    })
                })
                .collect();
            m.publish_users(users);
            let top = self
                .core
                .top_conns_by_bytes(crate::metrics::TOP_CONNECTIONS_K)
                .into_iter()
                .map(|(conn, f)| {
                    let s = self.core.session_of(conn);
                    ConnectionStatus {
                        conn_id: conn.0,
                        session_id: s.map(|s| s.id.0),
                        name: s.map(|s| s.name.clone()),
                        spectator: s.is_some_and(|s| s.is_spectator()),
                        bytes_in: f.bytes_up,
                        bytes_out: f.bytes_down,
                        datagrams_in: f.datagrams_up,
                        datagrams_out: f.datagrams_down,
                        datagrams_unacked: f.datagrams_unacked,
                        own_state_bytes_out: f.own_state_bytes_down,
                        rtt_ms: f.rtt_us as f64 / 1000.0,
                        budget_used: f.budget_used(),
                        corrections: f.corrections,
                    }
                })
                .collect();
            m.publish_top_connections(top);
            // The live view names the players among its top entities.
            m.publish_entity_names(self.core.sessions().map(|s| (s.player.0, s.name.clone())));
        }
    }

    fn count_in(&mut self, conn: ConnId, bytes: usize, datagram: bool) {
        if let Some(e) = self.links.get_mut(&conn) {
            e.bytes_in += bytes as u64;
        }
        if let Some(m) = &self.metrics {
            if datagram {
                m.record_datagram_in(bytes);
            } else {
                m.record_stream_in(bytes);
            }
        }
    }

    /// Handles one input; returns how many frames (or other messages) that was.
    fn handle(&mut self, m: Inbound) -> usize {
        let now = self.now();
        match m {
            Inbound::Connect {
                conn,
                transport,
                link,
            } => {
                // The source address: per-address limits live in the core.
                let addr = link.remote_addr().map(|a| a.ip());
                let queued = link.queued_bytes();
                self.links.insert(
                    conn,
                    LinkEntry {
                        link,
                        bytes_in: 0,
                        bytes_out: 0,
                    },
                );
                self.core.handle_connect_from(conn, transport, addr, now);
                // A transport that can tell its send queue has a big snapshot paced to it.
                if let Some(bytes) = queued {
                    self.core.handle_send_queue(conn, bytes);
                }
            }
            Inbound::Frame {
                conn,
                channel,
                body,
            } => {
                self.count_in(conn, codec::FRAME_HEADER_BYTES + body.len(), false);
                self.core.handle_frame(conn, channel, &body, now)
            }
            Inbound::Frames {
                conn,
                channel,
                frames,
            } => {
                self.count_in(conn, frames.len(), false);
                let mut n = 0;
                for body in codec::frames(&frames) {
                    self.core.handle_frame(conn, channel, body, now);
                    n += 1;
                }
                return n;
            }
            Inbound::Datagram { conn, data } => self.handle_datagram(conn, &data, now),
            Inbound::StreamError { conn, error } => {
                self.core.handle_stream_error(conn, &error, now)
            }
            Inbound::Disconnect { conn } => {
                self.links.remove(&conn);
                self.core.handle_disconnect(conn, now);
            }
            Inbound::Store(report) => {
                tracing::trace!(?report, "store report");
                self.core.handle_store(report)
            }
        }
        1
    }

    /// Carries out every output. Effects go to the store (or the effect sink); what the store
    /// will not take is reported back to the core ([`StoreReport::Full`] when its queue is
    /// full, [`StoreReport::Failed`] when its writer stopped), which refuses those changes to
    /// their senders: more transmits, so it loops until the store took everything.
    ///
    /// Effects go to the store before the transmits go out: the writer thread starts its
    /// commit (an fsync) while this task fans the same changes out to every connection, instead
    /// of after it; under a 20,000 changes/s broadcast the fan-out of one input batch takes
    /// milliseconds, which every acknowledgement used to wait on top of its commit.
    fn drain(&mut self, last_error_log: &mut Option<Instant>) {
        loop {
            let mut not_taken = 0usize;
            let mut error = None;
            while let Some(e) = self.core.poll_effect() {
                if let Some(store) = &self.store {
                    let ack = e.ack;
                    if let Err(err) = store.submit_effect(e) {
                        not_taken += 1;
                        match err {
                            SubmitError::Full => self.full.extend(ack),
                            SubmitError::Closed => self.failed.extend(ack),
                        }
                        error = Some(err);
                    }
                } else if let Some(sink) = self.effects.as_mut() {
                    sink(e);
                }
            }
            if let (Some(err), Some(store)) = (error, &self.store) {
                if last_error_log.is_none_or(|t| t.elapsed() >= SUBMIT_ERROR_LOG_INTERVAL) {
                    *last_error_log = Some(Instant::now());
                    tracing::error!(
                        path = %store.path().display(),
                        error = %err,
                        changes = not_taken,
                        busy = self.full.len(),
                        failed = self.failed.len(),
                        "the world database did not take changes: refused"
                    );
                }
            }
            if self.full.is_empty() && self.failed.is_empty() {
                self.drain_outputs();
                return;
            }
            if !self.full.is_empty() {
                let full = std::mem::take(&mut self.full);
                self.core.handle_store(StoreReport::Full(full));
            }
            if !self.failed.is_empty() {
                let failed = std::mem::take(&mut self.failed);
                self.core.handle_store(StoreReport::Failed(failed));
            }
        }
    }

    fn drain_outputs(&mut self) {
        // Counted here and recorded once: a broadcast is thousands of transmits.
        let mut stream_out = 0usize;
        while let Some(t) = self.core.poll_transmit() {
            let conn = t.conn();
            let Some(entry) = self.links.get_mut(&conn) else {
                continue;
            };
            let (bytes, datagram) = match &t {
                Transmit::Frame { frame, .. } => (frame.len(), false),
                Transmit::Datagram { data, .. } => (data.len(), true),
                Transmit::Close { .. } => (0, false),
            };
            entry.bytes_out += bytes as u64;
            if !datagram {
                stream_out += bytes;
            } else if let Some(m) = &self.metrics {
                m.record_datagram_out(bytes);
            }
            entry.link.transmit(t);
        }
        if let Some(m) = &self.metrics {
            if stream_out > 0 {
                m.record_stream_out(stream_out);
            }
        }
        while let Some(e) = self.core.poll_event() {
            log_event(&e);
            match (&e, &self.metrics) {
                (ServerEvent::Joined { .. }, Some(m)) => m.record_join(),
                (
                    ServerEvent::DatagramsDropped {
                        conn_full,
                        inbox_full,
                    },
                    Some(m),
                ) => {
                    for (reason, n) in [
                        ("datagram_inbox_full", *inbox_full),
                        ("datagram_inbox_conn_full", *conn_full),
                    ] {
                        if n > 0 {
                            m.record_drops(reason, n);
                        }
                    }
                }
                _ => {}
            }
            if let Some(sink) = self.events.as_mut() {
                sink(&e);
            }
        }
    }
}

/// The next commit report, or never when the relay has no store.
async fn next_commit(commits: &mut Option<mpsc::UnboundedReceiver<Inbound>>) -> Option<Inbound> {
    match commits {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

fn log_event(e: &ServerEvent) {
    match e {
        ServerEvent::Joined {
            session,
            conn,
            user,
            player,
            name,
        } => tracing::info!(
            session = session.0,
            conn = conn.0,
            user = user.0,
            player = player.0,
            %name,
            "joined"
        ),
        ServerEvent::Left { session, reason } => {
            tracing::info!(session = session.0, %reason, "left")
        }
        ServerEvent::ConnectionLost { session } => {
            tracing::info!(session = session.0, "connection lost; kept for a resume")
        }
        ServerEvent::Resumed { session, conn } => {
            tracing::info!(session = session.0, conn = conn.0, "resumed")
        }
        ServerEvent::PeerError {
            conn,
            reason,
            detail,
        } => tracing::warn!(conn = conn.0, %reason, %detail, "closed a misbehaving peer"),
        ServerEvent::Refused {
            session,
            msg,
            reason,
        } => tracing::debug!(session = session.0, msg, %reason, "refused"),
        ServerEvent::DatagramRejected { conn, error } => {
            tracing::debug!(conn = conn.0, %error, "dropped a datagram")
        }
        ServerEvent::MoveRejected { session } => {
            tracing::debug!(session = session.0, "refused a client-authoritative move")
        }
        ServerEvent::DatagramsDropped {
            conn_full,
            inbox_full,
        } => tracing::debug!(conn_full, inbox_full, "datagram inbox dropped datagrams"),
    }
}
