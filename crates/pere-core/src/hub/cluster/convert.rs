//! This node's commands as the shared log carries them ([`Wire`]), and
//! the commands another node's entries stand for.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::super::cmd::{AckCmd, RemoveMemberCmd, SubscribeCmd, TokenCmd};
use super::super::command::Command;
use super::super::{Publish, Resume, SubscribeRequest};
use super::wire::{self, ClosedStream, Wire};
use crate::auth::TokenHash;
use crate::event::{EventId, Timestamp};

/// A command of this node as the log carries it; `None` for what stays
/// local.
pub(super) fn to_wire(cmd: &Command, auth: &crate::auth::AuthRegistry) -> Option<Wire> {
    Some(match cmd {
        Command::Publish(p, _) => Wire::Publish {
            channel: p.channel.clone(),
            payload: String::from_utf8_lossy(&p.payload).into_owned(),
            kind: p.kind.clone(),
            device: p.device.clone(),
            idem: p.idempotency_key.clone(),
        },
        Command::Ack(a) => Wire::Ack {
            subscription: a.subscription.clone(),
            device: a.device.clone(),
            id: a.id.0,
            status: a.status.to_string(),
        },
        Command::Subscribe(s) => Wire::Subscribe {
            patterns: s.req.patterns.clone(),
            device: s.req.device.clone(),
            last_event_id: s.last_event_id.clone(),
            token: s.token.as_ref().map(wire::token_bytes),
            jti: s
                .token
                .as_ref()
                .and_then(|t| auth.jti_of(t))
                .as_ref()
                .map(wire::token_bytes),
        },
        Command::Token(t) => Wire::Token {
            token: wire::token_bytes(&t.token),
            grants: t.grants.clone(),
            jti: auth.is_jti(&t.token),
        },
        Command::RemoveMember(r) => Wire::RemoveMember {
            subscription: r.subscription.clone(),
            device: r.device.clone(),
        },
        Command::NoticeSent { id, device } => Wire::NoticeSent {
            id: id.0,
            device: device.clone(),
        },
        Command::Watch(channel) => Wire::Watch {
            channel: channel.clone(),
        },
        _ => return None,
    })
}

/// An answer nobody waits for: a command another node asked.
pub(super) fn nobody<T>() -> oneshot::Sender<T> {
    oneshot::channel().0
}

/// Another node's command.
pub(super) fn from_wire(w: Wire, node: &Arc<str>) -> Command {
    match w {
        Wire::Publish {
            channel,
            payload,
            kind,
            device,
            idem,
        } => Command::Publish(
            Box::new(Publish {
                channel,
                payload: Bytes::from(payload),
                kind,
                device,
                idempotency_key: idem,
            }),
            nobody(),
        ),
        Wire::Ack {
            subscription,
            device,
            id,
            status,
        } => Command::Ack(AckCmd {
            subscription,
            device,
            id: EventId(id),
            status: Arc::from(status),
            reply: nobody(),
        }),
        Wire::Subscribe {
            patterns,
            device,
            last_event_id,
            token,
            jti,
        } => Command::Subscribe(SubscribeCmd {
            req: SubscribeRequest {
                device,
                patterns,
                resume: Resume::Auto,
            },
            last_event_id,
            token: token.map(TokenHash),
            jti: jti.map(TokenHash),
            stream: None,
            reply: nobody(),
        }),
        Wire::Closed {
            subs,
            device,
            upto,
            at,
            from,
        } => Command::RemoteClosed(
            node.clone(),
            ClosedStream {
                subs,
                device,
                upto: EventId(upto),
                at: at.map(Timestamp),
                from: from.map(EventId),
            },
        ),
        Wire::Cursor {
            subscription,
            device,
            cursor,
            at,
            from,
        } => Command::Cursor {
            node: node.clone(),
            subscription,
            device,
            cursor: EventId(cursor),
            at: Timestamp(at),
            from: from.map(EventId),
        },
        Wire::Replayed {
            subs,
            device,
            ids,
            at,
        } => Command::Replayed {
            subs,
            device,
            ids: ids.into_iter().map(EventId).collect(),
            at: Timestamp(at),
        },
        Wire::Token { token, grants, .. } => Command::Token(TokenCmd {
            token: TokenHash(token),
            grants,
            reply: nobody(),
        }),
        Wire::RemoveMember {
            subscription,
            device,
        } => Command::RemoveMember(RemoveMemberCmd {
            subscription,
            device,
            reply: nobody(),
        }),
        Wire::NoticeSent { id, device } => Command::NoticeSent {
            id: EventId(id),
            device,
        },
        Wire::Tick => Command::SharedTick(node.clone()),
        Wire::NodeGone { node } => Command::NodeGone(Arc::from(node.as_str())),
        Wire::Watch { channel } => Command::Watch(channel),
        Wire::Streams { streams } => Command::NodeStreams(node.clone(), streams),
        Wire::Lost { lost } => Command::FailoverLoss(
            lost.into_iter()
                .map(|(channel, first, upto)| (channel, EventId(first), EventId(upto)))
                .collect(),
        ),
    }
}
