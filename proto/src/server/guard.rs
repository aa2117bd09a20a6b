//! The limits half of the policy gate ([`super::limits::LimitsConfig`]): rate limits by kind
//! (chat, commands, changes, datagrams, bytes) per session and tokenless joins per source
//! address, value validation (world bounds, rotations, scale), quota checks, and the rotation
//! normalization every accepted transform goes through. `policy` calls these; a breach is
//! refused with a reason (`RateLimited`, `Invalid`, `WorldFull`) and, for a rate that goes on
//! being broken (more than a whole burst, capped at [`super::rate::FLOOD_REFUSALS_MAX`], refused
//! within [`super::FLOOD_WINDOW`]), ends the session with `Flooding`.

use std::net::IpAddr;

use super::limits::RateSpec;
use super::rate::{Limit, MessageRate};
use super::{ConnId, ServerCore};
use crate::time::Time;
use crate::types::*;
use crate::wire::msg::*;

/// Squared quaternion norm below which a rotation is degenerate (no direction to normalize
/// to): 1e-12, a norm of 1e-6, far below any rotation an f32 client computes.
pub const ROTATION_NORM_SQ_MIN: f64 = 1e-12;
/// How far from 1 an accepted rotation's norm may be after normalization: 1e-3, the
/// quantizer's own tolerance (smallest-three at 10+ bits per component).
pub const ROTATION_NORM_TOLERANCE: f64 = 1e-3;

/// Which budget a reliable message spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Command,
    Change,
}

/// `q` scaled to unit length, or `None` if it is degenerate (zero, or not finite).
pub fn normalized(q: Quat) -> Option<Quat> {
    if !q.is_finite() {
        return None;
    }
    // In f64: the squares of an f32 like 1e30 overflow f32.
    let a = q.to_array();
    let n2: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    if n2 < ROTATION_NORM_SQ_MIN {
        return None;
    }
    let n = n2.sqrt();
    Some(Quat::from_array(a.map(|x| (f64::from(x) / n) as f32)))
}

/// Normalizes the rotations a message carries (those that can be: a degenerate one is left
/// for policy to refuse).
pub(super) fn normalize_msg(msg: &mut ClientMsg) {
    let fix = |t: &mut Transform| {
        if let Some(q) = normalized(t.rotation) {
            t.rotation = q;
        }
    };
    match msg {
        ClientMsg::EntityAdd { transform, .. } => fix(transform),
        ClientMsg::EntityModify { patch, .. } => {
            if let Some(t) = patch.transform.as_mut() {
                fix(t);
            }
        }
        _ => {}
    }
}

impl ServerCore {
    /// Whether `p` is finite and inside the configured world bounds (the transform codec's).
    pub(super) fn inside_world(&self, p: &Vec3) -> bool {
        let (lo, hi) = (
            self.config.transform.bounds_min,
            self.config.transform.bounds_max,
        );
        (0..3).all(|a| p[a].is_finite() && p[a] >= lo[a] && p[a] <= hi[a])
    }

    /// Whether a transform is acceptable: position inside the world, a unit rotation, every
    /// scale axis finite and within the limit.
    pub(super) fn transform_ok(&self, t: &Transform) -> bool {
        let unit = t.rotation.is_finite() && {
            let n2: f64 = t
                .rotation
                .to_array()
                .iter()
                .map(|x| f64::from(*x).powi(2))
                .sum();
            (n2.sqrt() - 1.0).abs() <= ROTATION_NORM_TOLERANCE
        };
        let max = self.config.limits.scale_max;
        let scale_ok = t
            .scale
            .is_none_or(|s| s.is_finite() && s.abs().max_element() <= max);
        self.inside_world(&t.position) && unit && scale_ok
    }

    /// Whether session `sid` may grow a blueprint it adds from `before` to `after` bytes.
    pub(super) fn quota_allows_blueprint(
        &self,
        sid: SessionId,
        before: usize,
        after: usize,
    ) -> Result<(), Refusal> {
        let user = self.sessions.get(&sid).map(|s| s.user);
        self.quota_allows_blueprint_of(user, before, after)
    }

    /// Whether a blueprint of `owner` (if known) may change from `before` to `after` bytes.
    pub(super) fn quota_allows_blueprint_of(
        &self,
        owner: Option<UserId>,
        before: usize,
        after: usize,
    ) -> Result<(), Refusal> {
        if after <= before {
            return Ok(());
        }
        let grow = after - before;
        let l = &self.config.limits;
        if self.usage.world_bytes + grow > l.world_bytes_max {
            return Err(Refusal::WorldFull);
        }
        if owner.is_some_and(|u| {
            self.usage.user(u).blueprint_bytes + grow > l.blueprint_bytes_per_user_max
        }) {
            return Err(Refusal::WorldFull);
        }
        Ok(())
    }

    /// Spends one token of `msg`'s kind (chat, command, change) for session `sid`; refuses or
    /// closes past the limit.
    pub(super) fn admit_kind(&mut self, sid: SessionId, conn: ConnId, msg: &ClientMsg) -> bool {
        let kind = match msg {
            ClientMsg::Hello { .. } | ClientMsg::Ping { .. } | ClientMsg::Goodbye => return true,
            ClientMsg::Chat { .. } => Kind::Chat,
            ClientMsg::Command { .. } => Kind::Command,
            _ => Kind::Change,
        };
        let l = &self.config.limits;
        let spec = match kind {
            Kind::Chat => l.chat,
            Kind::Command => l.commands,
            Kind::Change => l.changes,
        };
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return true;
        };
        let bucket = match kind {
            Kind::Chat => &mut s.rates.chat,
            Kind::Command => &mut s.rates.commands,
            Kind::Change => &mut s.rates.changes,
        };
        let what = match kind {
            Kind::Chat => "chat messages",
            Kind::Command => "commands",
            Kind::Change => "changes",
        };
        let verdict = bucket.take_cost(1.0, spec, now);
        self.rate_verdict(sid, conn, msg, verdict, what, spec)
    }

    /// Spends `len` bytes of session `sid`'s byte budget for a frame holding `msg`.
    pub(super) fn admit_bytes(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        msg: &ClientMsg,
        len: usize,
    ) -> bool {
        if matches!(msg, ClientMsg::Goodbye) {
            return true;
        }
        let spec = self.config.limits.bytes;
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return true;
        };
        let verdict = s.rates.bytes.take_cost(len as f64, spec, now);
        self.rate_verdict(sid, conn, msg, verdict, "bytes", spec)
    }

    /// Acts on a rate limit's verdict for a reliable message: refused (`RateLimited`), or the
    /// session closed (`Flooding`) when refusals go on.
    fn rate_verdict(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        msg: &ClientMsg,
        verdict: Limit,
        what: &str,
        spec: RateSpec,
    ) -> bool {
        match verdict {
            Limit::Pass => true,
            Limit::Refuse => {
                self.refuse(sid, conn, msg.name(), msg.req(), Refusal::RateLimited);
                false
            }
            Limit::Close => {
                self.close_conn(
                    conn,
                    CloseReason::Flooding,
                    format!(
                        "{what} kept coming past the rate limit ({} per second, {} at once)",
                        spec.per_s, spec.burst
                    ),
                );
                false
            }
        }
    }

    /// Spends one datagram and its bytes of session `sid`'s budgets: `false` drops it (and
    /// closes the session with `Flooding` when drops go on).
    pub(super) fn admit_datagram(&mut self, sid: SessionId, conn: ConnId, len: usize) -> bool {
        let (dg, bytes) = (self.config.limits.datagrams, self.config.limits.bytes);
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        let a = s.rates.datagrams.take_cost(1.0, dg, now);
        let b = if a == Limit::Pass {
            s.rates.bytes.take_cost(len as f64, bytes, now)
        } else {
            Limit::Pass
        };
        match (a, b) {
            (Limit::Pass, Limit::Pass) => true,
            (Limit::Close, _) | (_, Limit::Close) => {
                self.close_conn(
                    conn,
                    CloseReason::Flooding,
                    format!(
                        "datagrams kept coming past the rate limit ({} per second, {} at once)",
                        dg.per_s, dg.burst
                    ),
                );
                false
            }
            _ => false,
        }
    }

    /// The source address of connection `conn` (for per-address limits: tokenless joins). A
    /// driver that knows it says so right after `handle_connect`; without it the connection
    /// is not limited per address.
    pub fn handle_peer_address(&mut self, conn: ConnId, addr: IpAddr) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.addr = Some(addr);
        }
    }

    /// Spends one tokenless join of `conn`'s source address: `false` closed it (`Flooding`).
    pub(super) fn admit_tokenless_join(&mut self, conn: ConnId) -> bool {
        let Some(addr) = self.conns.get(&conn).and_then(|c| c.addr) else {
            return true;
        };
        let spec = self.config.limits.tokenless_joins_per_addr;
        let now = self.now;
        if !self.join_rates.contains_key(&addr)
            && self.join_rates.len() >= super::limits::JOIN_ADDRS_MAX
        {
            self.forget_full_join_buckets(now);
        }
        let verdict = if self.join_rates.len() >= super::limits::JOIN_ADDRS_MAX
            && !self.join_rates.contains_key(&addr)
        {
            Limit::Refuse
        } else {
            self.join_rates
                .entry(addr)
                .or_insert_with(|| MessageRate::new(spec.burst, now))
                .take_cost(1.0, spec, now)
        };
        if verdict == Limit::Pass {
            return true;
        }
        self.close_conn(
            conn,
            CloseReason::Flooding,
            format!(
                "too many new users from your address ({} per second, {} at once): join with your token",
                spec.per_s, spec.burst
            ),
        );
        false
    }

    /// Forgets the join buckets that have refilled (nothing to remember about them).
    fn forget_full_join_buckets(&mut self, now: Time) {
        let spec = self.config.limits.tokenless_joins_per_addr;
        self.join_rates.retain(|_, r| !r.is_full(spec, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_rotations_do_not_normalize_and_long_ones_do() {
        let q = |a: [f32; 4]| Quat::from_array(a);
        assert_eq!(normalized(q([0.0; 4])), None);
        assert_eq!(normalized(q([f32::NAN, 0.0, 0.0, 1.0])), None);
        assert_eq!(normalized(q([f32::INFINITY, 0.0, 0.0, 0.0])), None);
        assert_eq!(
            normalized(q([1e30, 0.0, 0.0, 0.0])),
            Some(q([1.0, 0.0, 0.0, 0.0]))
        );
        let n = normalized(q([0.0, 2.0, 0.0, 2.0])).unwrap();
        assert!((n.y - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
