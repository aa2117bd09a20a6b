//! The link model: what happens to each packet on one direction of a simulated link (latency,
//! jitter, independent and burst loss, duplication, reordering, MTU, partitions, a bottleneck
//! of limited capacity with a bounded queue). The one link
//! model of the crate: [`super::Sim`], the bandwidth runner (`transform::scenario`) and the
//! prediction bench (`predict::bench`) all decide each packet's fate here.

use std::time::Duration;

use crate::rng::Rng;
use crate::time::Time;
use crate::transform::budget::{PathSignals, PACKET_OVERHEAD_BYTES};
use crate::wire::msg::Channel;

/// Impairments of one direction of a link.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way base latency.
    pub latency: Duration,
    /// Extra delay, uniform in `[0, jitter]`, per packet.
    pub jitter: Duration,
    /// Independent loss probability per packet, 0..1.
    pub loss: f64,
    /// Burst loss (Gilbert–Elliott): probability per packet of entering a burst, 0..1.
    pub burst_enter: f64,
    /// Probability per packet of leaving a burst (mean burst length = 1 / this), 0..1.
    pub burst_exit: f64,
    /// Probability a datagram is delivered twice, 0..1.
    pub duplicate: f64,
    /// Probability a datagram is held back by an extra `reorder_delay`, 0..1.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Largest datagram the path carries, bytes.
    pub mtu: usize,
    /// Bottleneck capacity for datagrams, bytes per second on the wire (each datagram plus
    /// [`PACKET_OVERHEAD_BYTES`]); 0 for none. Datagrams beyond it wait in the bottleneck's
    /// queue (their delay grows) and are dropped when the queue is full, as a router does.
    pub rate_bytes_per_s: u64,
    /// The bottleneck's queue, bytes: a datagram that would take it past this is dropped
    /// (tail drop). Only with `rate_bytes_per_s`.
    pub queue_bytes_max: usize,
    /// Capacity for reliable frames, bytes per second of frame bytes; 0 for none (a frame
    /// leaves at once). Frames wait in the sender's send queue (never dropped, as a QUIC
    /// stream's bytes wait for its congestion window) and leave one after another at this
    /// rate; [`Link::stream_queue_bytes`] is how many bytes wait, what a driver reports as its
    /// send queue. Apart from the datagrams' bottleneck: the two do not share capacity.
    pub stream_rate_bytes_per_s: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: Duration::from_millis(25),
            jitter: Duration::ZERO,
            loss: 0.0,
            burst_enter: 0.0,
            burst_exit: 1.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            mtu: 1200,
            rate_bytes_per_s: 0,
            queue_bytes_max: 0,
            stream_rate_bytes_per_s: 0,
        }
    }
}

impl LinkConfig {
    /// A link with one-way `latency` and nothing else wrong.
    pub fn with_latency(latency: Duration) -> LinkConfig {
        LinkConfig {
            latency,
            ..Default::default()
        }
    }

    /// A bad link: 20% loss, reordering, duplication, jitter.
    pub fn hostile() -> LinkConfig {
        LinkConfig {
            latency: Duration::from_millis(40),
            jitter: Duration::from_millis(20),
            loss: 0.2,
            burst_enter: 0.02,
            burst_exit: 0.3,
            duplicate: 0.05,
            reorder: 0.1,
            reorder_delay: Duration::from_millis(30),
            mtu: 1200,
            ..LinkConfig::default()
        }
    }
}

/// One direction of a link: its [`LinkConfig`], its burst state and its partition windows. The
/// one link model of the crate: [`Sim`], the bandwidth runner (`transform::scenario`) and the
/// prediction bench (`predict::bench`) all decide each packet's fate here, drawing from a seeded
/// [`Rng`] the caller owns, so the same seed gives the same fates.
///
/// A draw happens only for an impairment that is configured (a zero probability or a zero
/// jitter draws nothing), so a plain link's sequence does not depend on the impairments it lacks.
#[derive(Clone, Debug)]
pub struct Link {
    pub(super) config: LinkConfig,
    in_burst: bool,
    partitions: Vec<(Time, Time)>,
    /// Per channel, the time the last reliable frame was delivered (head-of-line order).
    pub(super) last_reliable: [Time; 4],
    /// When the bottleneck has sent every datagram queued so far (with a capacity).
    queue_free_at: Time,
    /// Datagrams the bottleneck's full queue dropped.
    queue_drops: u64,
    /// When every reliable frame sent so far has left the send queue (with a stream capacity).
    stream_free_at: Time,
}

impl Link {
    /// A link with `config`, not in a burst, never partitioned.
    pub fn new(config: LinkConfig) -> Link {
        Link {
            config,
            in_burst: false,
            partitions: Vec::new(),
            last_reliable: [Time::ZERO; 4],
            queue_free_at: Time::ZERO,
            queue_drops: 0,
            stream_free_at: Time::ZERO,
        }
    }

    /// Datagrams the bottleneck's full queue dropped so far.
    pub fn queue_drops(&self) -> u64 {
        self.queue_drops
    }

    /// Reliable frame bytes waiting in the send queue at `now` (with a stream capacity; else
    /// 0).
    pub fn stream_queue_bytes(&self, now: Time) -> u64 {
        let wait = self.stream_free_at.saturating_since(now).as_micros() as u64;
        wait * self.config.stream_rate_bytes_per_s / 1_000_000
    }

    /// Bytes waiting in the bottleneck's queue at `now`.
    pub fn queue_bytes(&self, now: Time) -> u64 {
        let wait = self.queue_free_at.saturating_since(now).as_micros() as u64;
        wait * self.config.rate_bytes_per_s / 1_000_000
    }

    /// What a QUIC sender on this direction would report about its path
    /// ([`PathSignals`], as a driver reads quinn's path stats): the round trip now (both
    /// directions' latency, taken as this one's twice, plus this queue's delay), the
    /// congestion window a loss-based controller settles at (the bandwidth-delay product plus
    /// the queue it fills before a drop), and a congestion event per queue drop. Without a
    /// capacity: the round trip only.
    pub fn path_signals(&self, now: Time) -> PathSignals {
        let base_us = 2 * self.config.latency.as_micros() as u64;
        let queue_us = self.queue_free_at.saturating_since(now).as_micros() as u64;
        let rate = self.config.rate_bytes_per_s;
        PathSignals {
            rtt_us: base_us + queue_us,
            cwnd_bytes: if rate == 0 {
                0
            } else {
                rate * base_us / 1_000_000 + self.config.queue_bytes_max as u64
            },
            congestion_events: self.queue_drops,
        }
    }

    /// The impairments now.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Changes the impairments from now on (packets in flight keep their arrival times).
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Cuts the link for packets sent in `[from, until)`: datagrams are lost, reliable frames
    /// wait for the end.
    pub fn partition(&mut self, from: Time, until: Time) {
        self.partitions.push((from, until));
    }

    /// When the partition covering `t` ends, if one does.
    pub fn partitioned_until(&self, t: Time) -> Option<Time> {
        self.partitions
            .iter()
            .find(|(a, b)| *a <= t && t < *b)
            .map(|(_, b)| *b)
    }

    /// Whether the next packet is lost: the burst state moves on (Gilbert–Elliott), then an
    /// independent loss is drawn.
    pub fn lost(&mut self, rng: &mut Rng) -> bool {
        let c = &self.config;
        if self.in_burst {
            if rng.chance(c.burst_exit) {
                self.in_burst = false;
            }
        } else if rng.chance(c.burst_enter) {
            self.in_burst = true;
        }
        self.in_burst || rng.chance(c.loss)
    }

    /// One packet's one-way delay: the latency plus a uniform jitter in `[0, jitter]`, to the
    /// microsecond.
    pub fn delay(&self, rng: &mut Rng) -> Duration {
        let j = self.config.jitter.as_micros() as u64;
        let extra = if j == 0 { 0 } else { rng.below(j + 1) };
        self.config.latency + Duration::from_micros(extra)
    }

    /// A new connection opened over this link: its streams are new, so its frames never wait
    /// behind the old connection's (head-of-line order is per stream, and a stream per
    /// connection).
    pub fn new_streams(&mut self) {
        self.last_reliable = [Time::ZERO; 4];
        self.stream_free_at = Time::ZERO;
    }

    /// When a reliable frame of `len` bytes sent at `now` on `channel` arrives: after the
    /// frames queued before it have left (with a stream capacity), its losses and partitions.
    pub fn reliable_arrival(
        &mut self,
        channel: Channel,
        len: usize,
        now: Time,
        rng: &mut Rng,
    ) -> Time {
        let rto = (self.config.latency * 2 + self.config.jitter) * 3 / 2;
        let mut send = now;
        if let Some(us) = (len as u64 * 1_000_000).checked_div(self.config.stream_rate_bytes_per_s)
        {
            self.stream_free_at = self.stream_free_at.max(now) + Duration::from_micros(us);
            send = self.stream_free_at;
        }
        // Bounded: after 64 losses in a row the frame goes through (the link is ~dead anyway).
        for _ in 0..64 {
            if let Some(end) = self.partitioned_until(send) {
                send = end;
                continue;
            }
            if self.lost(rng) {
                send += rto.max(Duration::from_millis(1));
                continue;
            }
            break;
        }
        let t = send + self.delay(rng);
        let slot = &mut self.last_reliable[channel as usize];
        let t = t.max(*slot);
        *slot = t;
        t
    }

    /// When copies of a datagram of `len` bytes sent at `now` arrive: none if it is larger than
    /// the MTU, sent during a partition or lost; two if duplicated.
    pub fn datagram_arrivals(&mut self, len: usize, now: Time, rng: &mut Rng) -> Vec<Time> {
        if len > self.config.mtu || self.partitioned_until(now).is_some() || self.lost(rng) {
            return Vec::new();
        }
        let mut sent = now;
        let wire = (len + PACKET_OVERHEAD_BYTES) as u64;
        if let Some(serialize_us) = (wire * 1_000_000).checked_div(self.config.rate_bytes_per_s) {
            if self.queue_bytes(now) + wire > self.config.queue_bytes_max as u64 {
                self.queue_drops += 1;
                return Vec::new();
            }
            let start = self.queue_free_at.max(now);
            self.queue_free_at = start + Duration::from_micros(serialize_us);
            sent = self.queue_free_at;
        }
        let mut out = vec![sent + self.delay(rng)];
        if rng.chance(self.config.duplicate) {
            out.push(sent + self.delay(rng));
        }
        if rng.chance(self.config.reorder) {
            out[0] += self.config.reorder_delay;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator's next output, without moving `rng` on.
    fn peek(rng: &Rng) -> u64 {
        rng.clone().next_u64()
    }

    #[test]
    fn a_link_draws_only_for_the_impairments_it_has() {
        let mut rng = Rng::new(7);
        let mut plain = Link::new(LinkConfig::with_latency(Duration::from_millis(50)));
        let before = peek(&rng);
        assert_eq!(
            plain.datagram_arrivals(100, Time::ZERO, &mut rng),
            vec![Time(50_000)]
        );
        assert_eq!(peek(&rng), before, "a plain link drew from the generator");

        // Loss and jitter: one draw each per datagram, loss first, as the bandwidth runner and
        // the prediction bench always drew them.
        let config = LinkConfig {
            loss: 0.5,
            jitter: Duration::from_micros(999),
            ..LinkConfig::with_latency(Duration::from_millis(50))
        };
        let mut link = Link::new(config);
        let mut twin = rng.clone();
        for _ in 0..100 {
            let got = link.datagram_arrivals(100, Time::ZERO, &mut rng);
            let want = if twin.chance(0.5) {
                Vec::new()
            } else {
                vec![Time(50_000 + twin.below(1_000))]
            };
            assert_eq!(got, want);
        }
        assert_eq!(peek(&rng), peek(&twin));
    }

    #[test]
    fn a_partitioned_link_loses_datagrams_without_drawing_and_holds_frames() {
        let mut rng = Rng::new(7);
        let mut link = Link::new(LinkConfig::hostile());
        link.partition(Time(1_000), Time(2_000));
        let before = peek(&rng);
        assert!(link
            .datagram_arrivals(100, Time(1_500), &mut rng)
            .is_empty());
        assert_eq!(peek(&rng), before);
        assert!(link.reliable_arrival(Channel::World, 10, Time(1_500), &mut rng) >= Time(2_000));
    }
}
