//! `/admin/*`: connections, channels, retained events, devices, tokens.

use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use pere_core::jwt::MAX_JTI_LEN;
use pere_core::{
    ChannelName, DeviceId, EventId, EventStore, Grants, Pattern, Presence, Token, TokenHash,
};
use serde_json::Value;

use super::input::{query_of, query_value};
use crate::error::ErrorCode;
use crate::error::{ApiError, escape};
use crate::server::app::App;
use crate::server::body::Body;
use crate::server::body::RequestBody;
use crate::server::response::{json, json_raw};

/// Default and largest page of `/admin/events`.
const DEFAULT_EVENTS_LIMIT: usize = 1_000;
const MAX_EVENTS_LIMIT: usize = 10_000;

/// `GET /admin/connections`: `{"<subscription>":n,…,"total number":N}`,
/// PERE's shape, with the total last as PERE wrote it.
pub async fn connections<S: EventStore>(app: &App<S>) -> Result<Response<Body>, ApiError> {
    let c = app.hub.connections().await?;
    let mut out = String::from("{");
    for (pattern, n) in &c.per_subscription {
        out.push_str(&serde_json::to_string(pattern.as_str()).unwrap_or_default());
        out.push(':');
        out.push_str(&n.to_string());
        out.push(',');
    }
    out.push_str(&format!("\"total number\":{}}}", c.total));
    Ok(json_raw(StatusCode::OK, out))
}

/// `GET /admin/channels`.
pub async fn channels<S: EventStore>(app: &App<S>) -> Result<Response<Body>, ApiError> {
    let (channels, patterns) = app.hub.channels_and_patterns().await?;
    let mut list: Vec<Value> = channels
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "channel": c.channel.as_str(),
                "events": c.events,
                "oldest": c.oldest.map(|id| id.to_string()),
                "newest": c.newest.map(|id| id.to_string()),
                "members": c.members,
                "online": c.online,
                "pattern": false,
            })
        })
        .collect();
    // Patterns too (issue 18.6): their members are counted under every
    // channel they match, and an operator must be able to find them.
    let patterns = patterns.into_iter().map(|p| {
        serde_json::json!({
            "channel": p.pattern.as_str(),
            "events": p.events,
            "oldest": null,
            "newest": null,
            "members": p.members,
            "online": p.online,
            "pattern": true,
            "channels": p.channels,
        })
    });
    list.extend(patterns);
    Ok(json(StatusCode::OK, Value::Array(list)))
}

/// `GET /admin/events/:channel?after=ID&limit=N`.
pub async fn events<S: EventStore>(
    app: &App<S>,
    req: &Request<RequestBody>,
    channel: &str,
) -> Result<Response<Body>, ApiError> {
    let channel = ChannelName::new(channel)?;
    let query = query_of(req)?;
    let after = match query_value(&query, "after") {
        None | Some("") => EventId::ZERO,
        Some(raw) => EventId::parse(raw)?,
    };
    let limit = match query_value(&query, "limit") {
        None | Some("") => DEFAULT_EVENTS_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| {
                (1..=MAX_EVENTS_LIMIT).contains(n) && raw.bytes().all(|b| b.is_ascii_digit())
            })
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "limit=`{}` is not a number from 1 to {MAX_EVENTS_LIMIT}",
                        escape(raw)
                    ),
                )
            })?,
    };
    let events = app.hub.events(&channel, after, limit).await?;
    // Made an event at a time as the answer is sent: a page is up to
    // 10,000 events of up to --max-payload, and JSON escapes a control
    // character as six bytes. Built whole, 200 events of 64 KiB of \x01
    // were one 79 MB answer, and five clients that asked and never read
    // held 375 MiB until --send-timeout (a resource probe). Streamed, a
    // client holds the events (retained anyway) and one item.
    let items = events.into_iter().enumerate().map(|(i, e)| {
        let text = e.payload_str();
        let data =
            serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()));
        let item = serde_json::json!({
            "id": e.id.to_string(),
            "time": e.time.to_rfc3339(),
            "event": e.kind_str(),
            "device": e.device.as_ref().map(|d| d.as_str()),
            "data": data,
        });
        let mut chunk = Vec::with_capacity(text.len() + 160);
        chunk.push(if i == 0 { b'[' } else { b',' });
        // Serializing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut chunk, &item);
        Bytes::from(chunk)
    });
    let mut first = true;
    let body = items
        .chain(std::iter::once_with(move || Bytes::from_static(b"]")))
        .map(move |chunk| {
            // An empty page is `[]`: the closing bracket opens it too.
            if std::mem::take(&mut first) && chunk.as_ref() == b"]" {
                Bytes::from_static(b"[]")
            } else {
                chunk
            }
        });
    let mut response = Response::new(Body::Chunks(Box::new(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn presence_json(p: &Presence) -> Value {
    let t = |t: Option<pere_core::Timestamp>| t.map(|t| t.to_rfc3339());
    serde_json::json!({
        "op": p.op,
        "at": p.at.to_rfc3339(),
        "Last-Event-Id": p.last_event_id,
        "member": p.member,
        "online": p.online,
        "connections": p.connections,
        "joined_at": t(p.joined_at),
        "connected_at": t(p.connected_at),
        "last_seen": p.last_seen.to_rfc3339(),
        "last_delivered": p.last_delivered.map(|id| id.to_string()),
        "last_delivered_at": t(p.last_delivered_at),
        "last_acked": p.last_acked.map(|id| id.to_string()),
        "last_acked_at": t(p.last_acked_at),
    })
}

/// The devices `/admin/devices/:channel` lists, with the subscription each
/// is known through: for a channel, its own and those of the patterns
/// matching it (the audience of its events); for a pattern, its own.
async fn devices_on<S: EventStore>(
    app: &App<S>,
    pattern: &Pattern,
) -> pere_core::Result<Vec<(DeviceId, Pattern, Presence)>> {
    Ok(match pattern.exact() {
        Some(channel) => app.hub.devices_of_channel(channel).await?,
        None => app
            .hub
            .devices(pattern)
            .await?
            .into_iter()
            .map(|(d, p)| (d, pattern.clone(), p))
            .collect(),
    })
}

/// `GET /admin/devices/:channel`: an object keyed by device.
pub async fn devices<S: EventStore>(
    app: &App<S>,
    channel: &str,
) -> Result<Response<Body>, ApiError> {
    let pattern = Pattern::new(channel)?;
    let map: serde_json::Map<String, Value> = devices_on(app, &pattern)
        .await?
        .into_iter()
        .map(|(d, via, p)| (d.to_string(), device_json(&via, &p)))
        .collect();
    Ok(json(StatusCode::OK, Value::Object(map)))
}

/// A device's presence with the subscription it is known through.
fn device_json(via: &Pattern, p: &Presence) -> Value {
    let mut value = presence_json(p);
    if let Value::Object(map) = &mut value {
        map.insert("subscription".into(), via.as_str().into());
    }
    value
}

/// `GET` (presence) or `DELETE` (drop the membership) of one device.
pub async fn device<S: EventStore>(
    app: &App<S>,
    method: &Method,
    channel: &str,
    device: &str,
) -> Result<Response<Body>, ApiError> {
    let pattern = Pattern::new(channel)?;
    let device = DeviceId::new(device)?;
    if method == Method::DELETE {
        if let Err(err) = app.hub.remove_member(&pattern, &device).await {
            // A member through a pattern is dropped from the pattern: say
            // which, rather than a bare "not a member".
            let via = devices_on(app, &pattern)
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|(d, via, _)| d == &device && via != &pattern);
            return Err(match (err, via) {
                (err @ pere_core::Error::UnknownMember { .. }, Some((_, via, _))) => {
                    let mut api = ApiError::from(err);
                    api.message.push_str(&format!(
                        ": it is a member of `{via}`, which matches `{pattern}`; DELETE /admin/devices/{via}/{device} drops it"
                    ));
                    api
                }
                (err, _) => err.into(),
            });
        }
        return Ok(json(
            StatusCode::OK,
            serde_json::json!({
                "channel": pattern.as_str(),
                "device": device.as_str(),
                "removed": true,
            }),
        ));
    }
    let (via, presence) = devices_on(app, &pattern)
        .await?
        .into_iter()
        .find(|(d, _, _)| d == &device)
        .map(|(_, via, p)| (via, p))
        .ok_or_else(|| {
            ApiError::from(pere_core::Error::UnknownMember {
                subscription: pattern.to_string(),
                device: device.to_string(),
            })
        })?;
    Ok(json(StatusCode::OK, device_json(&via, &presence)))
}

/// Largest `PUT /admin/tokens/:token` body, in bytes: room for
/// [`pere_core::auth::MAX_GRANTS`] long patterns in each list.
const MAX_TOKEN_BODY: usize = 1024 * 1024;

/// A token as the admin API shows it: by fingerprint, never by value.
fn token_json(hash: &TokenHash, grants: &Grants) -> serde_json::Map<String, Value> {
    let list = |l: &[Pattern]| Value::from(l.iter().map(|p| p.as_str()).collect::<Vec<_>>());
    let mut out = serde_json::Map::new();
    out.insert("token".into(), hash.fingerprint().into());
    out.insert("subject".into(), grants.subject.as_str().into());
    out.insert("subscribe".into(), list(&grants.subscribe));
    out.insert("publish".into(), list(&grants.publish));
    out.insert("admin".into(), grants.admin.into());
    out
}

/// `GET /admin/tokens`: every live token by fingerprint, with its grants
/// and where it comes from (`file` or `runtime`).
pub async fn tokens<S: EventStore>(app: &App<S>) -> Response<Body> {
    // On a cluster, with what other nodes changed a moment ago.
    app.hub.caught_up().await;
    let list: Vec<Value> = app
        .hub
        .auth()
        .list()
        .iter()
        .map(|(hash, grants, origin)| {
            let mut t = token_json(hash, grants);
            t.insert("origin".into(), origin.as_str().into());
            Value::Object(t)
        })
        .collect();
    json(StatusCode::OK, serde_json::json!({ "tokens": list }))
}

/// `PUT /admin/tokens/:token` (create or replace, body = the grants) and
/// `DELETE /admin/tokens/:token` (revoke). Answers name the token by
/// fingerprint only.
pub async fn token<S: EventStore>(
    app: &App<S>,
    req: Request<RequestBody>,
    token: &str,
) -> Result<Response<Body>, ApiError> {
    if req.method() == Method::DELETE
        && let Some(jti) = token.strip_prefix("jti:")
    {
        return revoke_jti(app, jti).await;
    }
    if req.method() == Method::DELETE
        && let Some(digits) = token.strip_prefix("sha256:")
    {
        return revoke_fingerprint(app, digits).await;
    }
    if req.method() == Method::DELETE {
        // Any text names a token here: an unknown one is simply not found.
        let hash = TokenHash::of(token);
        app.hub.delete_token(hash).await?;
        return Ok(json(
            StatusCode::OK,
            serde_json::json!({ "token": hash.fingerprint(), "revoked": true }),
        ));
    }
    let token = Token::new(token)?;
    let body = super::input::read_body(req, MAX_TOKEN_BODY, app.config.body_read_timeout).await?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidBody,
            "the token's grants are not UTF-8 JSON",
        )
    })?;
    let grants = pere_core::auth::parse_grants(text).map_err(|why| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "the body is not {{\"subject\":…,\"subscribe\":[…],\"publish\":[…],\"admin\":false}}: {}",
                escape(&why)
            ),
        )
    })?;
    let replaced = app.hub.put_token(&token, grants.clone()).await?;
    let mut out = token_json(&token.hash(), &grants);
    out.insert("created".into(), (!replaced).into());
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(status, Value::Object(out)))
}

/// `DELETE /admin/tokens/sha256:<12 hex digits>`: revokes the live token
/// with this fingerprint, as `GET /admin/tokens` lists it: an operator
/// who sees a token there (and not its value) can revoke it. No token
/// holds a `:`, so the form never names a token by its value.
async fn revoke_fingerprint<S: EventStore>(
    app: &App<S>,
    digits: &str,
) -> Result<Response<Body>, ApiError> {
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "a fingerprint is sha256: and 12 hex digits, as GET /admin/tokens lists it",
        ));
    }
    let fingerprint = format!("sha256:{}", digits.to_ascii_lowercase());
    // On a cluster, with what other nodes changed a moment ago.
    app.hub.caught_up().await;
    let live: Vec<TokenHash> = app
        .hub
        .auth()
        .list()
        .iter()
        .map(|(hash, _, _)| *hash)
        .filter(|hash| hash.fingerprint() == fingerprint)
        .collect();
    let hash = match live.as_slice() {
        [one] => *one,
        // With auth off, what any DELETE answers (409 auth_disabled).
        [] if !app.hub.auth().is_enabled() => TokenHash::of(&fingerprint),
        [] => {
            return Err(ApiError::new(
                ErrorCode::UnknownToken,
                format!("no live token has the fingerprint {fingerprint}"),
            ));
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidToken,
                format!(
                    "{} live tokens share the fingerprint {fingerprint}: revoke by the token itself",
                    live.len()
                ),
            ));
        }
    };
    app.hub.delete_token(hash).await?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "token": fingerprint, "revoked": true }),
    ))
}

/// `DELETE /admin/tokens/jti:<jti>`: revokes the JWTs with this `jti`
/// (docs/PROTOCOL.md §7.4), whether or not one was seen; their streams
/// close.
async fn revoke_jti<S: EventStore>(app: &App<S>, jti: &str) -> Result<Response<Body>, ApiError> {
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("a jti is 1 to {MAX_JTI_LEN} bytes long"),
        ));
    }
    app.hub.revoke_jti(jti).await?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "jti": jti, "revoked": true }),
    ))
}
