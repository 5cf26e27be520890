//! Publish: ids, idempotency, the channel limit; then fan-out to every
//! matching stream and the receipts of the event's audience.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::HubConfig;
use crate::error::Error;
use crate::event::{Event, EventId, FrameCache, Timestamp};
use crate::hub::command::{Effect, Reply};
use crate::hub::state::State;
use crate::hub::{Counters, Publish, Published};
use crate::ledger::{EventReceipts, NO_SLOT};
use crate::log::Record;
use crate::name::{ChannelName, DeviceId};
use crate::presence::{Delivery, StreamTx};
use crate::queue::Push;

impl State {
    pub(in crate::hub) fn prepare_publish(
        &mut self,
        publish: Publish,
        reply: Reply<Published>,
        now: Timestamp,
        config: &HubConfig,
        records: &mut Vec<Record>,
    ) -> Effect {
        let key = publish.idempotency_key.map(|k| {
            (
                publish.channel.clone(),
                publish.device.clone(),
                k.into_boxed_str(),
            )
        });
        if let Some(key) = &key
            && let Some(first) = self.idempotency.first(key)
        {
            return Effect::Duplicate {
                id: first.id,
                channel: publish.channel,
                recipients: first.recipients,
                reply,
            };
        }
        if !self.ledgers.open(&publish.channel, config.max_channels) {
            return Effect::Fail(
                Box::new(reply),
                Error::ChannelLimit {
                    limit: config.max_channels,
                },
            );
        }
        let id = self.seq.next(now);
        let event = Arc::new(Event {
            id,
            channel: publish.channel,
            kind: publish.kind.filter(|k| !k.is_message()),
            device: publish.device,
            time: now,
            payload: publish.payload,
            idempotency_key: key.as_ref().map(|(_, _, k)| k.clone()),
        });
        if let Some(key) = key {
            self.idempotency.remember(key, id, now);
        }
        records.push(Record::Event(event.clone()));
        Effect::Publish { event, reply }
    }

    /// Builds the event's receipts with its audience (members of matching
    /// subscriptions who joined before it) and queues it to every matching
    /// stream once.
    pub(in crate::hub) fn fan_out(
        &mut self,
        event: Arc<Event>,
        counters: &Counters,
    ) -> Arc<EventReceipts> {
        let id = event.id;
        let watchers = self.ledgers.watchers_for(&event.channel);
        let mut audience: Vec<DeviceId> = Vec::new();
        let mut slow: Vec<u64> = Vec::new();
        let receipts = {
            let subs = self.memberships.matching(&event.channel);
            let several = subs.len() > 1;
            let mut slots: HashMap<&DeviceId, u32> = HashMap::new();
            let mut targets: Vec<(&StreamTx, u32)> = Vec::new();
            for sub in &subs {
                for (device, member) in &sub.members {
                    if !member.is_member || member.since >= id {
                        continue;
                    }
                    let slot = if several {
                        *slots.entry(device).or_insert_with(|| {
                            audience.push(device.clone());
                            (audience.len() - 1) as u32
                        })
                    } else {
                        audience.push(device.clone());
                        (audience.len() - 1) as u32
                    };
                    targets.extend(member.streams.iter().map(|s| (s, slot)));
                }
                targets.extend(sub.anonymous.iter().map(|s| (s, NO_SLOT)));
            }
            let receipts = Arc::new(EventReceipts::new(event, audience.into(), watchers));
            // One cache of encodings for this fan-out's streams: freed with
            // the last delivery that holds it, not kept with the event.
            let frames = Arc::new(FrameCache::default());
            for (stream, slot) in targets {
                // A stream whose token lost this channel's grant never gets
                // it queued (and its device is not marked delivered).
                if !stream.shared.allows(&receipts.event.channel) {
                    continue;
                }
                if stream.shared.enqueued_upto.swap(id.0, Ordering::Relaxed) == id.0 {
                    continue;
                }
                let delivery = Delivery {
                    receipts: receipts.clone(),
                    slot,
                    frames: frames.clone(),
                };
                if stream.push(delivery) == Push::Full {
                    // Ended at once, not after what it has queued: writes
                    // after its cursor is folded below would be written
                    // yet missing from that cursor, and come again on
                    // resume (and a stalled client would pin its queue
                    // until --send-timeout for nothing).
                    stream.shared.revoke();
                    slow.push(stream.shared.id);
                }
            }
            receipts
        };
        for stream in slow {
            // Which device, and where it will resume from, so that a
            // client's report of a closed stream can be matched to this line.
            let open = self.memberships.stream(stream);
            tracing::warn!(
                stream,
                device = open.and_then(|o| o.device.as_ref()).map(DeviceId::as_str),
                event = id.0,
                delivered_upto = open.map(|o| o.shared.delivered_upto().0),
                "stream closed: its queue is full (the device resumes later)"
            );
            counters.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            self.close_stream(stream, receipts.event.time);
        }
        self.memberships.track_unacked(&receipts.event.channel, id);
        self.ledgers.record(&receipts);
        self.notices.watch(&receipts);
        self.idempotency
            .settle(&receipts.event, receipts.audience().len());
        self.head = id;
        receipts
    }
}

impl State {
    /// Fans the durable event out and answers its publisher.
    pub(in crate::hub) fn apply_publish(
        &mut self,
        event: Arc<Event>,
        reply: Reply<Published>,
        counters: &Counters,
    ) {
        let receipts = self.fan_out(event, counters);
        counters.published.fetch_add(1, Ordering::Relaxed);
        let published = Published {
            id: receipts.id(),
            channel: receipts.event.channel.clone(),
            recipients: receipts.audience().len(),
            duplicate: false,
            receipts: Some(receipts),
        };
        // Per event: DEBUG (issue 18.2); pere_http::server::activity sums
        // them up at INFO.
        tracing::debug!(
            channel = %published.channel,
            id = %published.id,
            recipients = published.recipients,
            "published"
        );
        let _ = reply.send(Ok(published));
    }

    /// Answers a retried publish with the first one's result.
    pub(in crate::hub) fn apply_duplicate(
        &mut self,
        id: EventId,
        channel: ChannelName,
        recipients: usize,
        reply: Reply<Published>,
    ) {
        let receipts = self.ledgers.event(&id).cloned();
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
}
