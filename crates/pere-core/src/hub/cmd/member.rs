//! `Hub::remove_member`: an operator ends a membership.

use super::tick::journal_cursor;
use crate::error::Error;
use crate::event::{EventId, Timestamp};
use crate::hub::command::{Effect, Reply};
use crate::hub::state::{State, WrittenReplay};
use crate::log::Record;
use crate::name::{ChannelName, DeviceId, Pattern};

/// `Hub::remove_member`.
pub(in crate::hub) struct RemoveMemberCmd {
    pub(in crate::hub) subscription: Pattern,
    pub(in crate::hub) device: DeviceId,
    pub(in crate::hub) reply: Reply<()>,
}

impl State {
    /// Ends a membership and closes its streams.
    pub(in crate::hub) fn prepare_remove_member(
        &mut self,
        cmd: RemoveMemberCmd,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) -> Effect {
        let RemoveMemberCmd {
            subscription,
            device,
            reply,
        } = cmd;
        match self.memberships.remove_member(&subscription, &device) {
            // Dropping the member drops its streams' senders: their bodies end.
            Some((mut member, replayed)) => {
                // What its streams were written since the last tick: after
                // a restart its receipts show those deliveries (a cluster
                // node's cursors go through the log instead).
                if !self.cluster {
                    records.extend(journal_cursor(&subscription, &device, &mut member, now));
                    records.extend(replayed.into_iter().map(WrittenReplay::into_record));
                }
                records.push(Record::Left {
                    subscription,
                    device,
                    at: now,
                });
                Effect::Done(reply)
            }
            None => Effect::Fail(
                Box::new(reply),
                Error::UnknownMember {
                    subscription: subscription.to_string(),
                    device: device.to_string(),
                },
            ),
        }
    }
}

impl State {
    /// A failover lost events of `channel` from `first` to `upto` (a
    /// cluster's log says so, docs/PROTOCOL.md §10): a resume from below
    /// `upto` there is a gap, and an acknowledging member that may have
    /// been owed them (a member before the newest) is told when it comes
    /// back, once, as of events retention dropped before it acknowledged.
    pub(in crate::hub) fn note_failover_loss(
        &mut self,
        channel: ChannelName,
        first: EventId,
        upto: EventId,
    ) {
        for (pattern, sub) in self.memberships.subs_mut() {
            if !pattern.matches(&channel) {
                continue;
            }
            for member in sub.members.values_mut() {
                if member.acknowledges() && member.since < upto {
                    member.lost_from = Some(member.lost_from.map_or(first, |l| l.min(first)));
                }
            }
        }
        let lost = self.failover_losses.entry(channel).or_insert((first, upto));
        *lost = (lost.0.min(first), lost.1.max(upto));
    }
}
