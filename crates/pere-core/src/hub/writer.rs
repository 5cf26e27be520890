//! The writer: the one owner of ordering (a task of the runtime, or a
//! thread of its own over a store whose appends block). It drains commands in
//! batches: *prepare* each against the state, append the batch's records to
//! the store (one durable write), then *apply* them (fan-out, answers).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::command::{Command, Effect};
use super::health::{self, OnFailure};
use super::{Inner, MAX_BATCH};
use crate::event::Timestamp;
use crate::log::EventStore;

/// Starts the writer: a task of the current runtime, or, for a store
/// whose appends block, a thread running its own single-threaded runtime.
/// There a batch's sync holds only the writer, not a worker of the
/// runtime serving the connections; and the writer wakes from the sync
/// itself, with no hop to a store thread and back, nor a wait in the
/// runtime's queue behind the connections' tasks (`benches/RESULTS.md`).
/// Either way a writer that panics is reported by
/// [`Hub::failure`](super::Hub::failure): without it the hub can only
/// refuse.
pub(super) fn start<S: EventStore>(
    inner: Arc<Inner<S>>,
    rx: mpsc::UnboundedReceiver<Command>,
) -> crate::error::Result<()> {
    if !inner.store.appends_block() {
        let watch = Arc::downgrade(&inner);
        watch_panics(watch, tokio::spawn(writer(inner, rx)));
        return Ok(());
    }
    let watch = Arc::downgrade(&inner);
    let failed = |e: std::io::Error| {
        crate::error::Error::StoreUnavailable(format!("cannot start the hub's writer: {e}"))
    };
    // All of Tokio: the store's futures run on this runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let (done, finished) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("pere-hub-writer".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(async move {
                    tokio::select! {
                        () = writer(inner, rx) => {}
                        _ = stopped => {}
                    }
                });
            }));
            if let Err(panic) = ran {
                panicked(&watch, panic);
            }
            drop(runtime);
            drop(done);
        })
        .map_err(failed)?;
    // The thread lives as long as the runtime that opened the hub, as the
    // task would: the hub's parts hold the writer's queue, so it never
    // closes by itself, and a hub dropped without `shutdown` would keep
    // its store (and the store's directory locked) for good. This task
    // ends with the thread, or is dropped with that runtime: then it
    // stops the writer and waits for it (and so for the store's close).
    let guard = Joined {
        stop: Some(stop),
        thread: Some(thread),
    };
    tokio::spawn(async move {
        let _guard = guard;
        let _ = finished.await;
    });
    Ok(())
}

/// Stops the writer's thread and waits for it, when dropped.
struct Joined {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic there was reported already.
            let _ = thread.join();
        }
    }
}

/// Reports it if the writer `task` panics.
pub(super) fn watch_panics<S: Send + Sync + 'static>(
    watch: Weak<Inner<S>>,
    task: tokio::task::JoinHandle<()>,
) {
    tokio::spawn(async move {
        if let Err(err) = task.await
            && err.is_panic()
        {
            panicked(&watch, err.into_panic());
        }
    });
}

/// Reports a writer that panicked: the hub can no longer write anything.
fn panicked<S>(watch: &Weak<Inner<S>>, panic: Box<dyn std::any::Any + Send>) {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let reason = format!("the hub's writer panicked: {what}");
    tracing::error!("{reason}");
    if let Some(inner) = watch.upgrade() {
        inner.failed.send_replace(Some(reason));
    }
}

async fn writer<S: EventStore>(inner: Arc<Inner<S>>, mut rx: mpsc::UnboundedReceiver<Command>) {
    // The first tick one period after the start, not at once: an
    // immediate one ran whenever the writer first found its queue empty,
    // which with the writer on a thread of its own is any moment of the
    // first commands.
    let every = inner.config.tick.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(64);
    loop {
        let retry_at = inner.health().retry_at();
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            _ = tick.tick() => batch.push(Command::Tick),
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                if retry_at.is_some() => {}
        }
        health::retry(&inner).await;
        if batch.is_empty() {
            continue;
        }
        let shutting_down = batch.iter().any(|c| matches!(c, Command::Shutdown(_)));
        process(&inner, std::mem::take(&mut batch)).await;
        if shutting_down {
            break;
        }
    }
    // Refuse whatever arrives from now on: dropping the receiver makes
    // every later `call` fail with `ShuttingDown`.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        if let Command::Shutdown(reply) = cmd {
            let _ = reply.send(());
        }
    }
}

pub(super) async fn process<S: EventStore>(inner: &Inner<S>, batch: Vec<Command>) {
    process_at(inner, batch, Timestamp::now(), false).await;
}

/// [`process`] at `now`. With `from_log`, the batch is an entry of a
/// cluster's shared log, already durable there: the store is only this
/// node's copy of the retained events, never refused.
pub(super) async fn process_at<S: EventStore>(
    inner: &Inner<S>,
    batch: Vec<Command>,
    now: Timestamp,
    from_log: bool,
) {
    let tick = batch
        .iter()
        .any(|c| matches!(c, Command::Tick | Command::SharedTick(_)));
    // Reads are answered once the batch is applied (or failed): they see
    // what the commands before them did.
    let (reads, batch): (Vec<Command>, Vec<Command>) = batch
        .into_iter()
        .partition(|c| matches!(c, Command::Read(_)));
    let mut records = Vec::new();
    let mut effects = Vec::with_capacity(batch.len());
    // Which records each command made, should the batch not be written.
    let mut spans = Vec::with_capacity(batch.len() + 2);
    let mut shutdown = false;
    {
        let mut state = inner.state();
        records.append(&mut state.deferred);
        if !state.cluster {
            state.expire_due(now, inner.config.member_ttl, &mut records);
        }
        spans.push((0..records.len(), OnFailure::Keep));
        for cmd in batch {
            if matches!(cmd, Command::Shutdown(_)) {
                shutdown = true;
            }
            let (start, on_failure) = (records.len(), OnFailure::of(&cmd));
            let effect = state.prepare(cmd, now, &inner.config, &mut records);
            spans.push((start..records.len(), on_failure));
            effects.push(effect);
        }
        if shutdown {
            let start = records.len();
            state.close_all(now);
            records.append(&mut state.deferred);
            spans.push((start..records.len(), OnFailure::Keep));
        }
    }
    let refused = if from_log {
        None
    } else {
        inner.health().refusal()
    };
    let was_refused = refused.is_some();
    let result = if let Some(refused) = refused {
        Err(refused)
    } else if records.is_empty() {
        Ok(Vec::new())
    } else {
        let started = std::time::Instant::now();
        let appended = inner.store.append(&records).await;
        inner.metrics.journal_write.observe(started.elapsed());
        appended
    };
    match result {
        Ok(mut evicted) => {
            if tick {
                // `--max-age` applies while running, not only at the next
                // start: each tick drops what aged out (the stores do it
                // without blocking their appends for long).
                evicted.extend(inner.store.prune(now));
            }
            if !records.is_empty() {
                inner.health().wrote();
                inner.counters.batches.fetch_add(1, Ordering::Relaxed);
                inner
                    .counters
                    .records
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            let mut shutdown_replies = Vec::new();
            {
                let mut state = inner.state();
                for effect in effects {
                    if let Effect::Shutdown(reply) = effect {
                        shutdown_replies.push(reply);
                        continue;
                    }
                    state.apply(effect, now, &inner.counters);
                }
                state.evict(&evicted, now);
            }
            if !shutdown_replies.is_empty() {
                if let Err(err) = inner.store.close().await {
                    tracing::error!(cause = %err, "closing the store failed");
                }
                for reply in shutdown_replies {
                    let _ = reply.send(());
                }
            }
        }
        Err(err) => {
            // A refusal is the outage already counted; anything else is a
            // failure of the store.
            if !was_refused {
                let mut health = inner.health();
                if health.failed(err.to_string()) {
                    tracing::error!(
                        cause = %err,
                        next_try_in = ?health.retry_at().map(|at| at - tokio::time::Instant::now()),
                        "the store failed; refusing writes until it takes them again"
                    );
                }
            }
            health::fail_batch(inner, err, records, spans, effects).await;
        }
    }
    if !reads.is_empty() {
        let state = inner.state();
        for read in reads {
            if let Command::Read(read) = read {
                super::view::run(read, &state);
            }
        }
    }
}
