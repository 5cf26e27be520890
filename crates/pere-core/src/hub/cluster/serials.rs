//! This node's numbers for its entries, so that an entry whose append got
//! no answer lands on the log at most once.
//!
//! When Redis hangs after taking an append, the node cannot know whether
//! it ran: Redis may run it on waking, long after the node gave up. What
//! the entry carried that only this node knew (a stream's end, what its
//! streams were written) must still reach the log, but sent again in a
//! later entry it was applied twice once the first copy ran too: a device
//! still streaming was counted offline. So each entry carries a serial
//! ([`SharedLog::append`]), and what an unanswered entry carried goes
//! again alone, under the same serial, before anything else: whichever
//! copy the log gets first lands, and the other adds nothing.
//!
//! The log keeps the serials of each process apart (Redis: one key per
//! engine), so they count from 1 and only this writer's entries are
//! compared with each other.

use bytes::Bytes;

use super::wire::{self, Wire};
use super::{SharedAppended, SharedLog, SharedLogError};

/// The serials of this node's entries.
pub(super) struct Serials {
    /// The next fresh serial.
    next: u64,
    /// An entry that got no answer: its serial, and what it carried that
    /// only this node knew.
    unsettled: Option<(u64, Vec<Wire>)>,
}

impl Serials {
    pub(super) fn new() -> Serials {
        Serials {
            next: 1,
            unsettled: None,
        }
    }

    /// Whether an unanswered entry's news still has to go.
    pub(super) fn unsettled(&self) -> bool {
        self.unsettled.is_some()
    }

    /// Sends what an unanswered entry carried, under its serial, until the
    /// log has it: `Ok(true)` once it has, `Ok(false)` when there was none.
    ///
    /// # Errors
    /// Why the log did not take it; it is kept for the next call, unless
    /// the error is [`SharedLogError::Unconfirmed`]: the log has it then
    /// (too few replicas yet), and what follows had better wait too.
    pub(super) async fn settle(&mut self, log: &dyn SharedLog) -> Result<bool, SharedLogError> {
        let Some((serial, wires)) = self.unsettled.take() else {
            return Ok(false);
        };
        // `again` or not, the log has it now: from the first try, or from
        // this one.
        match send(log, serial, &wires, true).await {
            Ok(_) => Ok(true),
            Err(err) => {
                if !matches!(err, SharedLogError::Unconfirmed { .. }) {
                    self.unsettled = Some((serial, wires));
                }
                Err(err)
            }
        }
    }

    /// Appends `wires` as a new entry. When the log cannot say whether it
    /// took it, what the entry carried that only this node knew (the
    /// wires `ours` marks, one flag each) is kept to
    /// [`settle`](Serials::settle).
    pub(super) async fn append(
        &mut self,
        log: &dyn SharedLog,
        wires: Vec<Wire>,
        ours: &[bool],
    ) -> Result<SharedAppended, SharedLogError> {
        let serial = self.next;
        self.next += 1;
        let result = send(log, serial, &wires, false).await;
        if let Err(err) = &result
            && !matches!(err, SharedLogError::Unconfirmed { .. })
        {
            let kept: Vec<Wire> = wires
                .into_iter()
                .zip(ours)
                .filter_map(|(w, ours)| ours.then_some(w))
                .collect();
            if !kept.is_empty() {
                self.unsettled = Some((serial, kept));
            }
        }
        result
    }
}

/// One entry under `serial` (`again`: sent before, with no answer).
async fn send(
    log: &dyn SharedLog,
    serial: u64,
    wires: &[Wire],
    again: bool,
) -> Result<SharedAppended, SharedLogError> {
    let blob = Bytes::from(wire::encode(wires));
    let events = u32::try_from(wires.iter().filter(|w| w.is_event()).count()).unwrap_or(u32::MAX);
    match log.append(blob, events, Some(serial)).await {
        // This writer alone numbers its entries, each serial once, and
        // sends nothing new while one is unsettled: a fresh serial the log
        // had, or a serial below the log's highest, means something else
        // writes under its name. Nothing was appended: refused, and said.
        Ok(appended) if appended.again && !again => Err(foreign(serial, None)),
        Err(SharedLogError::Stale { last }) => Err(foreign(serial, Some(last))),
        result => result,
    }
}

fn foreign(serial: u64, last: Option<u64>) -> SharedLogError {
    let err = SharedLogError::Other(format!(
        "the cluster log already holds this node's entry serial {serial}{}: is something else appending under this process's name?",
        last.map(|l| format!(" (up to {l})")).unwrap_or_default()
    ));
    tracing::error!(cause = %err, "an entry of this node was refused");
    err
}
