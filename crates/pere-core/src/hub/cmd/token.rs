//! Run-time token changes, applied to open streams at once.

use crate::auth::{Reach, TokenHash};
use crate::error::Error;
use crate::event::Timestamp;
use crate::hub::SubscribeRequest;
use crate::hub::state::State;

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

    /// Applies a change of `token` to its open streams: a stream it no
    /// longer reaches at all closes (and skips what it had queued); one it
    /// reaches in part is filtered to the channels still granted; one it
    /// reaches wholly is unrestricted again.
    pub(in crate::hub) fn enforce_grants(&mut self, token: &TokenHash, now: Timestamp) {
        let grants = self.auth.grants(token);
        let mut close = Vec::new();
        for (id, open) in &self.streams {
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
                    close.push(*id);
                }
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
