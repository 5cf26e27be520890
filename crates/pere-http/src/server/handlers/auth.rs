//! Who is calling (docs/PROTOCOL.md §7): the token from `Authorization: Bearer` or
//! `?access_token=`, checked against the hub's [`AuthRegistry`], and the
//! checks each route makes with it.
//!
//! With auth off every caller is [`Caller::Open`] and every check passes.
//! Token values never appear in an error: messages name the subject or the
//! channel, never the token.
//!
//! [`AuthRegistry`]: pere_core::AuthRegistry

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use pere_core::auth::{Access, Refusal};
use pere_core::{DeviceId, EventStore, Grants, TokenHash};

use super::input::{device_of, query_value};
use crate::error::ErrorCode;
use crate::error::{ApiError, escape};
use crate::server::app::App;

/// The caller of a request.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Auth is off (or the route is open): anything goes.
    Open,
    /// A caller with a known token.
    Token(Access),
}

impl Caller {
    /// The token, when there is one.
    pub fn token(&self) -> Option<TokenHash> {
        match self {
            Caller::Open => None,
            Caller::Token(access) => Some(access.token),
        }
    }

    /// `Ok` when auth is off or `allowed` holds for the token's grants;
    /// else `403` saying it does not grant `what`.
    ///
    /// On a cluster node, a grant another node widened a moment ago may
    /// not be applied here yet (docs/PROTOCOL.md §10): before refusing,
    /// the node catches up with the log and looks at the token again.
    pub async fn require<S: EventStore>(
        &self,
        app: &App<S>,
        allowed: impl Fn(&Grants) -> bool,
        what: impl FnOnce() -> String,
    ) -> Result<(), ApiError> {
        let Caller::Token(access) = self else {
            return Ok(());
        };
        if allowed(&access.grants)
            || (app.hub.is_cluster()
                && app.hub.caught_up().await
                && app
                    .hub
                    .auth()
                    .grants(&access.token)
                    .is_some_and(|g| allowed(&g)))
        {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "the token does not grant {}",
            what()
        )))
    }

    /// What ends a stream opened by this caller, beside the hub: for a
    /// JWT, its `exp` (docs/PROTOCOL.md §7.4). The future also holds the
    /// JWT's access, so that the hub knows the token while the stream
    /// lives (see [`pere_core::auth`]).
    pub fn stream_end(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let Caller::Token(access) = self else {
            return None;
        };
        let expires = access.expires?;
        let access = access.clone();
        let left = std::time::Duration::from_secs(expires).saturating_sub(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        Some(async move {
            let _held = access;
            tokio::time::sleep(left).await;
        })
    }

    /// `/admin/*` and `/metrics`.
    pub async fn require_admin<S: EventStore>(&self, app: &App<S>) -> Result<(), ApiError> {
        self.require(app, |g| g.admin, || "admin access".into())
            .await
    }

    /// The request's device (docs/PROTOCOL.md §1): with a token, its subject — a
    /// `device` header or parameter naming another device is `403`; without,
    /// the `device` header or parameter.
    pub fn device(
        &self,
        headers: &HeaderMap,
        query: &[(String, String)],
    ) -> Result<Option<DeviceId>, ApiError> {
        let named = device_of(headers, query)?;
        match self {
            Caller::Open => Ok(named),
            Caller::Token(access) => {
                let subject = &access.grants.subject;
                if let Some(named) = named
                    && &named != subject
                {
                    return Err(ApiError::forbidden(format!(
                        "this token speaks for device `{subject}`, not `{named}`"
                    )));
                }
                Ok(Some(subject.clone()))
            }
        }
    }
}

/// The caller of a request on a route that needs one: [`Caller::Open`]
/// when auth is off, else the token's [`Access`].
///
/// # Errors
/// `401 unauthorized` for a missing, malformed or unknown token; `400` for
/// two different tokens in one request.
pub async fn caller<S: EventStore>(
    app: &App<S>,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Caller, ApiError> {
    let auth = app.hub.auth();
    if !auth.is_enabled() {
        return Ok(Caller::Open);
    }
    let Some(token) = presented(headers, query)? else {
        return Err(ApiError::unauthorized(
            "a token is required: send `Authorization: Bearer <token>` or `?access_token=<token>`",
        ));
    };
    let mut checked = auth.check(token);
    // On a cluster, a token another node created a moment ago may not be
    // applied here yet (docs/PROTOCOL.md §10).
    if matches!(checked, Err(Refusal::Unknown)) && app.hub.is_cluster() && app.hub.caught_up().await
    {
        checked = auth.check(token);
    }
    match checked {
        Ok(access) => Ok(Caller::Token(access)),
        // A space is no token character, but it is what a raw `+` of a
        // base64 token becomes in a query string: say so, since the token
        // was surely meant.
        Err(Refusal::Unknown) if token.contains(' ') => Err(ApiError::unauthorized(
            "the token is unknown, and it holds a space: in ?access_token= a `+` reads as a space, so percent-encode the token (`+` as %2B, `/` as %2F, `=` as %3D) or send it in `Authorization: Bearer`",
        )),
        // The refusal says why (expired, signature, audience…), never
        // quoting the token.
        Err(refusal) => Err(ApiError::unauthorized(refusal.to_string())),
    }
}

/// The token a request presents, if any.
fn presented<'a>(
    headers: &'a HeaderMap,
    query: &'a [(String, String)],
) -> Result<Option<&'a str>, ApiError> {
    // Which of two tokens would speak for the request is not for the
    // server to guess (as with one in the header and one in the query).
    let two = |where_: &str| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request carries two different tokens ({where_}): send one"),
        )
    };
    let mut tokens = query.iter().filter(|(k, _)| k == "access_token");
    if let Some((_, first)) = tokens.next()
        && tokens.any(|(_, v)| v != first)
    {
        return Err(two("two access_token parameters"));
    }
    let mut from_header = None;
    for value in headers.get_all(AUTHORIZATION) {
        let token = bearer(value)?;
        if from_header.is_some_and(|first| first != token) {
            return Err(two("two Authorization headers"));
        }
        from_header = Some(token);
    }
    let from_query = query_value(query, "access_token");
    match (from_header, from_query) {
        (Some(h), Some(q)) if h != q => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the request carries two different tokens (Authorization and access_token): send one",
        )),
        (Some(t), _) | (None, Some(t)) => Ok(Some(t).filter(|t| !t.is_empty())),
        (None, None) => Ok(None),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(value: &hyper::header::HeaderValue) -> Result<&str, ApiError> {
    let bad = || {
        ApiError::unauthorized(
            "the Authorization header is not `Bearer <token>` (the only scheme accepted)",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let (scheme, rest) = text.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized(format!(
            "the Authorization scheme `{}` is not accepted: use `Bearer <token>`",
            escape(scheme)
        )));
    }
    Ok(rest.trim())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    fn q(token: Option<&str>) -> Vec<(String, String)> {
        token
            .map(|t| vec![("access_token".to_string(), t.to_string())])
            .unwrap_or_default()
    }

    #[test]
    fn two_different_tokens_are_refused_wherever_they_are() {
        let mut h = headers(Some("Bearer abc"));
        h.append(AUTHORIZATION, HeaderValue::from_static("bearer  abc"));
        assert_eq!(presented(&h, &[]).unwrap(), Some("abc"), "the same twice");
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert!(presented(&h, &[]).is_err());
        let mut query = q(Some("abc"));
        query.extend(q(Some("abc")));
        assert_eq!(presented(&headers(None), &query).unwrap(), Some("abc"));
        query.extend(q(Some("xyz")));
        assert!(presented(&headers(None), &query).is_err());
    }

    #[test]
    fn tokens_come_from_bearer_or_access_token() {
        let h = headers(Some("Bearer abc"));
        assert_eq!(presented(&h, &[]).unwrap(), Some("abc"));
        let h = headers(Some("bearer   abc "));
        assert_eq!(presented(&h, &[]).unwrap(), Some("abc"));
        let none = headers(None);
        let query = q(Some("xyz"));
        assert_eq!(presented(&none, &query).unwrap(), Some("xyz"));
        assert_eq!(presented(&none, &[]).unwrap(), None);
        let same = q(Some("abc"));
        let h = headers(Some("Bearer abc"));
        assert_eq!(presented(&h, &same).unwrap(), Some("abc"));
        assert_eq!(presented(&h, &query).unwrap_err().status(), 400);
        for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Token abc"] {
            let h = headers(Some(bad));
            let err = presented(&h, &[]).unwrap_err();
            assert_eq!(err.status(), 401, "{bad}");
            assert!(!err.message.contains("dXNlcjpwYXNz") && !err.message.contains("abc"));
        }
    }
}
