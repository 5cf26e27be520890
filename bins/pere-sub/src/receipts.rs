//! Receipts sent in the background and coalesced (issue 16: receipts as
//! cheap as deliveries).
//!
//! `follow` hands each receipt to [`Receipts::send`] and goes on reading the
//! stream. One task owns the receipt connection and sends in the manner of
//! Nagle's algorithm: a receipt goes at once when none is in flight; those
//! handed over while one is in flight wait for it, then go together as one
//! batch (`POST /feedback/:channel` with a JSON array, docs/PROTOCOL.md
//! §4.1). A burst of events costs a few receipt requests instead of one per
//! event, and the receipt of a lone event is not delayed.
//!
//! "At once" means after a few yields to the runtime (pere-sub runs on one
//! thread), so that `follow` can queue the receipts of the events it has
//! already read: a burst of 200 events read by a stopped pere-sub cost 8 to
//! 41 requests with the in-flight window alone (its receipt round trip is
//! shorter than reading ten events in a debug build), and 1 with the yields
//! (`tests/e2e/ack_batching.rs`).
//!
//! What does not change: every event handed over gets its receipt, in
//! order, with the status `follow` chose; a failure (of the request, or of
//! one item of a batch) is reported on stderr for the events it concerns
//! and is not fatal; and [`Receipts::finish`] waits for every answer, so
//! `--count N` still exits only once its receipts are recorded.

use std::future::Future;
use std::time::Duration;

use pere_http::client::{AckResult, Backoff, Client, is_transient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Attempts at a receipt request whose failure may be transient (the server
/// is restarting): the receipts handed over meanwhile wait, so keep it
/// short.
const ACK_BACKOFF: Backoff = Backoff {
    retries: 2,
    initial: Duration::from_millis(200),
    max: Duration::from_millis(400),
};

/// Most receipts in one batch: a burst of thousands of events still takes
/// only a few requests, far from the server's 10,000 items
/// (docs/PROTOCOL.md §4.1). Also the queue's capacity: with that many
/// receipts waiting, `follow` waits before reading more events, as it
/// waited for each receipt before this queue existed.
const MAX_BATCH_ITEMS: usize = 500;

/// Most bytes of ids and statuses in one batch, counted as if every status
/// byte were escaped (`\u0001` is 6 bytes of JSON): the body stays under
/// the server's 1 MiB for receipts whatever the statuses hold.
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// One receipt to send.
#[derive(Debug)]
struct Receipt {
    /// The device acknowledging: the same for a whole run, except that a
    /// token's subject is only known from `pere.hello`.
    device: String,
    id: String,
    status: String,
}

impl Receipt {
    /// Its worst-case share of a batch body, in bytes.
    fn size(&self) -> usize {
        self.id.len() + 6 * self.status.len() + 32
    }
}

/// The sending side of the receipt task; see the module documentation.
pub(crate) struct Receipts {
    /// Receipts to send, in order; the task holds the other end and ends
    /// once this sender is dropped and everything queued was answered.
    queue: mpsc::Sender<Receipt>,
    task: JoinHandle<()>,
}

impl Receipts {
    /// Starts the task that sends receipts on `channel` (the subscription as
    /// given, possibly a pattern) over `client`'s connection.
    pub(crate) fn start(client: Client, channel: String) -> Self {
        let (queue, rx) = mpsc::channel(MAX_BATCH_ITEMS);
        let task = tokio::spawn(run(client, channel, rx));
        Self { queue, task }
    }

    /// Queues the receipt of event `id`; waits only while the queue is full.
    pub(crate) async fn send(&self, device: &str, id: &str, status: &str) {
        let receipt = Receipt {
            device: device.to_string(),
            id: id.to_string(),
            status: status.to_string(),
        };
        if self.queue.send(receipt).await.is_err() {
            // The task only ends once the queue is closed, so it failed.
            eprintln!("pere-sub: receipts stopped: no receipt for event {id}");
        }
    }

    /// Waits until every queued receipt was sent and answered (or failed).
    pub(crate) async fn finish(self) {
        drop(self.queue);
        if self.task.await.is_err() {
            eprintln!("pere-sub: receipts stopped before every receipt was sent");
        }
    }
}

/// The receipt task: takes what the queue holds, up to a batch, sends it,
/// and repeats; what arrives while a request is in flight waits for it.
async fn run(client: Client, channel: String, mut queue: mpsc::Receiver<Receipt>) {
    // A receipt taken from the queue that did not fit the batch before it.
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(receipt) => receipt,
            None => match queue.recv().await {
                Some(receipt) => receipt,
                None => return,
            },
        };
        let mut batch = Batch::new(first);
        // Before sending, let `follow` queue the receipts of the events it
        // already has in hand: during a burst they are read or readable,
        // and a few yields (microseconds) make the batch much larger. When
        // it has nothing more, the queue stops growing and the batch goes.
        let mut quiet = 0;
        loop {
            let taken = batch.len();
            while held.is_none() && !batch.is_full() {
                let Ok(next) = queue.try_recv() else { break };
                held = batch.add(next).err();
            }
            if held.is_some() || batch.is_full() {
                break;
            }
            quiet = if batch.len() == taken { quiet + 1 } else { 0 };
            if quiet > QUIET_YIELDS {
                break;
            }
            tokio::task::yield_now().await;
        }
        send(&client, &channel, &batch.receipts).await;
    }
}

/// Yields in a row that found no new receipt before a batch is sent.
const QUIET_YIELDS: u32 = 2;

/// The receipts of one request: one device's, within the limits.
struct Batch {
    receipts: Vec<Receipt>,
    /// Their [`Receipt::size`], summed.
    bytes: usize,
}

impl Batch {
    fn new(first: Receipt) -> Self {
        Self {
            bytes: first.size(),
            receipts: vec![first],
        }
    }

    fn len(&self) -> usize {
        self.receipts.len()
    }

    fn is_full(&self) -> bool {
        self.receipts.len() >= MAX_BATCH_ITEMS
    }

    /// Adds `next`, or gives it back when it does not fit: another device
    /// (the `device` header is per request), or over [`MAX_BATCH_BYTES`].
    fn add(&mut self, next: Receipt) -> Result<(), Receipt> {
        if next.device != self.receipts[0].device || self.bytes + next.size() > MAX_BATCH_BYTES {
            return Err(next);
        }
        self.bytes += next.size();
        self.receipts.push(next);
        Ok(())
    }
}

/// Sends `batch` (one device's receipts) and reports what failed. A lone
/// receipt is sent as a single receipt, as before batches, not as a batch
/// of one.
async fn send(client: &Client, channel: &str, batch: &[Receipt]) {
    let device = batch[0].device.as_str();
    if let [one] = batch {
        if let Err(err) = retrying(|| client.ack(channel, device, &one.id, &one.status)).await {
            eprintln!("pere-sub: receipt for event {} failed: {err}", one.id);
        }
        return;
    }
    let items: Vec<(&str, &str)> = batch
        .iter()
        .map(|r| (r.id.as_str(), r.status.as_str()))
        .collect();
    match retrying(|| client.ack_batch(channel, device, &items)).await {
        Ok(results) if results.len() == batch.len() => {
            for (receipt, result) in batch.iter().zip(results) {
                if let AckResult::Failed { message, code, .. } = result {
                    eprintln!(
                        "pere-sub: receipt for event {} failed: {message} ({code})",
                        receipt.id
                    );
                }
            }
        }
        Ok(results) => {
            let (first, last) = (&batch[0].id, &batch[batch.len() - 1].id);
            eprintln!(
                "pere-sub: receipts for events {first} … {last} may have failed: the server answered {} results for {} receipts",
                results.len(),
                batch.len()
            );
        }
        Err(err) => {
            for receipt in batch {
                eprintln!("pere-sub: receipt for event {} failed: {err}", receipt.id);
            }
        }
    }
}

/// Runs `attempt`, and again after a short wait while it fails for a
/// reason that may be transient. A receipt sent twice is harmless: the
/// second is a status update with the same status (docs/PROTOCOL.md §4).
async fn retrying<T, F, Fut>(mut attempt: F) -> pere_http::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = pere_http::Result<T>>,
{
    let mut retry = 0;
    loop {
        match attempt().await {
            Err(err) if retry < ACK_BACKOFF.retries && is_transient(&err) => {
                retry += 1;
                tokio::time::sleep(ACK_BACKOFF.delay(retry)).await;
            }
            outcome => return outcome,
        }
    }
}
