//! What one node tells the others through the shared log: the commands that
//! change the shared state, as data. Every node applies the same entries in
//! the same order with the entry's time, so every node computes the same
//! ids, audiences, receipts, memberships and retention.

use serde::{Deserialize, Serialize};

use crate::auth::{Grants, TokenHash};
use crate::event::{EventId, Timestamp};
use crate::hub::state::NodeStreams;
use crate::name::{ChannelName, DeviceId, EventType, Pattern};

/// One command of a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(in crate::hub) enum Wire {
    /// `Hub::publish`.
    Publish {
        channel: ChannelName,
        payload: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<EventType>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idem: Option<String>,
    },
    /// `Hub::ack`.
    Ack {
        subscription: Pattern,
        device: DeviceId,
        id: u64,
        status: String,
    },
    /// A stream opened on the entry's node.
    Subscribe {
        patterns: Vec<Pattern>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_event_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<[u8; 32]>,
        /// The revocation key of the JWT it was opened with, if it has a
        /// `jti`: the other nodes do not hold the JWT, and check this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<[u8; 32]>,
    },
    /// A stream of the entry's node closed.
    Closed {
        subs: Vec<Pattern>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
        upto: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<i64>,
        /// What it had told before: it was written `(from, upto]` since.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<u64>,
    },
    /// Where a device's stream on the entry's node stands: what it was
    /// written (its receipts become `delivered` everywhere).
    Cursor {
        subscription: Pattern,
        device: DeviceId,
        cursor: u64,
        at: i64,
        /// What it had told before: it was written `(from, cursor]` since
        /// (entries of older nodes: from the member's cursor).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<u64>,
    },
    /// Events a device's stream on the entry's node was written by replay
    /// (a resume or a late join), below where live events start: the
    /// cursor does not tell them.
    Replayed {
        subs: Vec<Pattern>,
        device: DeviceId,
        ids: Vec<u64>,
        at: i64,
    },
    /// A token changed at run time.
    Token {
        token: [u8; 32],
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grants: Option<Grants>,
        /// The token is a JWT session's `jti` key: every node must know
        /// it as one to revoke it (it may never have seen the JWT).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        jti: bool,
    },
    /// `Hub::remove_member`.
    RemoveMember {
        subscription: Pattern,
        device: DeviceId,
    },
    /// The webhook took a notice.
    NoticeSent { id: u64, device: DeviceId },
    /// The periodic chores, at the entry's time (from the ticker node).
    Tick,
    /// A node stopped heartbeating: its streams are gone.
    NodeGone { node: String },
    /// A receipts stream on the entry's node follows `channel`: every node
    /// records its changes for a while (said again while it does).
    Watch { channel: ChannelName },
    /// The entry's node's streams, for the operator's views.
    Streams {
        #[serde(flatten)]
        streams: NodeStreams,
    },
    /// A failover lost events a node had applied (and answered `201`
    /// for): each channel with its first and newest lost ids, told by a
    /// node that saw them go, so that every node tells a client resuming
    /// from before them (docs/PROTOCOL.md §10). Older nodes skip it as
    /// unreadable.
    Lost { lost: Vec<(ChannelName, u64, u64)> },
}

/// A stream's end, as every node applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::hub) struct ClosedStream {
    pub(in crate::hub) subs: Vec<Pattern>,
    pub(in crate::hub) device: Option<DeviceId>,
    /// The last event written to it.
    pub(in crate::hub) upto: EventId,
    /// When.
    pub(in crate::hub) at: Option<Timestamp>,
    /// What its cursor had told before (see [`Wire::Closed`]).
    pub(in crate::hub) from: Option<EventId>,
}

impl ClosedStream {
    /// As it travels.
    pub(in crate::hub) fn into_wire(self) -> Wire {
        Wire::Closed {
            subs: self.subs,
            device: self.device,
            upto: self.upto.0,
            at: self.at.map(|t| t.0),
            from: self.from.map(|id| id.0),
        }
    }
}

impl Wire {
    /// Whether applying it publishes an event (the log counts events).
    pub(in crate::hub) fn is_event(&self) -> bool {
        matches!(self, Wire::Publish { .. })
    }
}

/// An entry's commands as bytes.
pub(in crate::hub) fn encode(wires: &[Wire]) -> Vec<u8> {
    // Serializing plain data with string keys cannot fail.
    serde_json::to_vec(wires).unwrap_or_default()
}

/// The commands of an entry.
///
/// # Errors
/// The bytes are not an entry of this version.
pub(in crate::hub) fn decode(bytes: &[u8]) -> Result<Vec<Wire>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Queues this node's streams report, replacing one not sent yet: each
/// says everything (the others keep only the latest), and while writes
/// are refused, one a second would pile up for the entry that follows.
pub(in crate::hub) fn tell_streams(outbox: &mut Vec<Wire>, streams: NodeStreams) {
    outbox.retain(|w| !matches!(w, Wire::Streams { .. }));
    outbox.push(Wire::Streams { streams });
}

/// A token hash as it travels.
pub(in crate::hub) fn token_bytes(token: &TokenHash) -> [u8; 32] {
    token.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_command_round_trips() {
        let wires = vec![
            Wire::Publish {
                channel: ChannelName::new("orders.eu").unwrap(),
                payload: "line 1\r\nline 2".into(),
                kind: Some(EventType::new("created").unwrap()),
                device: Some(DeviceId::new("backend").unwrap()),
                idem: Some("k-1".into()),
            },
            Wire::Ack {
                subscription: Pattern::new("orders.*").unwrap(),
                device: DeviceId::new("d").unwrap(),
                id: 17,
                status: "ok".into(),
            },
            Wire::Subscribe {
                patterns: vec![Pattern::new("a").unwrap(), Pattern::new("b.**").unwrap()],
                device: None,
                last_event_id: Some("12".into()),
                token: Some([7; 32]),
                jti: Some([8; 32]),
            },
            ClosedStream {
                subs: vec![Pattern::new("a").unwrap()],
                device: Some(DeviceId::new("d").unwrap()),
                upto: EventId(9),
                at: Some(Timestamp(5)),
                from: Some(EventId(4)),
            }
            .into_wire(),
            Wire::Tick,
            Wire::NodeGone { node: "n1".into() },
            Wire::Watch {
                channel: ChannelName::new("orders").unwrap(),
            },
            Wire::Streams {
                streams: NodeStreams {
                    anonymous: vec![(Pattern::new("a.*").unwrap(), 3)],
                    total: 5,
                },
            },
            Wire::Streams {
                streams: NodeStreams::default(),
            },
        ];
        assert_eq!(decode(&encode(&wires)).unwrap(), wires);
        assert!(decode(b"[{\"t\":\"unheard_of\"}]").is_err());
    }

    #[test]
    fn a_streams_report_waiting_to_go_out_is_replaced_not_piled_up() {
        let report = |total| NodeStreams {
            anonymous: Vec::new(),
            total,
        };
        let mut outbox = vec![Wire::Tick];
        for total in 1..=3 {
            tell_streams(&mut outbox, report(total));
        }
        outbox.push(Wire::NodeGone { node: "n".into() });
        tell_streams(&mut outbox, report(0));
        assert_eq!(
            outbox,
            vec![
                Wire::Tick,
                Wire::NodeGone { node: "n".into() },
                Wire::Streams { streams: report(0) },
            ]
        );
    }
}
