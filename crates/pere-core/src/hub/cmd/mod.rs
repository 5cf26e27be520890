//! The commands of the hub's writer, one module each: *prepare* checks a
//! command against the state and writes its journal records; *apply* makes
//! it happen once they are durable (fan-out, registration, the answer).

mod ack;
mod member;
mod publish;
mod subscribe;
pub(in crate::hub) mod tick;
mod token;

pub(super) use ack::{AckCmd, AckEffect};
pub(super) use member::RemoveMemberCmd;
pub(super) use subscribe::{SubscribeCmd, SubscribeEffect};
pub(super) use token::TokenCmd;

use crate::config::HubConfig;
use crate::error::Error;
use crate::event::Timestamp;
use crate::hub::Counters;
use crate::hub::command::{Command, Effect};
use crate::hub::state::State;
use crate::log::Record;

impl State {
    /// Checks `cmd` against the state and writes its journal records; what
    /// is left to do once they are durable is the returned effect.
    pub(in crate::hub) fn prepare(
        &mut self,
        cmd: Command,
        now: Timestamp,
        config: &HubConfig,
        records: &mut Vec<Record>,
    ) -> Effect {
        if self.closed {
            return match cmd {
                Command::Shutdown(reply) => Effect::Shutdown(reply),
                cmd => cmd
                    .owed()
                    .map_or(Effect::None, |owed| Effect::Fail(owed, Error::ShuttingDown)),
            };
        }
        match cmd {
            Command::Publish(publish, reply) => {
                self.prepare_publish(*publish, reply, now, config, records)
            }
            Command::Ack(ack) => self.prepare_ack(ack, now, records),
            Command::Subscribe(sub) => self.prepare_subscribe(sub, now, records),
            Command::Token(token) => self.prepare_token(token, now, records),
            Command::Closed(id) => {
                self.owner_closed(id, now);
                records.append(&mut self.deferred);
                Effect::None
            }
            Command::ReplayDone(id) => {
                if !self.cluster {
                    records.extend(self.memberships.written_replay_of(id));
                }
                Effect::None
            }
            Command::RemoveMember(remove) => self.prepare_remove_member(remove, now, records),
            // The writer runs reads once the batch is applied; one that
            // gets here is answered from the state as it is now.
            Command::Read(read) => {
                crate::hub::view::run(read, self);
                Effect::None
            }
            // A single node's tick and a cluster's shared one do the same
            // chores; they differ in who sends them (see `cluster/`).
            Command::Tick => {
                self.maintain(now, config, records);
                self.notices.check_deadlines(&self.ledgers, now, records);
                Effect::None
            }
            Command::SharedTick(by) => {
                // Whose tick it is decides who sends what it issues, the
                // same on every node: not what each found of the lease.
                self.notices.tick_by(*by == *self.node);
                self.maintain(now, config, records);
                self.notices.check_deadlines(&self.ledgers, now, records);
                // A loss retention has since covered is told as its gap
                // (from the same resume points): forgotten, as every node
                // does at this entry.
                let ledgers = &self.ledgers;
                self.failover_losses.retain(|channel, (_, upto)| {
                    ledgers
                        .channel(channel)
                        .is_none_or(|l| l.evicted_upto < *upto)
                });
                Effect::None
            }
            Command::NoticeSent { id, device } => {
                self.prepare_notice_sent(id, device, now, records);
                Effect::None
            }
            Command::Shutdown(reply) => {
                self.journal_acks(now, records);
                Effect::Shutdown(reply)
            }
            Command::RemoteClosed(node, closed) => {
                self.closed_shared(&node, closed, now);
                records.append(&mut self.deferred);
                Effect::None
            }
            Command::Cursor {
                node,
                subscription,
                device,
                cursor,
                at,
                from,
            } => {
                self.fold_cursor(&subscription, &device, (from, cursor), Some(at), &node, now);
                records.append(&mut self.deferred);
                Effect::None
            }
            Command::Replayed {
                subs,
                device,
                ids,
                at,
            } => {
                self.mark_replayed(&subs, &device, &ids, at, now);
                records.append(&mut self.deferred);
                Effect::None
            }
            Command::Watch(channel) => {
                self.ledgers
                    .watch(&channel, now.plus(crate::receipt_log::RESUME_GRACE));
                Effect::None
            }
            Command::NodeStreams(node, streams) => {
                if node != self.node {
                    self.memberships.set_others(&node, Some(streams));
                }
                Effect::None
            }
            Command::NodeGone(node) => {
                self.node_gone(&node, now);
                records.append(&mut self.deferred);
                Effect::None
            }
            Command::FailoverLoss(lost) => {
                for (channel, first, upto) in lost {
                    self.note_failover_loss(channel, first, upto);
                }
                Effect::None
            }
        }
    }

    /// Makes a prepared command happen once its records are durable, and
    /// answers its caller.
    pub(in crate::hub) fn apply(&mut self, effect: Effect, now: Timestamp, counters: &Counters) {
        match effect {
            Effect::Fail(owed, err) => owed.fail(err),
            Effect::Publish { event, reply } => self.apply_publish(event, reply, counters),
            Effect::Duplicate {
                id,
                channel,
                recipients,
                reply,
            } => self.apply_duplicate(id, channel, recipients, reply),
            Effect::Ack(ack) => self.apply_ack(ack, now, counters),
            Effect::Subscribe(sub) => self.apply_subscribe(sub, now),
            Effect::Done(reply) => drop(reply.send(Ok(()))),
            Effect::Token { existed, reply } => drop(reply.send(Ok(existed))),
            Effect::Shutdown(reply) => drop(reply.send(())),
            Effect::None => {}
        }
    }
}
