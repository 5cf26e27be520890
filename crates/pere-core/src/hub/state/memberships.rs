//! Who listens: subscriptions by pattern with their members, and the
//! streams open on this node. One structure because a stream lives in
//! both places (its sender in its subscriptions, its cursor and token in
//! `streams`) and must leave both at once; and because the wildcard list
//! must name exactly the wildcard subscriptions there are, which only
//! holds if every subscription comes and goes through here.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::auth::TokenHash;
use crate::event::{EventId, Timestamp};
use crate::hub::cluster::wire::{ClosedStream, Wire};
use crate::ledger::EventReceipts;
use crate::log::Record;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::{Member, NodeCounts, Op, StreamShared, StreamTx};

use super::wild::WildIndex;

/// One subscription (a channel or a pattern): its members, and the streams
/// opened on it without a device.
#[derive(Debug, Default)]
pub(in crate::hub) struct Sub {
    /// Devices known here: members, and devices only seen acknowledging.
    /// Boxed: a member is ~250 bytes, and a hash table keeps a third or
    /// more of its slots empty; inline, each empty slot cost a member's
    /// size (idle streams 3.63 → 3.49 KiB each, fan-out unchanged:
    /// benches/RESULTS.md).
    pub(in crate::hub) members: HashMap<DeviceId, Box<Member>>,
    /// Streams opened without a device (in no audience).
    pub(in crate::hub) anonymous: Vec<StreamTx>,
    /// At least the number of acknowledging members (recounted by each
    /// maintenance tick): while 0, a publish skips tracking `unacked`.
    pub(in crate::hub) ackers: usize,
}

impl Sub {
    /// Its open streams on every node, members' and anonymous ones.
    pub(in crate::hub) fn open_streams(&self) -> usize {
        self.anonymous.len()
            + self
                .members
                .values()
                .map(|m| m.connections())
                .sum::<usize>()
    }
}

/// A stream open on this node, as the writer knows it.
#[derive(Debug)]
pub(in crate::hub) struct OpenStream {
    /// The subscriptions it was opened on.
    pub(in crate::hub) subs: Vec<Pattern>,
    /// Its device, if it named one.
    pub(in crate::hub) device: Option<DeviceId>,
    /// The token it was opened with: a change of that token re-checks it.
    pub(in crate::hub) token: Option<TokenHash>,
    /// What the writer shares with the stream's body: queue, counters.
    pub(in crate::hub) shared: Arc<StreamShared>,
    /// The cursor this node last sent its cluster for it.
    pub(in crate::hub) sent_upto: EventId,
    /// Whether one of its subscriptions was removed while it stayed open
    /// for the others: its deliveries are then limited to `subs`, a limit
    /// a change of its token's grants must keep.
    pub(in crate::hub) narrowed: bool,
}

/// Subscriptions, their members, the open streams, and what closed
/// streams delivered.
#[derive(Debug, Default)]
pub(in crate::hub) struct Memberships {
    /// Subscriptions by pattern. Private with `wild`: one is only added by
    /// [`Memberships::sub_entry`] and dropped by [`Memberships::drop_empty`],
    /// which keep the two in step.
    subs: HashMap<Pattern, Sub>,
    /// Subscriptions with wildcards, for matching channels against.
    wild: WildIndex,
    /// Streams open on this node, by id; private so that a stream only
    /// comes and goes with its senders in `subs`.
    streams: HashMap<u64, OpenStream>,
    /// What this node's streams are to be written by replay, by stream,
    /// until the log is told (on a cluster node, see
    /// [`Memberships::unsent_cursors`]) or the journal (on a single node,
    /// only the events from before the device joined, see
    /// [`Memberships::written_replays`]) that they were: few streams have
    /// any.
    replays: HashMap<u64, Vec<Arc<EventReceipts>>>,
    /// Device streams the hub ended (revoked) whose owner had not dropped
    /// them yet: a write it had begun when the cursor was taken lands
    /// after it, and is folded when the owner drops the stream (see
    /// [`Ended`]).
    ended: HashMap<u64, Ended>,
    /// Counted deliveries of streams that closed.
    delivered_closed: u64,
    /// Counted redeliveries of streams that closed.
    redelivered_closed: u64,
    /// The streams other nodes of a cluster last said they hold (what the
    /// replicated members do not tell: anonymous streams, and how many
    /// streams in all).
    others: HashMap<Arc<str>, NodeStreams>,
}

/// A node's streams as it tells its cluster: anonymous ones per
/// subscription, and the number of streams in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::hub) struct NodeStreams {
    /// By pattern, those with any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::hub) anonymous: Vec<(Pattern, u32)>,
    pub(in crate::hub) total: u32,
}

impl Memberships {
    /// The subscription on `pattern`, if any.
    pub(in crate::hub) fn sub(&self, pattern: &Pattern) -> Option<&Sub> {
        self.subs.get(pattern)
    }

    /// The subscription on `pattern`, if any, to change its members.
    pub(in crate::hub) fn sub_mut(&mut self, pattern: &Pattern) -> Option<&mut Sub> {
        self.subs.get_mut(pattern)
    }

    /// The subscription on `pattern`, opened if there is none yet.
    pub(in crate::hub) fn sub_entry(&mut self, pattern: &Pattern) -> &mut Sub {
        match self.subs.entry(pattern.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if pattern.exact().is_none() {
                    self.wild.insert(pattern.clone());
                }
                e.insert(Sub::default())
            }
        }
    }

    /// Every subscription.
    pub(in crate::hub) fn subs(&self) -> impl Iterator<Item = (&Pattern, &Sub)> {
        self.subs.iter()
    }

    /// Every subscription, to change their members (not which there are).
    pub(in crate::hub) fn subs_mut(&mut self) -> impl Iterator<Item = (&Pattern, &mut Sub)> {
        self.subs.iter_mut()
    }

    /// The wildcard subscriptions' patterns.
    pub(in crate::hub) fn wild(&self) -> &WildIndex {
        &self.wild
    }

    /// The stream `id`, if it is open on this node.
    pub(in crate::hub) fn stream(&self, id: u64) -> Option<&OpenStream> {
        self.streams.get(&id)
    }

    /// The streams open on this node.
    pub(in crate::hub) fn streams(&self) -> impl Iterator<Item = &OpenStream> {
        self.streams.values()
    }

    /// How many streams are open on this node.
    pub(in crate::hub) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// What this node's streams were written since it last told its
    /// cluster: one cursor per stream and subscription, each stream's
    /// `sent_upto` moved on so it is told once.
    pub(in crate::hub) fn unsent_cursors(&mut self) -> Vec<Wire> {
        let mut wires = Vec::new();
        for open in self.streams.values_mut() {
            let Some(device) = &open.device else {
                continue;
            };
            // Read once: the stream goes on writing meanwhile, and its
            // replay and its cursor must tell the same writes.
            let upto = open.shared.delivered_upto();
            // What it was replayed first: the cursor below is past it.
            wires.extend(
                written_replay(&mut self.replays, open, upto).map(WrittenReplay::into_wire),
            );
            if upto <= open.sent_upto {
                continue;
            }
            let from = std::mem::replace(&mut open.sent_upto, upto);
            let at = open.shared.delivered_at().map_or(0, |t| t.0);
            for pattern in &open.subs {
                wires.push(Wire::Cursor {
                    subscription: pattern.clone(),
                    device: device.clone(),
                    cursor: upto.0,
                    at,
                    from: Some(from.0),
                });
            }
        }
        wires
    }

    /// On a single node, what stream `id` was written of its replay since
    /// last asked, as a journal record.
    pub(in crate::hub) fn written_replay_of(&mut self, id: u64) -> Option<Record> {
        let open = self.streams.get(&id)?;
        let upto = open.shared.delivered_upto();
        written_replay(&mut self.replays, open, upto).map(WrittenReplay::into_record)
    }

    /// On a single node, what its streams were written of their replays
    /// since last asked, as journal records.
    pub(in crate::hub) fn written_replays(&mut self) -> Vec<Record> {
        if self.replays.is_empty() {
            return Vec::new();
        }
        let ids: Vec<u64> = self.replays.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| {
                let open = self.streams.get(&id)?;
                let upto = open.shared.delivered_upto();
                written_replay(&mut self.replays, open, upto)
            })
            .map(WrittenReplay::into_record)
            .collect()
    }

    /// `device`'s entry on `pattern`, if it has one.
    pub(in crate::hub) fn member_mut(
        &mut self,
        pattern: &Pattern,
        device: &DeviceId,
    ) -> Option<&mut Member> {
        self.subs
            .get_mut(pattern)
            .and_then(|sub| sub.members.get_mut(device).map(|m| &mut **m))
    }

    /// This node's streams, to tell the others.
    pub(in crate::hub) fn local_streams(&self) -> NodeStreams {
        let mut anonymous: Vec<(Pattern, u32)> = self
            .subs
            .iter()
            .filter(|(_, sub)| !sub.anonymous.is_empty())
            .map(|(p, sub)| {
                (
                    p.clone(),
                    u32::try_from(sub.anonymous.len()).unwrap_or(u32::MAX),
                )
            })
            .collect();
        anonymous.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        NodeStreams {
            anonymous,
            total: u32::try_from(self.streams.len()).unwrap_or(u32::MAX),
        }
    }

    /// What another node said of its streams (`None`: it is gone).
    pub(in crate::hub) fn set_others(&mut self, node: &Arc<str>, streams: Option<NodeStreams>) {
        match streams {
            Some(streams) => {
                self.others.insert(node.clone(), streams);
            }
            None => {
                self.others.remove(node);
            }
        }
    }

    /// The other nodes' streams: anonymous ones by pattern, and the total.
    pub(in crate::hub) fn elsewhere(&self) -> (HashMap<&Pattern, usize>, usize) {
        let mut anonymous: HashMap<&Pattern, usize> = HashMap::new();
        let mut total = 0;
        for streams in self.others.values() {
            total += streams.total as usize;
            for (p, n) in &streams.anonymous {
                *anonymous.entry(p).or_default() += *n as usize;
            }
        }
        (anonymous, total)
    }

    /// Drops subscriptions nobody is in any more (and so their wildcards).
    pub(in crate::hub) fn drop_empty(&mut self) {
        let Self { subs, wild, .. } = self;
        subs.retain(|pattern, sub| {
            let keep = !sub.members.is_empty() || !sub.anonymous.is_empty();
            if !keep && pattern.exact().is_none() {
                wild.remove(pattern);
            }
            keep
        });
    }

    /// Subscriptions matching `channel`: the exact one and the wildcards.
    pub(in crate::hub) fn matching<'a>(&'a self, channel: &ChannelName) -> Vec<&'a Sub> {
        let mut subs = Vec::new();
        if let Some(sub) = self.subs.get(channel.as_str()) {
            subs.push(sub);
        }
        self.wild.for_each_match(channel, |pattern| {
            if let Some(sub) = self.subs.get(pattern) {
                subs.push(sub);
            }
        });
        subs
    }

    /// Calls `f` on each subscription matching `channel` (the exact one and
    /// the wildcards), to change their members: a receipt must not cost a
    /// walk over every channel's subscription.
    pub(in crate::hub) fn for_matching_mut(
        &mut self,
        channel: &ChannelName,
        mut f: impl FnMut(&Pattern, &mut Sub),
    ) {
        let Self { subs, wild, .. } = self;
        if let Some((pattern, _)) = subs.get_key_value(channel.as_str()) {
            let pattern = pattern.clone();
            if let Some(sub) = subs.get_mut(channel.as_str()) {
                f(&pattern, sub);
            }
        }
        wild.for_each_match(channel, |pattern| {
            if let Some(sub) = subs.get_mut(pattern) {
                f(pattern, sub);
            }
        });
    }

    /// Adds a new event to `unacked` of every acknowledging member in its
    /// audience, online or not: it is theirs until they acknowledge it.
    pub(in crate::hub) fn track_unacked(&mut self, channel: &ChannelName, id: EventId) {
        let Self { subs, wild, .. } = self;
        let track = |sub: &mut Sub| {
            if sub.ackers == 0 {
                return;
            }
            for member in sub.members.values_mut() {
                if member.is_member && member.since < id && member.acknowledges() {
                    member.unacked.push_back(id);
                }
            }
        };
        if let Some(sub) = subs.get_mut(channel.as_str()) {
            track(sub);
        }
        wild.for_each_match(channel, |pattern| {
            if let Some(sub) = subs.get_mut(pattern) {
                track(sub);
            }
        });
    }

    /// Registers a stream opened on `node`: its sender joins each of its
    /// subscriptions (its device's membership there, or the anonymous
    /// ones), its record joins `streams`; [`Memberships::close_local`]
    /// takes both out again. A subscription gone since the stream was
    /// prepared (an empty one a tick of the same batch dropped) is skipped.
    pub(in crate::hub) fn open_stream(
        &mut self,
        mut open: OpenStream,
        stream: &StreamTx,
        node: &Arc<str>,
        last_event_id: &Option<String>,
        now: Timestamp,
    ) {
        // Only the subscriptions it joined stay on its record: its end
        // detaches from those, and must not detach a member created later
        // (a membership removed in the same batch, then opened again).
        open.subs.retain(|pattern| {
            let Some(sub) = self.subs.get_mut(pattern) else {
                return false;
            };
            match &open.device {
                Some(device) => {
                    let Some(member) = sub.members.get_mut(device) else {
                        return false;
                    };
                    member.streams.push(stream.clone());
                    member.attach(node, now);
                    member.last_event_id = last_event_id.clone();
                }
                None => sub.anonymous.push(stream.clone()),
            }
            true
        });
        if open.subs.is_empty() {
            // Nothing feeds it: it ends, without writing its replay to a
            // device that is no member.
            open.shared.revoke();
        }
        self.streams.insert(open.shared.id, open);
    }

    /// Ends `device`'s membership of `pattern`. Dropping the member
    /// returned drops its streams' senders here: a stream no other
    /// membership feeds ends (it leaves `streams`, its counts kept); one
    /// that another subscription also feeds carries on for that one.
    pub(in crate::hub) fn remove_member(
        &mut self,
        pattern: &Pattern,
        device: &DeviceId,
    ) -> Option<(Member, Vec<WrittenReplay>)> {
        let member = self
            .subs
            .get_mut(pattern)
            .and_then(|sub| sub.members.remove(device))?;
        let mut replayed = Vec::new();
        for stream in &member.streams {
            let id = stream.shared.id;
            let Some(open) = self.streams.get_mut(&id) else {
                continue;
            };
            // A stream that another membership feeds stays open for it
            // (and closes through `close_local`, which takes it out of
            // that one); one fed by this membership alone ends with the
            // senders dropped here.
            open.subs.retain(|p| p != pattern);
            if !open.subs.is_empty() {
                open.shared.narrow_to(&open.subs);
                open.narrowed = true;
            } else {
                // Nothing more is written, replay included: a write after
                // this would mark the removed device delivered again.
                open.shared.revoke();
                let upto = open.shared.delivered_upto();
                replayed.extend(written_replay(&mut self.replays, open, upto));
                self.replays.remove(&id);
                self.streams.remove(&id);
                self.fold_counts(&stream.shared);
            }
        }
        Some((*member, replayed))
    }

    /// The events stream `id` is to be written by replay (in id order),
    /// for the log or the journal to be told as it is written.
    pub(in crate::hub) fn expect_replay(&mut self, id: u64, replay: Vec<Arc<EventReceipts>>) {
        if !replay.is_empty() {
            self.replays.insert(id, replay);
        }
    }

    /// The part of a stream's end that only this node knows: its queue
    /// senders (taken out of its subscriptions) and counters; and the last
    /// of its replay it was written (what it was not written by then never
    /// will be), to tell before its end.
    pub(in crate::hub) fn close_local(
        &mut self,
        id: u64,
    ) -> Option<(ClosedStream, Option<WrittenReplay>)> {
        let open = self.streams.remove(&id)?;
        let upto = open.shared.delivered_upto();
        if open.shared.is_revoked()
            && let Some(device) = &open.device
        {
            self.ended.insert(
                id,
                Ended {
                    shared: open.shared.clone(),
                    subs: open.subs.clone(),
                    device: device.clone(),
                    upto,
                },
            );
        }
        let replayed = written_replay(&mut self.replays, &open, upto);
        self.replays.remove(&id);
        self.fold_counts(&open.shared);
        for pattern in &open.subs {
            let Some(sub) = self.subs.get_mut(pattern) else {
                continue;
            };
            match &open.device {
                None => {
                    if let Some(i) = sub.anonymous.iter().position(|s| s.shared.id == id) {
                        sub.anonymous.swap_remove(i);
                    }
                }
                Some(device) => {
                    if let Some(member) = sub.members.get_mut(device)
                        && let Some(i) = member.streams.iter().position(|s| s.shared.id == id)
                    {
                        member.streams.swap_remove(i);
                    }
                }
            }
        }
        let closed = ClosedStream {
            subs: open.subs,
            device: open.device,
            upto,
            at: open.shared.delivered_at(),
            from: Some(open.sent_upto),
        };
        Some((closed, replayed))
    }

    /// A stream the hub ended, now dropped by its owner: what it wrote
    /// after its cursor was taken is for the caller to fold.
    pub(in crate::hub) fn take_ended(&mut self, id: u64) -> Option<Ended> {
        self.ended.remove(&id)
    }

    /// Ends every stream `node` had (it is gone). Returns the memberships
    /// that went offline with it, sorted, for their presence records.
    pub(in crate::hub) fn detach_node(
        &mut self,
        node: &Arc<str>,
        now: Timestamp,
    ) -> Vec<(Pattern, DeviceId)> {
        let mut offline = Vec::new();
        for (pattern, sub) in &mut self.subs {
            for (device, member) in &mut sub.members {
                if member.detach(node, true, now) {
                    offline.push((pattern.clone(), device.clone()));
                }
            }
        }
        offline.sort();
        offline
    }

    /// Whether any member counts a stream of `node` open.
    pub(in crate::hub) fn held_by(&self, node: &str) -> bool {
        self.subs.values().any(|sub| {
            sub.members
                .values()
                .any(|m| m.nodes.iter().any(|(n, _)| n == node))
        })
    }

    /// What streams delivered and redelivered, closed ones and open ones.
    pub(in crate::hub) fn delivery_counts(&self) -> (u64, u64) {
        let (mut delivered, mut redelivered) = (self.delivered_closed, self.redelivered_closed);
        for stream in self.streams.values() {
            delivered += stream.shared.delivered.load(Ordering::Relaxed);
            redelivered += stream.shared.redelivered.load(Ordering::Relaxed);
        }
        (delivered, redelivered)
    }

    /// Adds a closed stream's counters to the hub's: called wherever a
    /// stream leaves `streams`, or its deliveries would vanish from the
    /// totals.
    fn fold_counts(&mut self, shared: &StreamShared) {
        self.delivered_closed += shared.delivered.load(Ordering::Relaxed);
        self.redelivered_closed += shared.redelivered.load(Ordering::Relaxed);
    }
}

/// The subscriptions and their members as plain data, for a cluster
/// snapshot: no stream (those are each node's own), but every node's
/// stream counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::hub) struct MembershipsParts {
    /// By pattern.
    subs: Vec<SubPart>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SubPart {
    pattern: Pattern,
    ackers: usize,
    /// By device.
    members: Vec<(DeviceId, MemberPart)>,
}

/// A [`Member`] without its streams on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MemberPart {
    is_member: bool,
    since: u64,
    joined_at: i64,
    cursor: u64,
    cursor_at: Option<i64>,
    journaled_cursor: u64,
    nodes: Vec<(String, u32)>,
    connected_at: Option<i64>,
    disconnected_at: Option<i64>,
    last_seen: i64,
    last_acked: Option<(u64, i64)>,
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    unacked: VecDeque<u64>,
    lost_from: Option<u64>,
    op: Op,
    op_at: i64,
    last_event_id: Option<String>,
}

impl MemberPart {
    fn of(m: &Member) -> Self {
        MemberPart {
            is_member: m.is_member,
            since: m.since.0,
            joined_at: m.joined_at.0,
            cursor: m.cursor.0,
            cursor_at: m.cursor_at.map(|t| t.0),
            journaled_cursor: m.journaled_cursor.0,
            nodes: m.nodes.iter().map(|(n, c)| (n.to_owned(), c)).collect(),
            connected_at: m.connected_at.map(|t| t.0),
            disconnected_at: m.disconnected_at.map(|t| t.0),
            last_seen: m.last_seen.0,
            last_acked: m.last_acked.map(|(id, at)| (id.0, at.0)),
            unacked: m.unacked.iter().map(|id| id.0).collect(),
            lost_from: m.lost_from.map(|id| id.0),
            op: m.op,
            op_at: m.op_at.0,
            last_event_id: m.last_event_id.clone(),
        }
    }

    fn member(self) -> Member {
        Member {
            is_member: self.is_member,
            since: EventId(self.since),
            joined_at: Timestamp(self.joined_at),
            cursor: EventId(self.cursor),
            cursor_at: self.cursor_at.map(Timestamp),
            journaled_cursor: EventId(self.journaled_cursor),
            streams: Vec::new(),
            nodes: NodeCounts::from_counts(self.nodes.into_iter().map(|(n, c)| (Arc::from(n), c))),
            connected_at: self.connected_at.map(Timestamp),
            disconnected_at: self.disconnected_at.map(Timestamp),
            last_seen: Timestamp(self.last_seen),
            last_acked: self.last_acked.map(|(id, at)| (EventId(id), Timestamp(at))),
            unacked: self.unacked.into_iter().map(EventId).collect(),
            lost_from: self.lost_from.map(EventId),
            op: self.op,
            op_at: Timestamp(self.op_at),
            last_event_id: self.last_event_id,
        }
    }
}

impl Memberships {
    /// Every subscription with members, as plain data in a stable order.
    pub(in crate::hub) fn parts(&self) -> MembershipsParts {
        let mut subs: Vec<SubPart> = self
            .subs
            .iter()
            .filter(|(_, sub)| !sub.members.is_empty())
            .map(|(pattern, sub)| {
                let mut members: Vec<(DeviceId, MemberPart)> = sub
                    .members
                    .iter()
                    .map(|(d, m)| (d.clone(), MemberPart::of(m)))
                    .collect();
                members.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                SubPart {
                    pattern: pattern.clone(),
                    ackers: sub.ackers,
                    members,
                }
            })
            .collect();
        subs.sort_unstable_by(|a, b| a.pattern.as_str().cmp(b.pattern.as_str()));
        MembershipsParts { subs }
    }

    /// Takes the subscriptions back from [`Memberships::parts`] (into
    /// empty memberships, before any stream opens).
    pub(in crate::hub) fn restore(&mut self, parts: MembershipsParts) {
        for part in parts.subs {
            let sub = self.sub_entry(&part.pattern);
            sub.ackers = part.ackers;
            sub.members = part
                .members
                .into_iter()
                .map(|(d, m)| (d, Box::new(m.member())))
                .collect();
        }
    }
}

/// What a device's stream was written of its replay since last asked.
#[derive(Debug)]
pub(in crate::hub) struct WrittenReplay {
    subs: Vec<Pattern>,
    device: DeviceId,
    ids: Vec<EventId>,
    at: Timestamp,
}

impl WrittenReplay {
    /// As the cluster's log carries it.
    pub(in crate::hub) fn into_wire(self) -> Wire {
        Wire::Replayed {
            subs: self.subs,
            device: self.device,
            ids: self.ids.iter().map(|id| id.0).collect(),
            at: self.at.0,
        }
    }

    /// As a single node journals it.
    pub(in crate::hub) fn into_record(self) -> Record {
        Record::Replayed {
            device: self.device,
            ids: self.ids,
            at: self.at,
        }
    }
}

/// A device stream the hub ended: the task writing it checks that it was
/// not ended before each event, and may have been past that check, with
/// one event, when the hub took its cursor.
#[derive(Debug)]
pub(in crate::hub) struct Ended {
    pub(in crate::hub) shared: Arc<StreamShared>,
    pub(in crate::hub) subs: Vec<Pattern>,
    pub(in crate::hub) device: DeviceId,
    /// The cursor folded when it was ended.
    pub(in crate::hub) upto: EventId,
}

/// The part of `open`'s replay (see [`Memberships::replays`]) it was
/// written since last asked, up to its last write `upto`. A replay is in
/// id order and before any live event, so what was written of it is what
/// is at or below the stream's last write, but for events its token
/// stopped granting, which it skipped.
fn written_replay(
    replays: &mut HashMap<u64, Vec<Arc<EventReceipts>>>,
    open: &OpenStream,
    upto: EventId,
) -> Option<WrittenReplay> {
    let device = open.device.as_ref()?;
    let replay = replays.get_mut(&open.shared.id)?;
    let passed = replay.partition_point(|r| r.id() <= upto);
    let ids: Vec<EventId> = replay
        .drain(..passed)
        .filter(|r| open.shared.allows(&r.event.channel))
        .map(|r| r.id())
        .collect();
    if replays[&open.shared.id].is_empty() {
        replays.remove(&open.shared.id);
    }
    if ids.is_empty() {
        return None;
    }
    Some(WrittenReplay {
        subs: open.subs.clone(),
        device: device.clone(),
        ids,
        at: open.shared.delivered_at().unwrap_or_default(),
    })
}
