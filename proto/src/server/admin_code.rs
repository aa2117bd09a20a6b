//! The admin code (`/admin CODE`): guessing it is limited per source address and across all
//! addresses, with a lockout that doubles with every failure past a free allowance. While an
//! address (or everyone) is locked out, an attempt is refused with `RateLimited` without the
//! code being compared, so a locked-out guesser learns nothing. Reconnecting does not help: the
//! count belongs to the address the driver reported at connect
//! ([`ServerCore::handle_connect_from`]), not to the connection. The code itself is never put
//! in an event, a log or a message to anyone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::{ConnId, ServerCore};
use crate::persist::Change;
use crate::time::Time;
use crate::types::*;
use crate::wire::msg::*;

/// Wrong codes an address may try before it is locked out: 3, enough for a person mistyping.
pub const ADMIN_CODE_FREE_FAILURES_PER_ADDR: u32 = 3;
/// Wrong codes all addresses together may try before everyone is locked out: 20, so a guesser
/// spreading over many addresses still gets a handful of tries per lockout, not thousands.
pub const ADMIN_CODE_FREE_FAILURES_GLOBAL: u32 = 20;
/// The first lockout: 2 s. Each further failure doubles it.
pub const ADMIN_CODE_LOCKOUT_BASE: Duration = Duration::from_secs(2);
/// The longest lockout of one address: 1 hour (a guesser gets about 24 tries a day).
pub const ADMIN_CODE_LOCKOUT_MAX_PER_ADDR: Duration = Duration::from_secs(3600);
/// The longest global lockout: 5 minutes, so that honest admins are not kept out for long by
/// a distributed guesser (the per-address lockouts still hold each of its addresses).
pub const ADMIN_CODE_LOCKOUT_MAX_GLOBAL: Duration = Duration::from_secs(300);
/// A failure count is forgotten after this long without a failure: 24 hours.
pub const ADMIN_CODE_FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Addresses whose failures are remembered at once: 4,096 (about 200 KiB); past it the one
/// whose last failure is oldest is forgotten. A guesser with more addresses than this still
/// meets the global lockout.
pub const ADMIN_CODE_ADDRS_MAX: usize = 4096;

/// Failures of one address (or of all) and the lockout they earned.
#[derive(Clone, Copy, Debug, Default)]
struct Failures {
    count: u32,
    last: Option<Time>,
    locked_until: Option<Time>,
}

impl Failures {
    fn locked(&self, now: Time) -> bool {
        self.locked_until.is_some_and(|t| now < t)
    }

    fn fail(&mut self, now: Time, free: u32, max: Duration) {
        if self
            .last
            .is_some_and(|l| now.saturating_since(l) >= ADMIN_CODE_FORGET_AFTER)
        {
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.last = Some(now);
        if self.count > free {
            let doublings = (self.count - free - 1).min(20);
            let lock = ADMIN_CODE_LOCKOUT_BASE
                .saturating_mul(1 << doublings)
                .min(max);
            self.locked_until = Some(now + lock);
        }
    }
}

/// The admin code guard's state. See the module documentation.
#[derive(Debug, Default)]
pub struct AdminCodeGuard {
    /// By source address; `None` for connections whose driver reported no address.
    per_addr: BTreeMap<Option<IpAddr>, Failures>,
    global: Failures,
}

impl AdminCodeGuard {
    /// Whether `addr` may try a code now.
    pub fn may_try(&self, addr: Option<IpAddr>, now: Time) -> bool {
        !self.global.locked(now) && !self.per_addr.get(&addr).is_some_and(|f| f.locked(now))
    }

    /// Records a wrong code from `addr`.
    pub fn failed(&mut self, addr: Option<IpAddr>, now: Time) {
        if !self.per_addr.contains_key(&addr) && self.per_addr.len() >= ADMIN_CODE_ADDRS_MAX {
            let oldest = self
                .per_addr
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.per_addr.remove(&a);
            }
        }
        self.per_addr.entry(addr).or_default().fail(
            now,
            ADMIN_CODE_FREE_FAILURES_PER_ADDR,
            ADMIN_CODE_LOCKOUT_MAX_PER_ADDR,
        );
        self.global.fail(
            now,
            ADMIN_CODE_FREE_FAILURES_GLOBAL,
            ADMIN_CODE_LOCKOUT_MAX_GLOBAL,
        );
    }

    /// Addresses with remembered failures.
    pub fn addresses(&self) -> usize {
        self.per_addr.len()
    }
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl ServerCore {
    /// `/admin CODE` from session `sid`.
    pub(super) fn admin_code_attempt(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        req: ReqId,
        code: &str,
    ) {
        let addr = self.conns.get(&conn).and_then(|c| c.addr);
        let now = self.now;
        if !self.admin_guard.may_try(addr, now) {
            self.command_reply(conn, req, "too many wrong admin codes: try again later");
            return self.refuse(sid, conn, "command", Some(req), Refusal::RateLimited);
        }
        let ok = self
            .config
            .admin_code
            .as_deref()
            .is_some_and(|c| same_secret(c, code));
        if !ok {
            self.admin_guard.failed(addr, now);
            return self.refuse(sid, conn, "command", Some(req), Refusal::Rank);
        }
        let Some(user) = self.sessions.get(&sid).map(|s| s.user) else {
            return;
        };
        let Some(u) = self.world.users.get_mut(&user) else {
            return;
        };
        u.rank = Rank::Admin;
        let rec = u.clone();
        self.broadcast(
            &ServerMsg::RankModified {
                user,
                rank: Rank::Admin,
            },
            None,
        );
        self.commit(sid, conn, Some(req), Change::PutUser(rec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn an_address_is_locked_out_after_its_free_failures_and_the_lockout_doubles() {
        let mut g = AdminCodeGuard::default();
        let t0 = Time::ZERO;
        for _ in 0..ADMIN_CODE_FREE_FAILURES_PER_ADDR {
            assert!(g.may_try(addr(1), t0));
            g.failed(addr(1), t0);
        }
        assert!(g.may_try(addr(1), t0));
        g.failed(addr(1), t0);
        assert!(!g.may_try(addr(1), t0), "locked after the free failures");
        assert!(g.may_try(addr(2), t0), "another address is not");
        let first = ADMIN_CODE_LOCKOUT_BASE;
        assert!(g.may_try(addr(1), t0 + first));
        g.failed(addr(1), t0 + first);
        assert!(
            !g.may_try(addr(1), t0 + first + first),
            "second lockout is longer"
        );
        assert!(g.may_try(addr(1), t0 + first + first * 2));
    }

    #[test]
    fn failures_from_many_addresses_lock_everyone_out_for_a_bounded_time() {
        let mut g = AdminCodeGuard::default();
        let t0 = Time::ZERO;
        for i in 0..=ADMIN_CODE_FREE_FAILURES_GLOBAL {
            g.failed(
                Some(IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8])),
                t0,
            );
        }
        assert!(!g.may_try(addr(200), t0), "global lockout");
        assert!(g.may_try(addr(200), t0 + ADMIN_CODE_LOCKOUT_MAX_GLOBAL));
    }

    #[test]
    fn remembered_addresses_are_bounded() {
        let mut g = AdminCodeGuard::default();
        for i in 0..(ADMIN_CODE_ADDRS_MAX as u32 + 10) {
            g.failed(
                Some(IpAddr::from(i.to_be_bytes())),
                Time::from_millis(i as u64),
            );
        }
        assert_eq!(g.addresses(), ADMIN_CODE_ADDRS_MAX);
    }
}
