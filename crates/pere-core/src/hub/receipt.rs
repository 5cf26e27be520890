//! Receipts as a device posts them: checked against what the event's
//! ledger knows of the device, then recorded by the writer.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

use super::cluster::CURSOR_FLUSH;
use super::{AckCmd, Acked, Command, Hub};
use crate::config::MAX_STATUS_LEN;
use crate::error::{Error, Result};
use crate::event::{EventId, Timestamp};
use crate::ledger::EventReceipts;
use crate::log::EventStore;
use crate::name::{DeviceId, Pattern};

impl<S: EventStore> Hub<S> {
    /// Records `device`'s receipt for event `id`, named on `subscription`
    /// (the event's channel, or a pattern matching it).
    ///
    /// # Errors
    /// [`Error::UnknownEvent`] when no retained event has that id on a
    /// matching channel; [`Error::NotRecipient`] when the event was never
    /// written to `device` and it is not in its audience;
    /// [`Error::StatusTooLong`]; a store failure.
    pub async fn ack(
        &self,
        subscription: &Pattern,
        device: &DeviceId,
        id: EventId,
        status: &str,
    ) -> Result<Acked> {
        if status.len() > MAX_STATUS_LEN {
            return Err(Error::StatusTooLong {
                size: status.len(),
                limit: MAX_STATUS_LEN,
            });
        }
        let (checked, stuck) = self
            .settled(
                || self.check_recipient(subscription, device, id),
                |checked| checked.as_ref().err().map_or(Behind::No, behind),
            )
            .await;
        let (receipts, first) = checked.map_err(|err| unsettled(err, stuck))?;
        let acked = self
            .call(|reply| {
                Command::Ack(AckCmd {
                    subscription: subscription.clone(),
                    device: device.clone(),
                    id,
                    status: intern_status(status),
                    reply,
                })
            })
            .await?;
        if first {
            self.observe_ack(&receipts);
        }
        Ok(acked)
    }

    /// A device's first receipt of an event: publish → acked.
    fn observe_ack(&self, receipts: &EventReceipts) {
        self.inner
            .metrics
            .publish_to_acked
            .observe_between(receipts.event.time, Timestamp::now());
    }

    /// Records many receipts at once: all reach the writer together, so they
    /// share one journal write. One result per item, in order; an unknown id
    /// fails only its own item.
    pub async fn ack_batch(
        &self,
        items: Vec<(Pattern, DeviceId, EventId, String)>,
    ) -> Vec<Result<Acked>> {
        let mut pending = Vec::with_capacity(items.len());
        // A device's first receipt of an event, counted once even when the
        // batch holds several (they are all checked before any is applied).
        let mut firsts: HashSet<(EventId, DeviceId)> = HashSet::new();
        let (checked, stuck) = self
            .settled(
                || self.check_batch(&items),
                |checked| {
                    checked
                        .iter()
                        .filter_map(|c| c.as_ref().err())
                        .map(behind)
                        .max()
                        .unwrap_or(Behind::No)
                },
            )
            .await;
        let checked = checked
            .into_iter()
            .map(|c| c.map_err(|err| unsettled(err, stuck)));
        let refused = match self.inner.health().refusal() {
            Some(Error::StoreUnavailable(why)) => Some(why),
            Some(other) => Some(other.to_string()),
            None => None,
        };
        for ((subscription, device, id, status), checked) in items.into_iter().zip(checked) {
            if status.len() > MAX_STATUS_LEN {
                pending.push(Err(Error::StatusTooLong {
                    size: status.len(),
                    limit: MAX_STATUS_LEN,
                }));
                continue;
            }
            // The receipt itself first, as `ack` checks it: an unknown
            // event or a stranger is told so even while the store is out.
            let (receipts, first) = match checked {
                Ok(checked) => checked,
                Err(err) => {
                    pending.push(Err(err));
                    continue;
                }
            };
            if let Some(refused) = &refused {
                pending.push(Err(Error::StoreUnavailable(refused.clone())));
                continue;
            }
            let first = (first && firsts.insert((id, device.clone()))).then_some(receipts);
            let (reply, rx) = oneshot::channel();
            let sent = self.inner.commands.send(Command::Ack(AckCmd {
                subscription,
                device,
                id,
                status: intern_status(&status),
                reply,
            }));
            pending.push(match sent {
                Ok(()) => Ok((rx, first)),
                Err(_) => Err(Error::ShuttingDown),
            });
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Ok((rx, first)) => {
                    let acked = rx.await.unwrap_or(Err(Error::ShuttingDown));
                    if let (Ok(_), Some(receipts)) = (&acked, first) {
                        self.observe_ack(&receipts);
                    }
                    acked
                }
                Err(e) => Err(e),
            });
        }
        results
    }

    /// [`Hub::check_recipient`] for each receipt of a batch.
    fn check_batch(
        &self,
        items: &[(Pattern, DeviceId, EventId, String)],
    ) -> Vec<Result<(Arc<EventReceipts>, bool)>> {
        // One look at the state for the whole batch's events: the writer
        // holds it while it applies, and a lock per receipt contends with
        // it. (A cluster node still looks, per receipt, for a stream of
        // its own that got an event the ledger does not show yet.)
        let found = self.receipts_of(items.iter().map(|(sub, _, id, _)| (sub, *id)));
        // And one look at each event's receipts per run of receipts for it.
        let mut standings = Vec::with_capacity(found.len());
        let mut at = 0;
        while at < found.len() {
            let end = match &found[at] {
                Ok(receipts) => {
                    let end = found[at..]
                        .iter()
                        .position(|f| !f.as_ref().is_ok_and(|r| Arc::ptr_eq(r, receipts)))
                        .map_or(found.len(), |n| at + n);
                    standings.extend(receipts.standings(items[at..end].iter().map(|i| &i.1)));
                    end
                }
                Err(_) => {
                    standings.push(None);
                    at + 1
                }
            };
            at = end;
        }
        debug_assert_eq!(standings.len(), items.len());
        found
            .into_iter()
            .zip(standings)
            .zip(items)
            .map(|((found, standing), (_, device, _, _))| {
                found.and_then(|r| self.check_standing(r, standing, device))
            })
            .collect()
    }

    /// Checks receipts with `check` and, on a cluster node whose answer
    /// may come from behind the others (`behind` of what it found), checks
    /// again once caught up with the log. A device's receipt may reach
    /// another node than the stream that wrote it the event, a moment
    /// later: that node may not have applied the event yet, nor heard
    /// (every [`CURSOR_FLUSH`]) that the stream wrote it to the device.
    ///
    /// With what it found, whether it may still be behind: it could not
    /// catch up (the log does not answer, or this node lags by seconds).
    async fn settled<T>(&self, check: impl Fn() -> T, behind: impl Fn(&T) -> Behind) -> (T, bool) {
        let mut checked = check();
        if !self.inner.cluster {
            return (checked, false);
        }
        let give_up = tokio::time::Instant::now() + WRITES_WAIT;
        let mut again = false;
        loop {
            match behind(&checked) {
                Behind::No => break,
                Behind::Entries if again => break,
                Behind::Writes if again && tokio::time::Instant::now() >= give_up => break,
                _ => {}
            }
            if again {
                // Another node's writes reach the log within a flush.
                tokio::time::sleep(CURSOR_FLUSH).await;
            }
            again = true;
            if !self.caught_up().await {
                return (checked, true);
            }
            checked = check();
        }
        (checked, false)
    }

    /// On a cluster node, waits until this node has applied every entry
    /// the shared log held when called, so that what it reads next shows
    /// what any node answered before (docs/PROTOCOL.md §10). True at once
    /// on a single node; false when the log is failing or did not tell
    /// within 2 s (what this node reads may then be behind).
    pub async fn caught_up(&self) -> bool {
        let Some(barrier) = &self.inner.barrier else {
            return true;
        };
        // A log that refuses, or a writer that stopped, will not catch up.
        if self.inner.health().refusal().is_some()
            || self.inner.failed.borrow().is_some()
            || self.is_closing()
        {
            return false;
        }
        barrier.wait().await
    }

    /// Refuses a receipt from a device the event was never written to and
    /// whose audience it is not in (issue 18: a typo in a device id must not
    /// turn it into a recipient). Checked before the writer sees the
    /// receipt: [`EventReceipts::may_ack`] never turns false again, and an
    /// event that is gone by then is refused by the writer anyway. With the
    /// receipts, whether this is the device's first receipt of the event.
    fn check_recipient(
        &self,
        subscription: &Pattern,
        device: &DeviceId,
        id: EventId,
    ) -> Result<(Arc<EventReceipts>, bool)> {
        let receipts = self.receipts(subscription, id)?;
        let standing = receipts.standing(device);
        self.check_standing(receipts, standing, device)
    }

    /// [`Hub::check_recipient`] once the event's receipts are found and
    /// the device's [standing](EventReceipts::standing) in them read.
    fn check_standing(
        &self,
        receipts: Arc<EventReceipts>,
        standing: Option<bool>,
        device: &DeviceId,
    ) -> Result<(Arc<EventReceipts>, bool)> {
        match standing {
            Some(acked) => Ok((receipts, !acked)),
            None if self.written_here(&receipts, device) => {
                let first = !receipts.is_acked_by(device);
                Ok((receipts, first))
            }
            None => Err(Error::NotRecipient {
                id: receipts.id().to_string(),
                device: device.to_string(),
            }),
        }
    }

    /// On a cluster node, whether one of `device`'s streams here was
    /// written past the event on its channel: the ledger learns of this
    /// node's writes from the log too (`Subscription::marks`), so a device
    /// that got the event by replay a moment ago is not in it yet.
    fn written_here(&self, receipts: &EventReceipts, device: &DeviceId) -> bool {
        let channel = &receipts.event.channel;
        self.inner.cluster
            && self.inner.state().memberships.streams().any(|open| {
                open.device.as_ref() == Some(device)
                    && open.shared.delivered_upto() >= receipts.id()
                    && open.subs.iter().any(|p| p.matches(channel))
            })
    }
}

/// Shares the `Arc<str>` of the common status so that a million `ok`
/// receipts cost one allocation.
fn intern_status(status: &str) -> Arc<str> {
    static OK: OnceLock<Arc<str>> = OnceLock::new();
    if status == "ok" {
        OK.get_or_init(|| Arc::from("ok")).clone()
    } else {
        Arc::from(status)
    }
}

/// How long a receipt from a device the event seems not to have reached
/// waits for another node to say it did (a few of its flushes).
const WRITES_WAIT: Duration = CURSOR_FLUSH.saturating_mul(5);

/// How a failed check may come from a cluster node behind the others.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Behind {
    No,
    /// The event may be in an entry not applied here yet.
    Entries,
    /// Another node may have written the event to the device and not said
    /// so in the log yet.
    Writes,
}

fn behind(err: &Error) -> Behind {
    match err {
        Error::UnknownEvent { .. } => Behind::Entries,
        Error::NotRecipient { .. } => Behind::Writes,
        _ => Behind::No,
    }
}

/// A refusal a node that could not catch up with its cluster's log cannot
/// stand by: the event or the delivery may be in what it has not applied.
/// The client is told to retry (PROTOCOL.md §10), not that the event is
/// unknown.
fn unsettled(err: Error, stuck: bool) -> Error {
    if stuck && behind(&err) != Behind::No {
        Error::StoreUnavailable(format!(
            "this node could not catch up with the cluster log to check the receipt ({err}); retry"
        ))
    } else {
        err
    }
}
