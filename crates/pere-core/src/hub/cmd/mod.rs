//! The commands of the hub's writer, one module each: *prepare* checks a
//! command against the state and writes its journal records; *apply* makes
//! it happen once they are durable (fan-out, registration, the answer).

mod ack;
mod publish;
mod subscribe;
mod tick;
mod token;

use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;

use crate::config::HubConfig;
use crate::error::Error;
use crate::event::{EventId, Timestamp};
use crate::hub::command::{Command, Effect, FailReply};
use crate::hub::state::{State, Sub};
use crate::hub::{Acked, Counters, Published};
use crate::ledger::ReceiptState;
use crate::log::Record;
use crate::presence::Member;

impl State {
    pub(in crate::hub) fn prepare(
        &mut self,
        cmd: Command,
        now: Timestamp,
        config: &HubConfig,
        records: &mut Vec<Record>,
    ) -> Effect {
        if self.closed {
            return match cmd {
                Command::Publish(_, reply) => {
                    Effect::Fail(FailReply::Publish(reply), Error::ShuttingDown)
                }
                Command::Ack { reply, .. } => {
                    Effect::Fail(FailReply::Ack(reply), Error::ShuttingDown)
                }
                Command::Subscribe { reply, .. } => {
                    Effect::Fail(FailReply::Subscribe(reply), Error::ShuttingDown)
                }
                Command::RemoveMember { reply, .. } => {
                    Effect::Fail(FailReply::Unit(reply), Error::ShuttingDown)
                }
                Command::Token { reply, .. } => {
                    Effect::Fail(FailReply::Bool(reply), Error::ShuttingDown)
                }
                Command::Shutdown(reply) => Effect::Shutdown(reply),
                Command::Closed(_) | Command::Tick | Command::NoticeSent { .. } => Effect::None,
            };
        }
        match cmd {
            Command::Publish(publish, reply) => {
                self.prepare_publish(*publish, reply, now, config, records)
            }
            Command::Ack {
                subscription,
                device,
                id,
                status,
                reply,
            } => match self.by_id.get(&id) {
                Some(receipts) if subscription.matches(&receipts.event.channel) => {
                    records.push(Record::Ack {
                        id,
                        device: device.clone(),
                        status: status.clone(),
                        at: now,
                    });
                    Effect::Ack {
                        receipts: receipts.clone(),
                        subscription,
                        device,
                        status,
                        reply,
                    }
                }
                _ => Effect::Fail(
                    FailReply::Ack(reply),
                    Error::UnknownEvent {
                        channel: subscription.to_string(),
                        id: id.to_string(),
                    },
                ),
            },
            Command::Subscribe {
                req,
                last_event_id,
                token,
                stream,
                reply,
            } => {
                if let Some(token) = &token
                    && let Err(err) = self.check_subscribe(token, &req)
                {
                    return Effect::Fail(FailReply::Subscribe(reply), err);
                }
                let mut existed = Vec::with_capacity(req.patterns.len());
                for pattern in &req.patterns {
                    let sub = match self.subs.entry(pattern.clone()) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => {
                            if pattern.exact().is_none() {
                                self.wild.push(pattern.clone());
                            }
                            e.insert(Sub::default())
                        }
                    };
                    let Some(device) = &req.device else {
                        existed.push(false);
                        continue;
                    };
                    let head = self.seq.last();
                    let member = sub.members.entry(device.clone()).or_insert_with(|| Member {
                        is_member: false,
                        ..Member::joined(head, now)
                    });
                    existed.push(member.is_member);
                    if !member.is_member {
                        let last_acked = member.last_acked;
                        *member = Member::joined(head, now);
                        member.last_acked = last_acked;
                        // An acknowledging device rejoining: its new events
                        // are tracked from the first publish on.
                        sub.ackers += usize::from(last_acked.is_some());
                        records.push(Record::Joined {
                            subscription: pattern.clone(),
                            device: device.clone(),
                            head,
                            at: now,
                        });
                    }
                    records.push(Record::Presence {
                        subscription: pattern.clone(),
                        device: device.clone(),
                        online: true,
                        last_event_id: last_event_id
                            .as_deref()
                            .and_then(|s| EventId::parse(s).ok()),
                        at: now,
                    });
                }
                Effect::Subscribe {
                    req,
                    last_event_id,
                    token,
                    existed,
                    stream,
                    reply,
                }
            }
            Command::Token {
                token,
                grants,
                reply,
            } => {
                if !self.auth.is_enabled() {
                    // docs/PROTOCOL.md §7: admin-created tokens turn auth on. The
                    // first one must be an admin token, or nobody could
                    // manage tokens (or anything under /admin) afterwards.
                    if !grants.as_ref().is_some_and(|g| g.admin) {
                        return Effect::Fail(FailReply::Bool(reply), Error::AuthDisabled);
                    }
                    tracing::warn!("auth turned on by the first run-time admin token");
                    self.auth.enable_for_journal();
                }
                let existed = self.auth.grants(&token).is_some();
                // A JWT's `jti` is revoked whether or not it was seen.
                if grants.is_none() && !existed && !self.auth.is_jti(&token) {
                    return Effect::Fail(
                        FailReply::Bool(reply),
                        Error::UnknownToken(token.fingerprint()),
                    );
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
                self.enforce_grants(&token, now);
                for jwt in self.auth.tokens_of_jti(&token) {
                    self.enforce_grants(&jwt, now);
                }
                records.append(&mut self.deferred);
                Effect::Token { existed, reply }
            }
            Command::Closed(id) => {
                self.close_stream(id, now);
                records.append(&mut self.deferred);
                Effect::None
            }
            Command::RemoveMember {
                subscription,
                device,
                reply,
            } => {
                let removed = self
                    .subs
                    .get_mut(&subscription)
                    .and_then(|sub| sub.members.remove(&device));
                match removed {
                    Some(member) => {
                        for stream in &member.streams {
                            self.streams.remove(&stream.shared.id);
                            self.fold_counts(&stream.shared);
                        }
                        // Dropping `member` drops its streams' senders: their
                        // bodies end.
                        records.push(Record::Left {
                            subscription,
                            device,
                            at: now,
                        });
                        Effect::Done(reply)
                    }
                    None => Effect::Fail(
                        FailReply::Unit(reply),
                        Error::UnknownMember {
                            subscription: subscription.to_string(),
                            device: device.to_string(),
                        },
                    ),
                }
            }
            Command::Tick => {
                self.maintain(now, config, records);
                self.check_deadlines(now, records);
                Effect::None
            }
            Command::NoticeSent { id, device } => {
                if let Some(entry) = self.notices.get_mut(&(id, device.clone()))
                    && !entry.1
                {
                    entry.1 = true;
                    records.push(Record::Notice {
                        id,
                        device,
                        sent: true,
                        at: now,
                    });
                }
                Effect::None
            }
            Command::Shutdown(reply) => Effect::Shutdown(reply),
        }
    }

    pub(in crate::hub) fn apply(&mut self, effect: Effect, now: Timestamp, counters: &Counters) {
        match effect {
            Effect::Fail(reply, err) => reply.send(err),
            Effect::Publish { event, reply } => {
                let receipts = self.fan_out(event, counters);
                counters.published.fetch_add(1, Ordering::Relaxed);
                let published = Published {
                    id: receipts.id(),
                    channel: receipts.event.channel.clone(),
                    recipients: receipts.audience().len(),
                    duplicate: false,
                    receipts: Some(receipts),
                };
                // Per event: DEBUG (issue 18.2); pere_http::activity sums
                // them up at INFO.
                tracing::debug!(
                    channel = %published.channel,
                    id = %published.id,
                    recipients = published.recipients,
                    "published"
                );
                let _ = reply.send(Ok(published));
            }
            Effect::Duplicate {
                id,
                channel,
                recipients,
                reply,
            } => {
                let receipts = self.by_id.get(&id).cloned();
                let recipients = receipts.as_ref().map_or(recipients, |r| r.audience().len());
                tracing::debug!(channel = %channel, id = %id, "idempotent retry answered with the first result");
                let _ = reply.send(Ok(Published {
                    id,
                    channel,
                    recipients,
                    duplicate: true,
                    receipts,
                }));
            }
            Effect::Ack {
                receipts,
                subscription,
                device,
                status,
                reply,
            } => {
                receipts.ack(&device, status.clone(), now);
                counters.acked.fetch_add(1, Ordering::Relaxed);
                self.note_ack(
                    &subscription,
                    &receipts.event.channel,
                    &device,
                    receipts.id(),
                    now,
                );
                tracing::debug!(
                    channel = %receipts.event.channel,
                    id = %receipts.id(),
                    device = %device,
                    status = %status,
                    "receipt"
                );
                let _ = reply.send(Ok(Acked {
                    id: receipts.id(),
                    device,
                    state: ReceiptState::Acked,
                }));
            }
            Effect::Subscribe {
                req,
                last_event_id,
                token,
                existed,
                stream,
                reply,
            } => {
                let plan = self.register(req, last_event_id, token, &existed, stream.clone(), now);
                if reply.send(Ok(plan)).is_err() || stream.is_closed() {
                    // The subscriber left before it got its stream.
                    self.close_stream(stream.shared.id, now);
                }
            }
            Effect::Done(reply) => {
                let _ = reply.send(Ok(()));
            }
            Effect::Token { existed, reply } => {
                let _ = reply.send(Ok(existed));
            }
            Effect::Shutdown(reply) => {
                let _ = reply.send(());
            }
            Effect::None => {}
        }
    }
}
