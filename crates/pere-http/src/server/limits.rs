//! How many connections and streams the server holds at once, and the
//! [`StreamSlot`] guard that a stream keeps for as long as it is open.
//!
//! Three limits, checked when a stream opens (`GET /feed`,
//! `GET /receipts/:channel`), each with its own answer (docs/PROTOCOL.md §8):
//!
//! - `max_streams` server-wide and `max_streams_per_device`: `429`, the
//!   caller is over a connection limit and may retry later;
//! - the file-descriptor budget (what `RLIMIT_NOFILE` leaves after a
//!   reserve for the store, the listener and short requests): `503`, the
//!   server as a whole is out of capacity, whoever asks.
//!
//! Plain requests are not counted against the stream limits; they hold a
//! descriptor only briefly and are bounded by the idle and read timeouts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pere_core::DeviceId;

use crate::error::ApiError;
use crate::error::ErrorCode;

/// Default most open streams server-wide.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
/// Default most open streams of one device: a phone reconnecting in a loop
/// (or a stolen token) cannot take the whole server's share.
pub const DEFAULT_MAX_STREAMS_PER_DEVICE: usize = 16;
/// Descriptors kept back from streams: the listener, the store's segment
/// files, the webhook client, logging, and room for short requests, so an
/// operator can still call `/admin` and `/healthz` when streams fill the rest.
pub const FD_RESERVE: usize = 128;

/// Open connections and streams, against the configured limits.
#[derive(Debug)]
pub struct Limits {
    max_streams: usize,
    max_per_device: usize,
    /// Most descriptors streams may use; `None` when unknown (no check).
    fd_budget: Option<usize>,
    /// Open TCP connections (each holds a descriptor).
    connections: AtomicUsize,
    /// Open streams, all devices (anonymous ones included).
    streams: AtomicUsize,
    /// Those of them that hold a connection of their own (HTTP/1.1; an
    /// HTTP/2 connection carries many): what the descriptor budget counts.
    solo: AtomicUsize,
    per_device: Mutex<HashMap<DeviceId, usize>>,
}

impl Limits {
    /// Limits with these maxima; `fd_budget` is the number of descriptors
    /// connections may hold (see [`fd_budget`]).
    pub fn new(max_streams: usize, max_per_device: usize, fd_budget: Option<usize>) -> Self {
        Self {
            max_streams,
            max_per_device,
            fd_budget,
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            solo: AtomicUsize::new(0),
            per_device: Mutex::default(),
        }
    }

    fn devices(&self) -> MutexGuard<'_, HashMap<DeviceId, usize>> {
        // Counts are changed by whole increments: a panic cannot leave one
        // half-changed, so a poisoned lock carries no information.
        self.per_device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open TCP connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Open streams.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Counts a new connection until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Takes a stream slot for `device`; `solo` when the stream holds its
    /// connection (and so a descriptor) of its own, as over HTTP/1.1.
    ///
    /// # Errors
    /// `503 over_capacity` when descriptors run short, `429 too_many_streams`
    /// over `max_streams`, `429 too_many_device_streams` over the device's
    /// share.
    pub fn acquire(
        self: &Arc<Self>,
        device: Option<&DeviceId>,
        solo: bool,
    ) -> Result<StreamSlot, ApiError> {
        let solos = if solo {
            self.solo.fetch_add(1, Ordering::AcqRel)
        } else {
            0
        };
        if let Some(budget) = self.fd_budget
            && (solos >= budget || self.connections() > budget + budget.min(FD_RESERVE) / 2)
        {
            // Streams hold their descriptor for hours: at most the budget
            // of them. Connections are counted only past half the reserve:
            // those of a burst of streams (a reconnect storm after a
            // restart) are all accepted before their requests are read, and
            // counting them refused nearly the whole storm, not its excess.
            if solo {
                self.solo.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(ApiError::new(
                ErrorCode::OverCapacity,
                format!(
                    "the server is out of file descriptors for new streams ({budget} connections); retry later"
                ),
            ));
        }
        // Given back on every refusal below, and by the slot's drop.
        let give_back = || {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            if solo {
                self.solo.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let open = self.streams.fetch_add(1, Ordering::AcqRel);
        if open >= self.max_streams {
            give_back();
            return Err(ApiError::new(
                ErrorCode::TooManyStreams,
                format!(
                    "the server holds its maximum of {} open streams; retry later",
                    self.max_streams
                ),
            ));
        }
        if let Some(device) = device {
            let mut devices = self.devices();
            let n = devices.entry(device.clone()).or_insert(0);
            if *n >= self.max_per_device {
                drop(devices);
                give_back();
                return Err(ApiError::new(
                    ErrorCode::TooManyDeviceStreams,
                    format!(
                        "device `{device}` already has {} open streams, the most allowed",
                        self.max_per_device
                    ),
                ));
            }
            *n += 1;
        }
        Ok(StreamSlot {
            limits: self.clone(),
            device: device.cloned(),
            solo,
        })
    }
}

/// The descriptors connections may hold, given the process's soft
/// `RLIMIT_NOFILE`: the limit less [`FD_RESERVE`], or half of a small limit.
pub fn fd_budget(nofile: u64) -> usize {
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    if nofile > 2 * FD_RESERVE {
        nofile - FD_RESERVE
    } else {
        nofile / 2
    }
}

/// A counted connection; uncounts on drop.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Limits>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream's place under the limits, given back when the stream's body is
/// dropped (however the stream ended).
#[derive(Debug)]
pub struct StreamSlot {
    limits: Arc<Limits>,
    device: Option<DeviceId>,
    solo: bool,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.limits.streams.fetch_sub(1, Ordering::AcqRel);
        if self.solo {
            self.limits.solo.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(device) = &self.device {
            let mut devices = self.limits.devices();
            if let Some(n) = devices.get_mut(device) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    devices.remove(device);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper::StatusCode;

    #[test]
    fn slots_count_per_server_and_per_device_and_come_back_on_drop() {
        let limits = Arc::new(Limits::new(3, 2, None));
        let a = DeviceId::new("a").unwrap();
        let s1 = limits.acquire(Some(&a), true).unwrap();
        let s2 = limits.acquire(Some(&a), true).unwrap();
        let err = limits.acquire(Some(&a), true).unwrap_err();
        assert_eq!(
            (err.status(), err.code.as_str()),
            (StatusCode::TOO_MANY_REQUESTS, "too_many_device_streams")
        );
        let s3 = limits.acquire(None, true).unwrap();
        let err = limits.acquire(None, true).unwrap_err();
        assert_eq!(err.code.as_str(), "too_many_streams");
        assert_eq!(limits.streams(), 3);
        drop((s1, s2, s3));
        assert_eq!(limits.streams(), 0);
        assert!(limits.devices().is_empty());
        let _again = limits.acquire(Some(&a), true).unwrap();
    }

    #[test]
    fn the_descriptor_budget_answers_503() {
        let limits = Arc::new(Limits::new(100, 100, Some(1)));
        let _c1 = limits.connection();
        let _s1 = limits.acquire(None, true).unwrap();
        let _c2 = limits.connection();
        let err = limits.acquire(None, true).unwrap_err();
        assert_eq!(
            (err.status(), err.code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "over_capacity")
        );
        assert_eq!(fd_budget(20_000), 20_000 - FD_RESERVE);
        assert_eq!(fd_budget(100), 50);
    }

    /// A burst of 80 stream connections, all accepted before any request
    /// is read, against a budget of 70: 70 streams, 10 refused (4 and 76
    /// when the connections counted).
    #[test]
    fn a_burst_past_the_budget_loses_only_its_excess() {
        let limits = Arc::new(Limits::new(1000, 1000, Some(70)));
        let _connections: Vec<_> = (0..80).map(|_| limits.connection()).collect();
        let answers: Vec<_> = (0..80).map(|_| limits.acquire(None, true)).collect();
        assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 70);
        assert_eq!(limits.streams(), 70);
        // Past half the reserve, connections alone refuse a stream: the
        // descriptors are running out for short requests too.
        // HTTP/2 streams share their connection's descriptor: not counted.
        let _h2: Vec<_> = (0..10)
            .map(|_| limits.acquire(None, false).unwrap())
            .collect();
        assert_eq!(limits.streams(), 80);
        drop(answers);
        assert_eq!(limits.streams(), 10);
        assert_eq!(limits.solo.load(Ordering::Relaxed), 0);
        let crowded = Arc::new(Limits::new(1000, 1000, Some(70)));
        let _connections: Vec<_> = (0..106).map(|_| crowded.connection()).collect();
        assert!(crowded.acquire(None, true).is_err());
    }
}
