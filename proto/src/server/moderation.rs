//! Identity and moderation: what the core decides about a verified token (expiry, revocation,
//! backend ranges), the tokens it hands out (at join and before the last one expires), and the
//! moderation commands people type: `/kick`, `/mute`, `/unmute`, `/ban`, `/unban`, `/rank`,
//! `/revoke`, `/help`.
//!
//! Who may do what (also in README's security model):
//! - anyone: `/help`, `/name`, `/admin CODE`;
//! - builders: `/kick`, `/mute`, `/unmute` of users of a strictly lower rank (and the world
//!   editing commands);
//! - admins: `/ban`, `/unban` of users of a strictly lower rank, `/rank` and `/revoke` of
//!   anyone.
//!
//! A command names its target by display name (online players first, then stored users;
//! refused as ambiguous when several match) or as `#ID` (a user id).

use std::time::Duration;

use super::auth::{
    TokenClaims, TokenError, TokenGrant, TokenIssuer, BACKEND_USER_ID_MAX, BACKEND_USER_ID_MIN,
    TOKEN_LEEWAY_S,
};
use super::{ConnId, ServerCore};
use crate::persist::Change;
use crate::types::*;
use crate::wire::limits::TEXT_BYTES_MAX;
use crate::wire::msg::*;

/// Longest duration a `/mute` or `/ban` may name: 10 years (longer is "for good": leave the
/// duration out).
pub const MODERATION_DURATION_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a duration as people type it: a whole number and a unit, `s`, `m`, `h`, `d` or `w`
/// (`90s`, `10m`, `2h`, `7d`, `1w`). `None` for anything else, zero, or past `max`.
pub fn parse_duration(s: &str, max: Duration) -> Option<Duration> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    let d = Duration::from_secs(n.checked_mul(secs)?);
    (!d.is_zero() && d <= max).then_some(d)
}

/// A duration as people read it: the two largest units (`3d 4h`, `10m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (d_, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d_, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d_}d"),
        _ => format!("{d_}d {h}h"),
    }
}

/// Whether a chat line is a secret-carrying command typed into chat by mistake (`/admin
/// CODE`): it is refused, never relayed, so the code cannot reach other clients.
pub fn chat_carries_secret(body: &str) -> bool {
    body.split_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("/admin"))
}

/// The commands and who may use them, for `/help`: (minimum rank, usage, what it does).
const COMMANDS: &[(Rank, &str, &str)] = &[
    (Rank::Visitor, "/help", "this list"),
    (Rank::Visitor, "/name NEW", "change your display name"),
    (
        Rank::Visitor,
        "/admin CODE",
        "become admin with the relay's admin code",
    ),
    (
        Rank::Builder,
        "/kick NAME [reason]",
        "disconnect a player of lower rank",
    ),
    (
        Rank::Builder,
        "/mute NAME [duration]",
        "silence a user (10m, 2h, 7d; none: until /unmute)",
    ),
    (Rank::Builder, "/unmute NAME", "let a muted user speak"),
    (
        Rank::Builder,
        "/spawn set|clear",
        "move the spawn point here, or back to the origin",
    ),
    (Rank::Builder, "/chat clear", "clear the chat history"),
    (
        Rank::Admin,
        "/ban NAME [duration] [reason]",
        "keep a user out (none: for good)",
    ),
    (Rank::Admin, "/unban NAME", "lift a ban"),
    (
        Rank::Admin,
        "/rank NAME visitor|builder|admin",
        "set a user's rank",
    ),
    (
        Rank::Admin,
        "/revoke NAME",
        "invalidate every token of a user and disconnect them",
    ),
];

/// What an admitted token becomes at join.
pub(super) struct Admitted {
    pub(super) user: UserId,
    pub(super) name: Option<String>,
    pub(super) rank: Option<Rank>,
    /// The user is not in the world yet: create it.
    pub(super) create: bool,
}

impl ServerCore {
    /// Unix milliseconds now, on the core's clock.
    pub(super) fn unix_ms(&self) -> u64 {
        self.config
            .unix_ms_at_zero
            .saturating_add(self.now.as_micros() / 1000)
    }

    /// The core's rules for a token whose signature verified: the backend's id range, expiry
    /// and not-before against the core's clock (with [`TOKEN_LEEWAY_S`]), revocation, and
    /// whether the user exists or may be created.
    pub(super) fn admit_token(&self, claims: TokenClaims) -> Result<Admitted, TokenError> {
        let now_s = self.unix_ms() / 1000;
        if claims.issuer == TokenIssuer::Backend
            && !(BACKEND_USER_ID_MIN..=BACKEND_USER_ID_MAX).contains(&claims.user.0)
        {
            return Err(TokenError::UserOutOfRange);
        }
        if claims
            .expires_at_s
            .is_some_and(|exp| now_s > exp.saturating_add(TOKEN_LEEWAY_S))
        {
            return Err(TokenError::Expired);
        }
        let future = |t: u64| t > now_s.saturating_add(TOKEN_LEEWAY_S);
        if claims.not_before_s.is_some_and(future) || future(claims.issued_at_s) {
            return Err(TokenError::NotYetValid);
        }
        let create = match self.world.users.get(&claims.user) {
            Some(u) => {
                let st = &u.standing;
                let revoked = match claims.generation {
                    Some(g) => g < st.token_generation,
                    None => claims.issued_at_s < st.tokens_revoked_at_s,
                };
                if revoked {
                    return Err(TokenError::Revoked);
                }
                false
            }
            // A token vouching for a name may bring its user into the world (a backend's
            // player, or one minted with `neonet-relay token`); a bare one names a user this
            // world lost or never had.
            None if claims.name.is_some() || claims.issuer == TokenIssuer::Backend => true,
            None => return Err(TokenError::UnknownUser),
        };
        Ok(Admitted {
            user: claims.user,
            name: claims.name,
            rank: claims.rank,
            create,
        })
    }

    /// A fresh token for `user`, valid for the configured ttl from now.
    pub(super) fn fresh_token(&self, user: UserId) -> String {
        let now_s = self.unix_ms() / 1000;
        let generation = self
            .world
            .users
            .get(&user)
            .map_or(0, |u| u.standing.token_generation);
        self.auth.issue(&TokenGrant {
            user,
            name: None,
            rank: None,
            issued_at_s: now_s,
            expires_at_s: now_s.saturating_add(self.config.token_ttl.as_secs()),
            generation: Some(generation),
        })
    }

    /// When a session's token should be replaced: half its ttl after it was issued, so a
    /// session that lasts longer than the ttl always holds a valid one.
    pub(super) fn token_refresh_due(&self) -> crate::time::Time {
        self.now + self.config.token_ttl / 2
    }

    /// Sends every session whose token is half through its life a fresh one (`AuthToken`).
    pub(super) fn refresh_tokens(&mut self) {
        let now = self.now;
        let due: Vec<(SessionId, UserId, ConnId)> = self
            .sessions
            .values()
            .filter(|s| s.token_refresh_at <= now)
            .filter_map(|s| Some((s.id, s.user, s.conn?)))
            .collect();
        for (sid, user, conn) in due {
            let token = self.fresh_token(user);
            let at = self.token_refresh_due();
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.token_refresh_at = at;
            }
            self.send(conn, &ServerMsg::AuthToken { token });
        }
    }

    /// Sends the caller of command `req` a line of text.
    pub(super) fn command_reply(&mut self, conn: ConnId, req: ReqId, text: impl Into<String>) {
        self.send(
            conn,
            &ServerMsg::CommandReply {
                req,
                text: text.into(),
            },
        );
    }

    /// The user a command names: `#ID`, an online player's name, or a stored user's name.
    fn find_user(&self, who: &str) -> Result<UserId, String> {
        if let Some(id) = who.strip_prefix('#') {
            let id = id
                .parse()
                .map(UserId)
                .map_err(|_| format!("{who}: not a user id"))?;
            return if self.world.users.contains_key(&id) {
                Ok(id)
            } else {
                Err(format!("no user {who}"))
            };
        }
        let online: Vec<UserId> = self
            .sessions
            .values()
            .filter(|s| s.name.eq_ignore_ascii_case(who))
            .map(|s| s.user)
            .collect();
        let stored: Vec<UserId> = if online.is_empty() {
            self.world
                .users
                .values()
                .filter(|u| u.name.eq_ignore_ascii_case(who))
                .map(|u| u.id)
                .collect()
        } else {
            online
        };
        match stored.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no user named {who}")),
            many => Err(format!(
                "{} users are named {who}: name one as {}",
                many.len(),
                many.iter()
                    .take(5)
                    .map(|u| format!("#{}", u.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// A moderation command, if `args` is one (`false`: not a moderation command).
    pub(super) fn moderation_command(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        req: ReqId,
        args: &[&str],
    ) -> bool {
        let Some((&cmd, rest)) = args.split_first() else {
            return false;
        };
        let need = match cmd {
            "help" => Rank::Visitor,
            "kick" | "mute" | "unmute" => Rank::Builder,
            "ban" | "unban" | "rank" | "revoke" => Rank::Admin,
            _ => return false,
        };
        let rank = self.rank_of(sid);
        if cmd == "help" {
            let lines: Vec<String> = COMMANDS
                .iter()
                .filter(|(r, _, _)| *r <= rank)
                .map(|(_, usage, what)| format!("{usage}: {what}"))
                .collect();
            self.command_reply(
                conn,
                req,
                format!("commands for your rank ({rank:?}):\n{}", lines.join("\n")),
            );
            self.ack_now(conn, req);
            return true;
        }
        let refuse = |core: &mut Self, reason: Refusal, text: String| {
            core.command_reply(conn, req, text);
            core.refuse(sid, conn, "command", Some(req), reason);
        };
        if rank < need {
            refuse(self, Refusal::Rank, format!("/{cmd} needs rank {need:?}"));
            return true;
        }
        let Some((&who, rest)) = rest.split_first() else {
            let usage = COMMANDS
                .iter()
                .find(|(_, u, _)| u[1..].split(' ').next() == Some(cmd))
                .map_or("", |(_, u, _)| u);
            refuse(self, Refusal::Invalid, format!("usage: {usage}"));
            return true;
        };
        let target = match self.find_user(who) {
            Ok(u) => u,
            Err(text) => {
                refuse(self, Refusal::NotFound, text);
                return true;
            }
        };
        // Kick, mute and ban need a strictly higher rank than the target's.
        if matches!(cmd, "kick" | "mute" | "unmute" | "ban" | "unban")
            && rank <= self.world.effective_rank(target)
        {
            refuse(
                self,
                Refusal::Rank,
                format!("{who} is not of a lower rank than yours"),
            );
            return true;
        }
        let by = self
            .sessions
            .get(&sid)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let reason_of = |words: &[&str]| {
            let mut r = words.join(" ");
            if r.len() > TEXT_BYTES_MAX {
                let mut cut = TEXT_BYTES_MAX;
                while !r.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.truncate(cut);
            }
            (!r.is_empty()).then_some(r)
        };
        let now_ms = self.unix_ms();
        let until = |d: Duration| now_ms.saturating_add(d.as_millis() as u64);
        match cmd {
            "kick" => {
                let reason = reason_of(rest);
                let detail = match &reason {
                    Some(r) => format!("kicked by {by}: {r}"),
                    None => format!("kicked by {by}"),
                };
                match self
                    .by_user
                    .get(&target)
                    .and_then(|s| self.sessions.get(s)?.conn)
                {
                    Some(c) => {
                        self.close_conn(c, CloseReason::Moderation, detail);
                        self.ack_now(conn, req);
                    }
                    None => refuse(self, Refusal::NotFound, format!("{who} is not online")),
                }
            }
            "mute" | "unmute" => {
                let muted = cmd == "mute";
                let duration = match rest.first() {
                    Some(d) if muted => match parse_duration(d, MODERATION_DURATION_MAX) {
                        Some(d) => Some(d),
                        None => {
                            refuse(
                                self,
                                Refusal::Invalid,
                                format!("{d}: not a duration (10m, 2h, 7d)"),
                            );
                            return true;
                        }
                    },
                    _ => None,
                };
                let Some(u) = self.world.users.get_mut(&target) else {
                    return true;
                };
                u.muted = muted;
                u.standing.muted_until_ms = duration.map(until);
                let rec = u.clone();
                if let Some(player) = self.by_user.get(&target).and_then(|s| self.sessions.get(s)) {
                    let player = player.player;
                    self.broadcast(&ServerMsg::Muted { player, muted }, None);
                }
                self.commit(sid, conn, Some(req), Change::PutUser(rec));
            }
            "ban" => {
                let (duration, words) = match rest.first() {
                    Some(d) => match parse_duration(d, MODERATION_DURATION_MAX) {
                        Some(d) => (Some(d), &rest[1..]),
                        None => (None, rest),
                    },
                    None => (None, rest),
                };
                let reason = reason_of(words);
                let Some(u) = self.world.users.get_mut(&target) else {
                    return true;
                };
                u.banned = true;
                u.standing.banned_until_ms = duration.map(until);
                u.standing.ban_reason = reason.clone();
                let rec = u.clone();
                let mut detail = match duration {
                    Some(d) => format!("banned by {by} for {}", format_duration(d)),
                    None => format!("banned by {by}"),
                };
                if let Some(r) = reason {
                    detail = format!("{detail}: {r}");
                }
                if let Some(c) = self
                    .by_user
                    .get(&target)
                    .and_then(|s| self.sessions.get(s)?.conn)
                {
                    self.close_conn(c, CloseReason::Moderation, detail);
                }
                self.commit(sid, conn, Some(req), Change::PutUser(rec));
            }
            "unban" => {
                let Some(u) = self.world.users.get_mut(&target) else {
                    return true;
                };
                u.banned = false;
                u.standing.banned_until_ms = None;
                u.standing.ban_reason = None;
                let rec = u.clone();
                self.commit(sid, conn, Some(req), Change::PutUser(rec));
            }
            "rank" => {
                let new = match rest.first().map(|r| r.to_ascii_lowercase()).as_deref() {
                    Some("visitor") => Rank::Visitor,
                    Some("builder") => Rank::Builder,
                    Some("admin") => Rank::Admin,
                    _ => {
                        refuse(
                            self,
                            Refusal::Invalid,
                            "usage: /rank NAME visitor|builder|admin".into(),
                        );
                        return true;
                    }
                };
                self.set_rank(sid, conn, req, target, new);
            }
            "revoke" => {
                let now_s = now_ms / 1000;
                let Some(u) = self.world.users.get_mut(&target) else {
                    return true;
                };
                u.standing.token_generation = u.standing.token_generation.saturating_add(1);
                u.standing.tokens_revoked_at_s = now_s;
                let rec = u.clone();
                if let Some(c) = self
                    .by_user
                    .get(&target)
                    .and_then(|s| self.sessions.get(s)?.conn)
                {
                    self.close_conn(
                        c,
                        CloseReason::Moderation,
                        format!("your tokens were revoked by {by}"),
                    );
                }
                self.commit(sid, conn, Some(req), Change::PutUser(rec));
            }
            _ => return false,
        }
        true
    }

    /// Sets `user`'s stored rank and tells everyone its effective rank.
    pub(super) fn set_rank(
        &mut self,
        sid: SessionId,
        conn: ConnId,
        req: ReqId,
        user: UserId,
        rank: Rank,
    ) {
        let Some(u) = self.world.users.get_mut(&user) else {
            return;
        };
        u.rank = rank;
        let rec = u.clone();
        let effective = self.world.effective_rank(user);
        self.broadcast(
            &ServerMsg::RankModified {
                user,
                rank: effective,
            },
            None,
        );
        self.commit(sid, conn, Some(req), Change::PutUser(rec));
    }

    /// After the world's default rank changed from `before`: tells everyone the effective rank
    /// of each online user whose effective rank changed with it.
    pub(super) fn default_rank_changed(&mut self, before: Rank) {
        let after = self.world.settings.default_rank;
        let changed: Vec<(UserId, Rank)> = self
            .sessions
            .values()
            .filter_map(|s| {
                let stored = self
                    .world
                    .users
                    .get(&s.user)
                    .map_or(Rank::Visitor, |u| u.rank);
                let (old, new) = (stored.max(before), stored.max(after));
                (old != new).then_some((s.user, new))
            })
            .collect();
        for (user, rank) in changed {
            self.broadcast(&ServerMsg::RankModified { user, rank }, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_typed_and_refuse_the_rest() {
        let max = MODERATION_DURATION_MAX;
        assert_eq!(parse_duration("90s", max), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m", max), Some(Duration::from_secs(600)));
        assert_eq!(
            parse_duration("7d", max),
            Some(Duration::from_secs(7 * 86_400))
        );
        for bad in ["", "m", "0m", "10", "-1h", "1y", "99999999999999999w", "dé"] {
            assert_eq!(parse_duration(bad, max), None, "{bad}");
        }
        assert_eq!(
            format_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
    }

    #[test]
    fn admin_typed_into_chat_is_recognised() {
        assert!(chat_carries_secret("/admin hunter2"));
        assert!(chat_carries_secret("  /ADMIN x"));
        assert!(!chat_carries_secret("the /admin command"));
    }
}
