//! What the writer task is asked to do ([`Command`]), and what it owes its
//! callers between *prepare* and *apply* ([`Effect`]).

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::auth::Grants;
use crate::auth::TokenHash;
use crate::error::{Error, Result};
use crate::event::{Event, EventId};
use crate::hub::{Acked, Gap, Hello, Publish, Published, SubscribeRequest};
use crate::ledger::EventReceipts;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::StreamTx;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

pub(super) enum Command {
    Publish(Box<Publish>, Reply<Published>),
    Ack {
        subscription: Pattern,
        device: DeviceId,
        id: EventId,
        status: Arc<str>,
        reply: Reply<Acked>,
    },
    Subscribe {
        req: SubscribeRequest,
        last_event_id: Option<String>,
        /// The token the stream was opened with, when auth is on: checked
        /// again by the writer, so no change can slip in between the
        /// caller's check and the registration.
        token: Option<TokenHash>,
        stream: StreamTx,
        reply: Reply<Plan>,
    },
    Closed(u64),
    Token {
        token: TokenHash,
        grants: Option<Grants>,
        reply: Reply<bool>,
    },
    RemoveMember {
        subscription: Pattern,
        device: DeviceId,
        reply: Reply<()>,
    },
    Tick,
    NoticeSent {
        id: EventId,
        device: DeviceId,
    },
    Shutdown(oneshot::Sender<()>),
}

pub(super) enum Effect {
    Fail(FailReply, Error),
    Publish {
        event: Arc<Event>,
        reply: Reply<Published>,
    },
    Duplicate {
        id: EventId,
        channel: ChannelName,
        recipients: usize,
        reply: Reply<Published>,
    },
    Ack {
        receipts: Arc<EventReceipts>,
        subscription: Pattern,
        device: DeviceId,
        status: Arc<str>,
        reply: Reply<Acked>,
    },
    Subscribe {
        req: SubscribeRequest,
        last_event_id: Option<String>,
        token: Option<TokenHash>,
        existed: Vec<bool>,
        stream: StreamTx,
        reply: Reply<Plan>,
    },
    Done(Reply<()>),
    Token {
        existed: bool,
        reply: Reply<bool>,
    },
    Shutdown(oneshot::Sender<()>),
    None,
}

pub(super) enum FailReply {
    Publish(Reply<Published>),
    Ack(Reply<Acked>),
    Subscribe(Reply<Plan>),
    Unit(Reply<()>),
    Bool(Reply<bool>),
}

impl FailReply {
    pub(super) fn send(self, err: Error) {
        // A caller that went away no longer needs an answer.
        match self {
            FailReply::Publish(r) => drop(r.send(Err(err))),
            FailReply::Ack(r) => drop(r.send(Err(err))),
            FailReply::Subscribe(r) => drop(r.send(Err(err))),
            FailReply::Unit(r) => drop(r.send(Err(err))),
            FailReply::Bool(r) => drop(r.send(Err(err))),
        }
    }
}

impl Effect {
    pub(super) fn fail(self, err: impl Fn() -> Error) {
        match self {
            Effect::Fail(r, e) => r.send(e),
            Effect::Publish { reply, .. } | Effect::Duplicate { reply, .. } => {
                FailReply::Publish(reply).send(err())
            }
            Effect::Ack { reply, .. } => FailReply::Ack(reply).send(err()),
            Effect::Subscribe { reply, .. } => FailReply::Subscribe(reply).send(err()),
            Effect::Done(reply) => FailReply::Unit(reply).send(err()),
            Effect::Token { reply, .. } => FailReply::Bool(reply).send(err()),
            Effect::Shutdown(reply) => drop(reply.send(())),
            Effect::None => {}
        }
    }
}

/// The writer's answer to a subscribe: what to replay and what to say first.
pub(super) struct Plan {
    pub(super) hello: Hello,
    pub(super) gap: Option<Gap>,
    pub(super) replay: Vec<Arc<EventReceipts>>,
}
