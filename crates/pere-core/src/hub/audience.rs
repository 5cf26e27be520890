//! Who is in a channel's audience, and through which subscription: the
//! operator's view across channels and patterns (`/admin/devices`,
//! `/admin/channels`). A device subscribed to `shop.*` is in the audience
//! of `shop.eu`'s events, so the views of `shop.eu` must show it (issue
//! 18.6). Read-only walks over the state, run by the writer between
//! batches like every view (see `view.rs`); nothing here changes it.

use std::collections::HashMap;

use super::state::State;
use super::{ChannelInfo, Hub};
use crate::error::Result;
use crate::log::EventStore;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::Presence;

/// One pattern subscription (`orders.*`), for `GET /admin/channels`: a
/// pattern is not a channel, but its members are in the audience of every
/// channel it matches, so operators need to see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternInfo {
    /// The pattern.
    pub pattern: Pattern,
    /// Known channels it matches.
    pub channels: usize,
    /// Retained events on those channels.
    pub events: usize,
    /// Devices that are members of it.
    pub members: usize,
    /// Those of them online.
    pub online: usize,
}

impl<S: EventStore> Hub<S> {
    /// The devices in the audience of `channel`'s events: those known on
    /// the channel itself, then the members of the patterns that match it,
    /// each with the subscription it is known through (issue 18.6:
    /// `/admin/channels` counted a `shop.*` member under `shop.eu`, whose
    /// device list did not show it). A device known several ways is listed
    /// once: by the channel itself, else by a pattern on which it is
    /// online, else by the first pattern. Sorted by device.
    ///
    /// # Errors
    /// [`crate::Error::ShuttingDown`].
    pub async fn devices_of_channel(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<(DeviceId, Pattern, Presence)>> {
        let channel = channel.clone();
        self.read_latest(move |state| state.devices_of_channel(&channel))
            .await
    }

    /// Every pattern subscription (`*`, `**`) with its members, sorted.
    ///
    /// # Errors
    /// [`crate::Error::ShuttingDown`].
    pub async fn patterns(&self) -> Result<Vec<PatternInfo>> {
        self.read_latest(State::patterns).await
    }

    /// [`Hub::channels`] and [`Hub::patterns`] read at the same moment, so
    /// a list of both agrees with itself.
    ///
    /// # Errors
    /// [`crate::Error::ShuttingDown`].
    pub async fn channels_and_patterns(&self) -> Result<(Vec<ChannelInfo>, Vec<PatternInfo>)> {
        self.read_latest(|state| (state.channels(), state.patterns()))
            .await
    }
}

impl State {
    /// The devices in the audience of `channel`'s events: those known on
    /// the channel itself, then the members of the patterns that match it,
    /// each with the subscription it is known through (issue 18.6:
    /// `/admin/channels` counted a `shop.*` member under `shop.eu`, whose
    /// device list did not show it). A device known several ways is listed
    /// once: by the channel itself, else by a pattern on which it is
    /// online, else by the first pattern. Sorted by device.
    fn devices_of_channel(&self, channel: &ChannelName) -> Vec<(DeviceId, Pattern, Presence)> {
        let state = self;
        let mut out: HashMap<DeviceId, (Pattern, Presence)> = HashMap::new();
        let exact = Pattern::from(channel.clone());
        if let Some(sub) = state.memberships.sub(&exact) {
            for (device, member) in &sub.members {
                out.insert(device.clone(), (exact.clone(), member.presence()));
            }
        }
        let mut patterns: Vec<&Pattern> = state.memberships.wild().matching(channel);
        patterns.sort();
        for pattern in patterns {
            let Some(sub) = state.memberships.sub(pattern) else {
                continue;
            };
            for (device, member) in sub.members.iter().filter(|(_, m)| m.is_member) {
                let presence = member.presence();
                match out.get(device) {
                    None => {
                        out.insert(device.clone(), (pattern.clone(), presence));
                    }
                    Some((known, p)) if known.exact().is_none() && !p.online && presence.online => {
                        out.insert(device.clone(), (pattern.clone(), presence));
                    }
                    Some(_) => {}
                }
            }
        }
        state.on_channel(channel, &mut out);
        let mut out: Vec<(DeviceId, Pattern, Presence)> =
            out.into_iter().map(|(d, (s, p))| (d, s, p)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Presence is per device per channel (docs/PROTOCOL.md §5), but a
    /// pattern member's cursor and last receipt are the pattern's: under
    /// `orders.eu` a device on `orders.*` would show an `orders.us` event.
    /// Its `last_delivered` and `last_acked` on `channel` are read from the
    /// channel's retained receipts instead, newest first; none when no
    /// retained event of the channel reached it.
    fn on_channel(&self, channel: &ChannelName, out: &mut HashMap<DeviceId, (Pattern, Presence)>) {
        let ledger = self.ledgers.channel(channel);
        let oldest = ledger.and_then(|l| l.receipts.front()).map(|r| r.id());
        // (device, its presence, still looking for a delivery, for a receipt)
        let mut open: Vec<(&DeviceId, &mut Presence, bool, bool)> = Vec::new();
        for (device, (via, presence)) in out.iter_mut() {
            if via.exact().is_some() {
                continue;
            }
            // The pattern's newest ids bound the channel's: a device whose
            // latest delivery or receipt is older than every retained
            // event has none here, and needs no walk.
            let delivered = presence
                .last_delivered
                .zip(oldest)
                .is_some_and(|(l, o)| l >= o);
            let acked = presence.last_acked.zip(oldest).is_some_and(|(l, o)| l >= o);
            presence.last_delivered = None;
            presence.last_delivered_at = None;
            presence.last_acked = None;
            presence.last_acked_at = None;
            if delivered || acked {
                open.push((device, presence, delivered, acked));
            }
        }
        let Some(ledger) = ledger else {
            return;
        };
        // Looked up by walking each event's audience: an index per event
        // (`receipt_of`) would stay behind on every event walked.
        let mut index: HashMap<&DeviceId, usize> =
            open.iter().enumerate().map(|(i, o)| (o.0, i)).collect();
        for receipts in ledger.receipts.iter().rev() {
            if index.is_empty() {
                break;
            }
            let id = receipts.id();
            for (device, receipt) in receipts.receipts_among(|d| index.contains_key(d)) {
                let Some(&i) = index.get(&device) else {
                    continue;
                };
                let (_, presence, delivered, acked) = &mut open[i];
                if *delivered && receipt.delivered_at.is_some() {
                    presence.last_delivered = Some(id);
                    presence.last_delivered_at = receipt.delivered_at;
                    *delivered = false;
                }
                if *acked && receipt.acked_at.is_some() {
                    presence.last_acked = Some(id);
                    presence.last_acked_at = receipt.acked_at;
                    *acked = false;
                }
                if !*delivered && !*acked {
                    index.remove(&device);
                }
            }
        }
    }

    /// Every pattern subscription (`*`, `**`) with its members, sorted.
    fn patterns(&self) -> Vec<PatternInfo> {
        let state = self;
        let wild = state.memberships.wild();
        // One pass over the channels, each asking the index which patterns
        // match it: not channels times patterns.
        let mut matched: HashMap<&Pattern, (usize, usize)> = HashMap::new();
        for (channel, ledger) in state.ledgers.channels() {
            if ledger.receipts.is_empty() {
                continue;
            }
            wild.for_each_match(channel, |pattern| {
                let (n, e) = matched.entry(pattern).or_default();
                *n += 1;
                *e += ledger.receipts.len();
            });
        }
        let mut out: Vec<PatternInfo> = wild
            .iter()
            .filter_map(|pattern| {
                let sub = state.memberships.sub(pattern)?;
                let (channels, events) = matched.get(pattern).copied().unwrap_or_default();
                let members = sub.members.values().filter(|m| m.is_member);
                Some(PatternInfo {
                    pattern: pattern.clone(),
                    channels,
                    events,
                    members: members.clone().count(),
                    online: members.filter(|m| m.connections() > 0).count(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        out
    }
}
