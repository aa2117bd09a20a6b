//! Per-source-address limits on transport connections, decided before a handshake completes:
//! how many connections one address may hold at once and how fast it may attempt new ones.
//! The driver owns an [`AddressGate`] (its accept loop runs before the core knows a
//! connection) and asks it at every attempt, with time as an argument like every core input;
//! the policy lives here so the simulated network and unit tests can drive it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::limits::RateSpec;
use super::rate::{Limit, MessageRate};
use crate::time::Time;

/// Default most connections (open or handshaking) from one source address: 64. A household,
/// a LAN party or a school behind one NAT fits; 500 connections from one address (which took
/// the relay from 18 to 392 MiB) do not.
pub const CONNECTIONS_PER_ADDR_MAX_DEFAULT: u32 = 64;
/// Default connection attempts per source address: 10/s sustained, 64 at once: reconnects and
/// a NAT's worth of players starting together pass; a handshake flood from one address does
/// not.
pub const CONNECTION_ATTEMPTS_PER_ADDR_DEFAULT: RateSpec = RateSpec::new(10.0, 64);
/// Most addresses the gate remembers attempt buckets for: 65,536 (~64 bytes each). Full
/// buckets are forgotten when it fills; past it attempts from new addresses are refused.
pub const GATE_ADDRS_MAX: usize = 65_536;

/// The gate's limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AddrLimits {
    /// Most connections (open or handshaking) per address
    /// ([`CONNECTIONS_PER_ADDR_MAX_DEFAULT`]).
    pub connections_per_addr_max: u32,
    /// Connection attempts per address ([`CONNECTION_ATTEMPTS_PER_ADDR_DEFAULT`]).
    pub attempts_per_addr: RateSpec,
}

impl Default for AddrLimits {
    fn default() -> Self {
        AddrLimits {
            connections_per_addr_max: CONNECTIONS_PER_ADDR_MAX_DEFAULT,
            attempts_per_addr: CONNECTION_ATTEMPTS_PER_ADDR_DEFAULT,
        }
    }
}

/// What the gate says about one connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrVerdict {
    /// Go ahead; call [`AddressGate::release`] when the connection (or its handshake) ends.
    Admit,
    /// The address holds its maximum of connections.
    TooManyConnections,
    /// The address attempts connections too fast (or the gate is full of addresses).
    TooManyAttempts,
}

/// Per-address connection counts and attempt rates. See the module documentation.
#[derive(Debug, Default)]
pub struct AddressGate {
    limits: AddrLimits,
    open: BTreeMap<IpAddr, u32>,
    attempts: BTreeMap<IpAddr, MessageRate>,
}

impl AddressGate {
    /// A gate with `limits`.
    pub fn new(limits: AddrLimits) -> AddressGate {
        AddressGate {
            limits,
            ..AddressGate::default()
        }
    }

    /// A connection attempt from `addr` at `now`. An admitted attempt counts as open until
    /// [`AddressGate::release`].
    pub fn attempt(&mut self, addr: IpAddr, now: Time) -> AddrVerdict {
        let spec = self.limits.attempts_per_addr;
        if !self.attempts.contains_key(&addr) && self.attempts.len() >= GATE_ADDRS_MAX {
            self.attempts.retain(|_, r| !r.is_full(spec, now));
            if self.attempts.len() >= GATE_ADDRS_MAX {
                return AddrVerdict::TooManyAttempts;
            }
        }
        let bucket = self
            .attempts
            .entry(addr)
            .or_insert_with(|| MessageRate::new(spec.burst, now));
        if bucket.take_cost(1.0, spec, now) != Limit::Pass {
            return AddrVerdict::TooManyAttempts;
        }
        let open = self.open.entry(addr).or_insert(0);
        if *open >= self.limits.connections_per_addr_max {
            return AddrVerdict::TooManyConnections;
        }
        *open += 1;
        AddrVerdict::Admit
    }

    /// A connection admitted from `addr` ended.
    pub fn release(&mut self, addr: IpAddr) {
        if let Some(n) = self.open.get_mut(&addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&addr);
            }
        }
    }

    /// Connections open (or handshaking) from `addr`.
    pub fn open(&self, addr: IpAddr) -> u32 {
        self.open.get(&addr).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_address_is_held_to_its_connection_cap_and_gets_a_slot_back_on_release() {
        let mut g = AddressGate::new(AddrLimits {
            connections_per_addr_max: 2,
            attempts_per_addr: RateSpec::new(100.0, 100),
        });
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert_eq!(g.attempt(a, Time::ZERO), AddrVerdict::Admit);
        assert_eq!(g.attempt(a, Time::ZERO), AddrVerdict::Admit);
        assert_eq!(g.attempt(a, Time::ZERO), AddrVerdict::TooManyConnections);
        assert_eq!(
            g.attempt(b, Time::ZERO),
            AddrVerdict::Admit,
            "others unaffected"
        );
        g.release(a);
        assert_eq!(g.attempt(a, Time::ZERO), AddrVerdict::Admit);
    }

    #[test]
    fn attempts_past_the_burst_are_refused_until_tokens_come_back() {
        let mut g = AddressGate::new(AddrLimits {
            connections_per_addr_max: 1000,
            attempts_per_addr: RateSpec::new(1.0, 3),
        });
        let a = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..3 {
            assert_eq!(g.attempt(a, Time::ZERO), AddrVerdict::Admit);
        }
        assert_eq!(g.attempt(a, Time::ZERO), AddrVerdict::TooManyAttempts);
        let later = Time::ZERO + Duration::from_secs(1);
        assert_eq!(g.attempt(a, later), AddrVerdict::Admit);
    }
}
