//! Streams: where a new stream starts (replay, redelivery of what an
//! acknowledging device has not acknowledged, gaps) and what its end
//! leaves (cursor, presence).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::auth::TokenHash;
use crate::error::Error;
use crate::event::{EventId, Timestamp};
use crate::hub::cluster::wire::{ClosedStream, Wire};
use crate::hub::cmd::tick::acked_upto;
use crate::hub::command::{Effect, Owed, Plan, Reply};
use crate::hub::state::{Ended, Ledgers, OpenStream, State, WrittenReplay};
use crate::hub::{Gap, Hello, Resume, SubscribeRequest};
use crate::ledger::EventReceipts;
use crate::log::Record;
use crate::name::{DeviceId, Pattern};
use crate::presence::{Member, StreamTx};

/// `Hub::subscribe`: a new stream.
pub(in crate::hub) struct SubscribeCmd {
    pub(in crate::hub) req: SubscribeRequest,
    pub(in crate::hub) last_event_id: Option<String>,
    /// The token the stream was opened with, when auth is on: checked
    /// again by the writer, so no change can slip in between the caller's
    /// check and the registration.
    pub(in crate::hub) token: Option<TokenHash>,
    /// For a stream another node opened with a JWT that has a `jti`: its
    /// revocation key (this node does not hold the JWT).
    pub(in crate::hub) jti: Option<TokenHash>,
    /// The stream, on the node it opened on; `None` for a stream another
    /// node of the cluster opened (only its memberships and presence are
    /// shared).
    pub(in crate::hub) stream: Option<StreamTx>,
    pub(in crate::hub) reply: Reply<Plan>,
}

/// A stream to register once its memberships are durable.
pub(in crate::hub) struct SubscribeEffect {
    req: SubscribeRequest,
    last_event_id: Option<String>,
    token: Option<TokenHash>,
    /// Per subscription, whether the device was a member already.
    existed: Vec<bool>,
    stream: Option<StreamTx>,
    reply: Reply<Plan>,
}

impl State {
    /// A device joins (or stays in) each subscription of a new stream.
    pub(in crate::hub) fn prepare_subscribe(
        &mut self,
        cmd: SubscribeCmd,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) -> Effect {
        let SubscribeCmd {
            req,
            last_event_id,
            token,
            jti,
            stream,
            reply,
        } = cmd;
        if let Some(token) = &token {
            let checked = if stream.is_none() && !self.auth.is_static(token) {
                // A JWT another node holds (or held, in a replay): that
                // node checked its signature, expiry and grants, which do
                // not change; what every node checks alike, in log order,
                // is whether its `jti` was revoked. Looking it up here
                // would fail on every node but the one holding it, and
                // their memberships would differ.
                match jti {
                    Some(jti) if self.auth.is_revoked(&jti) => {
                        Err(Error::Unauthorized("the token was revoked".into()))
                    }
                    _ => Ok(()),
                }
            } else {
                self.check_subscribe(token, &req)
            };
            if let Err(err) = checked {
                return Effect::Fail(Box::new(reply), err);
            }
        }
        if token.is_none() && self.auth.is_enabled() {
            // Checked by its caller while auth was off, which a token
            // command applied since turned on: it would stay open with
            // nothing granting it.
            return Effect::Fail(
                Box::new(reply),
                Error::Unauthorized("auth was turned on: a token is required".into()),
            );
        }
        let mut existed = Vec::with_capacity(req.patterns.len());
        for pattern in &req.patterns {
            let sub = self.memberships.sub_entry(pattern);
            let Some(device) = &req.device else {
                existed.push(false);
                continue;
            };
            let head = self.seq.last();
            let member = sub.members.entry(device.clone()).or_insert_with(|| {
                Box::new(Member {
                    is_member: false,
                    ..Member::joined(head, now)
                })
            });
            existed.push(member.is_member);
            if !member.is_member {
                let last_acked = member.last_acked;
                **member = Member::joined(head, now);
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
                if let Some((id, at)) = last_acked {
                    // It acknowledges from its start: a restart must know,
                    // whatever retention keeps of its receipts.
                    records.push(Record::Acking {
                        subscription: pattern.clone(),
                        device: device.clone(),
                        id,
                        at,
                    });
                }
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
        Effect::Subscribe(SubscribeEffect {
            req,
            last_event_id,
            token,
            existed,
            stream,
            reply,
        })
    }

    /// Registers the stream and answers with its plan (hello, gap, replay).
    pub(in crate::hub) fn apply_subscribe(&mut self, cmd: SubscribeEffect, now: Timestamp) {
        let SubscribeEffect {
            req,
            last_event_id,
            token,
            existed,
            stream,
            reply,
        } = cmd;
        let Some(stream) = stream else {
            // Opened on another node: only its presence is ours to keep.
            self.attach_remote(&req, last_event_id, now);
            return;
        };
        let plan = self.register(req, last_event_id, token, &existed, stream.clone(), now);
        if reply.send(Ok(plan)).is_err() || stream.is_closed() {
            // The subscriber left before it got its stream.
            self.close_stream(stream.shared.id, now);
        }
    }

    /// A stream of another node: its device's memberships count it.
    fn attach_remote(
        &mut self,
        req: &SubscribeRequest,
        last_event_id: Option<String>,
        now: Timestamp,
    ) {
        let Some(device) = &req.device else {
            return;
        };
        let node = self.current_node.clone();
        for pattern in &req.patterns {
            if let Some(member) = self.memberships.member_mut(pattern, device) {
                member.attach(&node, now);
                member.last_event_id = last_event_id.clone();
                if matches!(req.resume, Resume::Auto) && member.acknowledges() {
                    // The node that opened it told the loss `register`
                    // found (`pere.gap`): forget it as that node did, so
                    // that this one does not tell it again.
                    unacked_to_send(member, &self.ledgers, self.head, &mut Vec::new());
                    member.lost_from = None;
                }
            }
        }
    }
}

impl SubscribeEffect {
    /// Its batch was not written: the caller gets `err`.
    pub(in crate::hub) fn fail(self, err: Error) {
        Box::new(self.reply).fail(err);
    }
}

impl State {
    /// Registers a stream and plans its replay.
    pub(in crate::hub) fn register(
        &mut self,
        req: SubscribeRequest,
        last_event_id: Option<String>,
        token: Option<TokenHash>,
        existed: &[bool],
        stream: StreamTx,
        now: Timestamp,
    ) -> Plan {
        let head = self.head;
        let replay_all_default = matches!(req.resume, Resume::Auto) && self.replay_all;
        // Where each subscription starts: after an id, for every event of
        // its channels…
        let mut starts: Vec<(Pattern, EventId, bool)> = Vec::with_capacity(req.patterns.len());
        // …or, for an acknowledging member resuming on its own, exactly the
        // events it has not acknowledged (docs/PROTOCOL.md §5).
        let mut redeliver: Vec<EventId> = Vec::new();
        let mut floors: Vec<EventId> = Vec::new();
        // Acknowledging members' subscriptions whose unacknowledged events
        // retention dropped: where each resumes, the first event dropped.
        let mut losses: Vec<(EventId, EventId, &Pattern)> = Vec::new();
        for (i, pattern) in req.patterns.iter().enumerate() {
            let Some(sub) = self.memberships.sub_mut(pattern) else {
                continue;
            };
            let existed = existed.get(i).copied().unwrap_or(false);
            let (start, checked) = match (req.resume, &req.device) {
                (Resume::After(id), _) => (id, true),
                (Resume::All, _) => (EventId::ZERO, false),
                (Resume::Now, _) => (head, false),
                (Resume::Auto, Some(device)) if existed => match sub.members.get_mut(device) {
                    Some(member) if member.acknowledges() => {
                        let mut floor =
                            unacked_to_send(member, &self.ledgers, head, &mut redeliver);
                        // And what was replayed to it after its first
                        // receipt, from before it joined.
                        let late = self.ledgers.late_unacked(pattern, device, member.since);
                        if let Some(first) = late.first() {
                            floor = floor.min(EventId(first.0 - 1));
                        }
                        redeliver.extend(late);
                        if let Some(lost_from) = member.lost_from.take() {
                            losses.push((floor, lost_from, pattern));
                            if !self.cluster {
                                // Told now: not again after a restart.
                                self.deferred.push(acked_upto(
                                    pattern,
                                    device,
                                    member,
                                    &self.ledgers,
                                    head,
                                    now,
                                ));
                            }
                        }
                        floors.push(floor);
                        // Nothing in order after a point: the list says it all.
                        (head, false)
                    }
                    member => (member.map_or(head, |m| m.effective_cursor().0), true),
                },
                (Resume::Auto, _) if replay_all_default => (EventId::ZERO, false),
                (Resume::Auto, _) => (head, false),
            };
            starts.push((pattern.clone(), start.min(head), checked));
        }
        let open = OpenStream {
            subs: req.patterns.clone(),
            device: req.device.clone(),
            token,
            shared: stream.shared.clone(),
            sent_upto: head,
            narrowed: false,
        };
        self.memberships
            .open_stream(open, &stream, &self.node, &last_event_id, now);
        // Nothing at or below `head` is queued live to this stream.
        stream.shared.enqueued_upto.store(head.0, Ordering::Relaxed);

        let mut replay: Vec<Arc<EventReceipts>> = redeliver
            .iter()
            .filter_map(|id| self.ledgers.event(id).cloned())
            .collect();
        let mut gap: Option<Gap> = None;
        let mut oldest_of_all: Option<EventId> = None;
        for (channel, ledger) in self.ledgers.channels() {
            let mut after: Option<(EventId, bool)> = None;
            for (pattern, start, checked) in &starts {
                if pattern.matches(channel) {
                    after = Some(match after {
                        Some((a, c)) if a <= *start => (a, c),
                        _ => (*start, *checked),
                    });
                }
            }
            let Some((after, checked)) = after else {
                continue;
            };
            let oldest = ledger.receipts.front().map(|r| r.id());
            oldest_of_all = match (oldest_of_all, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if checked && (after < ledger.evicted_upto || after < self.floor) {
                let g = gap.get_or_insert(Gap {
                    from: after,
                    oldest,
                    failover: false,
                });
                g.from = g.from.min(after);
                g.oldest = match (g.oldest, oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            // A point among the events a failover lost: the promoted
            // primary's own events of that time have ids in between, and
            // this client never had them. Replayed from the first lost
            // (the gap below says why they come).
            let after = match self.failover_losses.get(channel) {
                Some((first, upto)) if checked && *first <= after && after <= *upto => {
                    EventId(first.0.saturating_sub(1))
                }
                _ => after,
            };
            let start = ledger.receipts.partition_point(|r| r.id() <= after);
            replay.extend(
                ledger
                    .receipts
                    .range(start..)
                    .take_while(|r| r.id() <= head)
                    .cloned(),
            );
        }
        for (pattern, start, checked) in &starts {
            if *checked && self.ledgers.lost_after(pattern, *start) {
                // A channel reclaimed after retention emptied it.
                let g = gap.get_or_insert(Gap {
                    from: *start,
                    oldest: oldest_of_all,
                    failover: false,
                });
                g.from = g.from.min(*start);
            }
            // The point the client named, not where this node can start:
            // one whose head is still below the loss (it never applied the
            // lost events) would tell a client that had them all.
            let point = match req.resume {
                Resume::After(asked) => asked,
                _ => *start,
            };
            if *checked
                && self
                    .failover_losses
                    .iter()
                    .any(|(channel, (_, upto))| point <= *upto && pattern.matches(channel))
            {
                // Events a failover took back after they were sent or
                // answered: never silently (docs/PROTOCOL.md §10).
                let g = gap.get_or_insert(Gap {
                    from: *start,
                    oldest: oldest_of_all,
                    failover: true,
                });
                g.from = g.from.min(*start);
                g.failover = true;
            }
        }
        if let Some(from) = losses.iter().map(|(floor, _, _)| *floor).min() {
            // Retention dropped events the device had not acknowledged
            // before it could get them again: the oldest it can still get
            // is the first event kept after them (not an older one of
            // another of its channels).
            let oldest = losses
                .iter()
                .filter_map(|(_, lost_from, pattern)| self.ledgers.first_from(pattern, *lost_from))
                .min();
            let g = gap.get_or_insert(Gap {
                from,
                oldest,
                failover: false,
            });
            // Lost in a failover rather than to retention (`lost_from`
            // is noted for both): the gap says so.
            g.failover |= losses.iter().any(|(floor, _, pattern)| {
                self.failover_losses
                    .iter()
                    .any(|(channel, (_, upto))| *floor < *upto && pattern.matches(channel))
            });
            g.from = g.from.min(from);
            g.oldest = match (g.oldest, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if gap.is_none() {
            // A resume point below what this hub remembers at all (a volatile
            // store restarted) lost events even on channels with nothing
            // retained now.
            if let Some((_, start, _)) = starts
                .iter()
                .filter(|(_, _, checked)| *checked)
                .min_by_key(|(_, s, _)| *s)
                && *start < self.floor
            {
                gap = Some(Gap {
                    from: *start,
                    oldest: None,
                    failover: false,
                });
            }
        }
        if let (Some(gap), Resume::After(asked)) = (gap.as_mut(), req.resume) {
            // The point the client named, not where this hub can start: a
            // node that has applied nothing yet (just restarted on a log
            // Redis lost) has its head below it, and said `"from":"0"`.
            gap.from = asked;
        }
        replay.sort_unstable_by_key(|r| r.id());
        // An event matching several subscriptions (or both redelivered and
        // replayed) is sent once.
        replay.dedup_by_key(|r| r.id());
        if self.cluster && req.device.is_some() {
            // Marked delivered everywhere once the log hears it was written.
            self.memberships
                .expect_replay(stream.shared.id, replay.clone());
        } else if let Some(device) = &req.device
            && !replay.is_empty()
        {
            // Journaled once written: events from before the device joined
            // are in its audience only because they were (§5.2). Later ones
            // were in it when published.
            let joined: Vec<(&Pattern, EventId)> = req
                .patterns
                .iter()
                .filter_map(|p| Some((p, self.memberships.sub(p)?.members.get(device)?.since)))
                .collect();
            // Once each: a device replayed everything at each reconnect is
            // already in those events' audience from the first time.
            let late: Vec<_> = replay
                .iter()
                .filter(|r| {
                    joined
                        .iter()
                        .filter(|(p, _)| p.matches(&r.event.channel))
                        .all(|(_, since)| r.id() <= *since)
                        && !r.has_late_joiner(device)
                })
                .cloned()
                .collect();
            self.memberships.expect_replay(stream.shared.id, late);
        }
        let resumed_from = match req.resume {
            Resume::After(id) => Some(id),
            _ => starts
                .iter()
                .filter(|(_, _, checked)| *checked)
                .map(|(_, s, _)| *s)
                .chain(floors.iter().copied())
                .min(),
        };
        tracing::debug!(
            stream = stream.shared.id,
            device = req.device.as_ref().map(DeviceId::as_str),
            channels = ?req.patterns.iter().map(Pattern::as_str).collect::<Vec<_>>(),
            resumed_from = resumed_from.map(|id| id.0),
            replayed = replay.len(),
            "subscribed"
        );
        Plan {
            hello: Hello {
                device: req.device,
                channels: req.patterns,
                resumed_from,
                replayed: replay.len(),
            },
            gap,
            replay,
        }
    }

    /// Unregisters a stream: drops its queue senders (its body ends after
    /// what is queued) and folds its cursor into the member. On a cluster
    /// node the presence and cursor parts go through the log, so that every
    /// node applies them at the same place.
    pub(in crate::hub) fn close_stream(&mut self, id: u64, now: Timestamp) {
        let Some((closed, replayed)) = self.memberships.close_local(id) else {
            return;
        };
        if closed.device.is_none() {
            return;
        }
        if self.cluster {
            self.outbox.extend(replayed.map(WrittenReplay::into_wire));
            self.outbox.push(closed.into_wire());
        } else {
            self.deferred
                .extend(replayed.map(WrittenReplay::into_record));
            let node = self.node.clone();
            self.closed_shared(&node, closed, now);
        }
    }

    /// A stream's owner dropped it (its `StreamGuard` said so): it ends, if
    /// the hub had not ended it already, and what it wrote after the hub
    /// ended it is folded. Nothing more is written now: nothing of it is
    /// kept.
    pub(in crate::hub) fn owner_closed(&mut self, id: u64, now: Timestamp) {
        self.close_stream(id, now);
        if let Some(ended) = self.memberships.take_ended(id) {
            self.fold_late_writes(ended, now);
        }
    }

    /// Folds what an ended stream wrote after its cursor was taken (a write
    /// its task had begun then), so that its device resumes after it.
    fn fold_late_writes(&mut self, ended: Ended, now: Timestamp) {
        let upto = ended.shared.delivered_upto();
        if upto <= ended.upto {
            return;
        }
        let at = ended.shared.delivered_at();
        let node = self.node.clone();
        for pattern in &ended.subs {
            if self.cluster {
                self.outbox.push(Wire::Cursor {
                    subscription: pattern.clone(),
                    device: ended.device.clone(),
                    cursor: upto.0,
                    at: at.map_or(0, |t| t.0),
                    from: Some(ended.upto.0),
                });
            } else {
                self.fold_cursor(
                    pattern,
                    &ended.device,
                    (Some(ended.upto), upto),
                    at,
                    &node,
                    now,
                );
            }
        }
    }

    /// The part of a stream's end that every node applies: presence and
    /// the durable cursor of each of its memberships.
    pub(in crate::hub) fn closed_shared(
        &mut self,
        node: &Arc<str>,
        closed: ClosedStream,
        now: Timestamp,
    ) {
        let Some(device) = &closed.device else {
            return;
        };
        for pattern in &closed.subs {
            let Some(member) = self.memberships.member_mut(pattern, device) else {
                continue;
            };
            if member.detach(node, false, now) {
                if !self.cluster {
                    self.expiring
                        .push(std::cmp::Reverse((now, pattern.clone(), device.clone())));
                }
                self.deferred.push(Record::Presence {
                    subscription: pattern.clone(),
                    device: device.clone(),
                    online: false,
                    last_event_id: None,
                    at: now,
                });
            }
            self.fold_cursor(
                pattern,
                device,
                (closed.from, closed.upto),
                closed.at,
                node,
                now,
            );
        }
    }

    /// Moves a member's durable cursor to `upto` (delivered at `at`) and
    /// journals it, for a stream that was written `(from, upto]` since it
    /// last told (`from` unknown: since the member's cursor). Deliveries
    /// made on another node are marked in the ledgers here: that is how a
    /// cluster node learns of them.
    pub(in crate::hub) fn fold_cursor(
        &mut self,
        pattern: &Pattern,
        device: &DeviceId,
        (from, upto): (Option<EventId>, EventId),
        at: Option<Timestamp>,
        node: &Arc<str>,
        now: Timestamp,
    ) {
        // A single node marked its own streams' writes as they happened; a
        // cluster node marks every node's, its own included, from here.
        let mark = *node != self.node || self.cluster;
        match from {
            // The stream's own writes, each stream's counted: a device with
            // two streams written an event has two deliveries of it, as on
            // a single node.
            Some(from) if mark && upto > from => {
                if self.memberships.member_mut(pattern, device).is_some() {
                    self.ledgers.mark_delivered_between(
                        pattern,
                        device,
                        from,
                        upto,
                        at.unwrap_or(now),
                    );
                }
                self.move_cursor(pattern, device, upto, at, false, now);
            }
            Some(_) if mark => self.move_cursor(pattern, device, upto, at, false, now),
            _ => self.move_cursor(pattern, device, upto, at, mark, now),
        }
    }

    /// Marks the events a device's stream was written by replay delivered
    /// to it (a cluster hears of them through the log: they are below the
    /// cursor, or the cursor would mark events between them that were not
    /// replayed, acknowledged ones), and moves its memberships' cursors
    /// past them.
    pub(in crate::hub) fn mark_replayed(
        &mut self,
        subs: &[Pattern],
        device: &DeviceId,
        ids: &[EventId],
        at: Timestamp,
        now: Timestamp,
    ) {
        for id in ids {
            if let Some(receipts) = self.ledgers.event(id)
                && subs.iter().any(|p| p.matches(&receipts.event.channel))
            {
                receipts.mark_delivered(device, at);
            }
        }
        if let Some(last) = ids.iter().max() {
            for pattern in subs {
                self.move_cursor(pattern, device, *last, Some(at), false, now);
            }
        }
    }

    /// Moves a member's cursor to `upto` if it is behind, marking what lies
    /// between delivered when `mark`, and journals it.
    fn move_cursor(
        &mut self,
        pattern: &Pattern,
        device: &DeviceId,
        upto: EventId,
        at: Option<Timestamp>,
        mark: bool,
        now: Timestamp,
    ) {
        let Some(member) = self.memberships.member_mut(pattern, device) else {
            return;
        };
        if upto > member.cursor {
            if mark {
                self.ledgers.mark_delivered_between(
                    pattern,
                    device,
                    member.cursor,
                    upto,
                    at.unwrap_or(now),
                );
            }
            member.cursor = upto;
            member.cursor_at = at;
        }
        if member.cursor > member.journaled_cursor {
            member.journaled_cursor = member.cursor;
            self.deferred.push(Record::Cursor {
                subscription: pattern.clone(),
                device: device.clone(),
                cursor: member.cursor,
                at: member.cursor_at.unwrap_or(now),
            });
        }
    }

    /// Shutdown: every stream ends, every receipts stream too.
    pub(in crate::hub) fn close_all(&mut self, now: Timestamp) {
        let ids: Vec<u64> = self.memberships.streams().map(|o| o.shared.id).collect();
        for id in ids {
            self.close_stream(id, now);
        }
        self.ledgers.close_watchers();
        self.closed = true;
    }
}

/// Collects into `out` the retained events of an acknowledging `member`
/// that it has not acknowledged (up to `head`), forgetting those retention
/// dropped (noted in `lost_from`). Returns the point it resumes after: just
/// before its oldest unacknowledged event, or its cursor when there is none.
pub(in crate::hub) fn unacked_to_send(
    member: &mut Member,
    ledgers: &Ledgers,
    head: EventId,
    out: &mut Vec<EventId>,
) -> EventId {
    let mut lost_from = member.lost_from;
    member.unacked.retain(|id| {
        if ledgers.holds(id) {
            return true;
        }
        lost_from = Some(lost_from.map_or(*id, |l| l.min(*id)));
        false
    });
    member.lost_from = lost_from;
    // Told in `pere.hello` as `resumed_from` (and as a gap's `from`): the
    // cursor or the last acknowledged event when one is below everything
    // resent or lost, else just below the first of those.
    let cursor = member.effective_cursor().0;
    let first = match (member.unacked.front().copied(), lost_from) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let floor = match first {
        None => cursor,
        Some(first) => [Some(cursor), member.last_acked.map(|(id, _)| id)]
            .into_iter()
            .flatten()
            .filter(|id| *id < first)
            .max()
            .unwrap_or(EventId(first.0 - 1)),
    };
    out.extend(member.unacked.iter().copied().take_while(|id| *id <= head));
    floor
}
