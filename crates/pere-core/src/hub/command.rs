//! What the writer task is asked to do ([`Command`]), and what it owes its
//! callers between *prepare* and *apply* ([`Effect`]).

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::event::{Event, EventId, Timestamp};
use crate::hub::cluster::wire::ClosedStream;
use crate::hub::cmd::{
    AckCmd, AckEffect, RemoveMemberCmd, SubscribeCmd, SubscribeEffect, TokenCmd,
};
use crate::hub::state::{NodeStreams, State};
use crate::hub::{Gap, Hello, Publish, Published};
use crate::ledger::EventReceipts;
use crate::name::{ChannelName, DeviceId, Pattern};

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

/// A read of the state the writer runs between batches (see `view.rs`); it
/// sends its own answer.
pub(super) type Read = Box<dyn FnOnce(&State) + Send>;

/// What a caller asks the writer task.
pub(super) enum Command {
    Publish(Box<Publish>, Reply<Published>),
    Ack(AckCmd),
    Subscribe(SubscribeCmd),
    /// A stream ended (its `StreamGuard` was dropped).
    Closed(u64),
    /// A stream wrote the last of its replay: a single node journals what
    /// it wrote now rather than at the next chores, a second later (a
    /// cluster node tells it with its next cursors, within milliseconds).
    ReplayDone(u64),
    Token(TokenCmd),
    RemoveMember(RemoveMemberCmd),
    Tick,
    NoticeSent {
        id: EventId,
        device: DeviceId,
    },
    Shutdown(oneshot::Sender<()>),
    /// From a cluster's log: a stream of `node` ended.
    RemoteClosed(Arc<str>, ClosedStream),
    /// From a cluster's log: what a stream of `node` was written.
    Cursor {
        node: Arc<str>,
        subscription: Pattern,
        device: DeviceId,
        cursor: EventId,
        at: Timestamp,
        /// What the stream had told before.
        from: Option<EventId>,
    },
    /// From a cluster's log: events a stream was written by replay.
    Replayed {
        subs: Vec<Pattern>,
        device: DeviceId,
        ids: Vec<EventId>,
        at: Timestamp,
    },
    /// From a cluster's log: `node` stopped heartbeating; its streams are
    /// gone.
    NodeGone(Arc<str>),
    /// From a cluster's log: the shared part of the periodic chores, with
    /// the node that held the ticker's lease when it appended them.
    SharedTick(Arc<str>),
    /// From a cluster's log: a receipts stream follows the channel.
    Watch(ChannelName),
    /// From a cluster's log: the streams `node` holds.
    NodeStreams(Arc<str>, NodeStreams),
    /// From a cluster's log: a failover lost events on these channels,
    /// from the first id to the second.
    FailoverLoss(Vec<(ChannelName, EventId, EventId)>),
    /// An operator's view, read once the batch is applied.
    Read(Read),
}

impl Command {
    /// The answer the caller waits for, to fail it.
    pub(super) fn owed(self) -> Option<Box<dyn Owed>> {
        match self {
            Command::Publish(_, reply) => Some(Box::new(reply)),
            Command::Ack(ack) => Some(Box::new(ack.reply)),
            Command::Subscribe(sub) => Some(Box::new(sub.reply)),
            Command::Token(token) => Some(Box::new(token.reply)),
            Command::RemoveMember(remove) => Some(Box::new(remove.reply)),
            Command::Closed(_)
            | Command::ReplayDone(_)
            | Command::Tick
            | Command::NoticeSent { .. }
            | Command::Shutdown(_)
            | Command::RemoteClosed(..)
            | Command::FailoverLoss(_)
            | Command::Cursor { .. }
            | Command::Replayed { .. }
            | Command::NodeGone(_)
            | Command::SharedTick(_)
            | Command::Watch(_)
            | Command::NodeStreams(..)
            | Command::Read(_) => None,
        }
    }
}

/// An answer owed to a caller, whatever its type: one way to fail any of
/// them (the hub is closing, the batch could not be written).
pub(super) trait Owed: Send {
    /// Answers with `err`; a caller that went away no longer needs it.
    fn fail(self: Box<Self>, err: Error);
}

impl<T: Send> Owed for oneshot::Sender<Result<T>> {
    fn fail(self: Box<Self>, err: Error) {
        let _ = (*self).send(Err(err));
    }
}

/// What is left to do of a prepared command once its records are durable.
pub(super) enum Effect {
    /// Refused at *prepare*.
    Fail(Box<dyn Owed>, Error),
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
    Ack(AckEffect),
    Subscribe(SubscribeEffect),
    Done(Reply<()>),
    Token {
        existed: bool,
        reply: Reply<bool>,
    },
    Shutdown(oneshot::Sender<()>),
    None,
}

impl Effect {
    /// Fails the answer this effect owes (its batch was not written).
    pub(super) fn fail(self, err: impl Fn() -> Error) {
        match self {
            Effect::Fail(owed, e) => owed.fail(e),
            Effect::Publish { reply, .. } | Effect::Duplicate { reply, .. } => {
                Box::new(reply).fail(err())
            }
            Effect::Ack(ack) => ack.fail(err()),
            Effect::Subscribe(sub) => sub.fail(err()),
            Effect::Done(reply) => Box::new(reply).fail(err()),
            Effect::Token { reply, .. } => Box::new(reply).fail(err()),
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
