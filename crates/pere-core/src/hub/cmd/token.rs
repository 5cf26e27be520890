//! Run-time token changes, applied to open streams at once.

use crate::auth::{Grants, Reach, TokenHash};
use crate::error::Error;
use crate::event::Timestamp;
use crate::hub::SubscribeRequest;
use crate::hub::command::{Effect, Reply};
use crate::hub::state::State;
use crate::log::Record;

/// `Hub::put_token`, `Hub::delete_token`, `Hub::revoke_jti`.
pub(in crate::hub) struct TokenCmd {
    pub(in crate::hub) token: TokenHash,
    /// Its grants from now on; `None` revokes it.
    pub(in crate::hub) grants: Option<Grants>,
    pub(in crate::hub) reply: Reply<bool>,
}

impl State {
    /// Creates, changes or revokes a token; open streams follow at once.
    pub(in crate::hub) fn prepare_token(
        &mut self,
        cmd: TokenCmd,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) -> Effect {
        let TokenCmd {
            token,
            grants,
            reply,
        } = cmd;
        let turns_on = !self.auth.is_enabled();
        if turns_on {
            // docs/PROTOCOL.md §7: admin-created tokens turn auth on. The
            // first one must be an admin token, or nobody could
            // manage tokens (or anything under /admin) afterwards.
            if !grants.as_ref().is_some_and(|g| g.admin) {
                return Effect::Fail(Box::new(reply), Error::AuthDisabled);
            }
            tracing::warn!("auth turned on by the first run-time admin token");
            self.auth.enable_for_journal();
        }
        let existed = self.auth.grants(&token).is_some();
        // A JWT's `jti` is revoked whether or not it was seen.
        if grants.is_none() && !existed && !self.auth.is_jti(&token) {
            return Effect::Fail(Box::new(reply), Error::UnknownToken(token.fingerprint()));
        }
        tracing::info!(
            token = %token.fingerprint(),
            subject = grants.as_ref().map(|g| g.subject.as_str()),
            change = if grants.is_none() { "revoked" } else if existed { "changed" } else { "created" },
            "token"
        );
        records.push(Record::Token {
            token,
            grants: grants.clone(),
            at: now,
        });
        // Applied now, not after the journal write, so that later
        // commands of this batch already see it; should the write
        // fail the hub refuses every write from then on anyway, and
        // a revocation is better applied early than late.
        self.auth.apply(token, grants);
        if turns_on {
            self.close_streams_without_token(now);
        }
        self.enforce_grants(&token, now);
        for jwt in self.auth.tokens_of_jti(&token) {
            self.enforce_grants(&jwt, now);
        }
        records.append(&mut self.deferred);
        Effect::Token { existed, reply }
    }
}

impl State {
    /// Whether a stream may open for `token` (docs/PROTOCOL.md §7): the token
    /// exists, the device is its subject, and every pattern is covered.
    pub(in crate::hub) fn check_subscribe(
        &self,
        token: &TokenHash,
        req: &SubscribeRequest,
    ) -> Result<(), Error> {
        let Some(grants) = self.auth.grants(token) else {
            return Err(Error::Unauthorized(
                "the token is unknown or was revoked".into(),
            ));
        };
        if req.device.as_ref() != Some(&grants.subject) {
            return Err(Error::Forbidden(format!(
                "this token speaks for device `{}` only",
                grants.subject
            )));
        }
        if let Some(p) = req.patterns.iter().find(|p| !grants.may_subscribe(p)) {
            return Err(Error::Forbidden(format!(
                "the token does not grant subscribing to `{p}`"
            )));
        }
        Ok(())
    }

    /// Auth came on: the streams opened while it was off have no token, so
    /// nothing grants them any more (§7: a change applies to open streams
    /// at once). Their devices reconnect with a token.
    fn close_streams_without_token(&mut self, now: Timestamp) {
        let open: Vec<u64> = self
            .memberships
            .streams()
            .filter(|open| open.token.is_none())
            .map(|open| {
                open.shared.revoke();
                open.shared.id
            })
            .collect();
        for id in open {
            tracing::info!(
                stream = id,
                "stream closed: auth was turned on, and it has no token"
            );
            self.close_stream(id, now);
        }
    }

    /// Applies a change of `token` to its open streams: a stream it no
    /// longer reaches at all closes (and skips what it had queued); one it
    /// reaches in part is filtered to the channels still granted; one it
    /// reaches wholly is unrestricted again.
    pub(in crate::hub) fn enforce_grants(&mut self, token: &TokenHash, now: Timestamp) {
        let grants = self.auth.grants(token);
        let mut close = Vec::new();
        for open in self.memberships.streams() {
            if open.token.as_ref() != Some(token) {
                continue;
            }
            let reach = match &grants {
                None => Reach::None,
                Some(g) => g.reach(open.device.as_ref(), &open.subs),
            };
            match reach {
                Reach::All => open.shared.restrict(None),
                Reach::Some(allowed) => open.shared.restrict(Some(allowed)),
                Reach::None => {
                    open.shared.revoke();
                    close.push(open.shared.id);
                    continue;
                }
            }
            if open.narrowed {
                // A removed subscription stays removed (`narrow_to`).
                open.shared.narrow_to(&open.subs);
            }
        }
        for id in close {
            tracing::info!(
                stream = id,
                token = %token.fingerprint(),
                "stream closed: its token no longer grants it"
            );
            self.close_stream(id, now);
        }
    }
}
