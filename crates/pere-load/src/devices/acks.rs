//! The receipt workers of a device swarm: receipts go over keep-alive
//! connections of their own, as JSON arrays or one request per event.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::Method;
use tokio::sync::mpsc;

use super::pipeline::{exchange_window, write_request};
use super::{AckMode, Config, Shared, note_time, request};
use crate::{Conn, channel_name, exchange, refusal, unix_micros};

/// One receipt to send.
pub(super) struct AckItem {
    pub(super) device: u32,
    pub(super) id: String,
    pub(super) t: u64,
    pub(super) key: u64,
}

pub(super) async fn ack_worker(
    config: Arc<Config>,
    shared: Arc<Shared>,
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
    mut rx: mpsc::UnboundedReceiver<AckItem>,
) {
    let mode = config.ack.unwrap_or(AckMode::Batch);
    let pipeline = config.ack_pipeline.max(1) as usize;
    if mode == AckMode::Each && pipeline > 1 {
        return pipelined_worker(config, shared, server, source, rx, pipeline).await;
    }
    let channels = config.channels.max(1);
    let mut conn: Option<Conn> = None;
    let mut batch = Vec::with_capacity(256);
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut broken = false;
    while rx.recv_many(&mut batch, 4096).await > 0 {
        batch.sort_by_key(|a: &AckItem| a.device);
        for group in batch.chunk_by(|a, b| a.device == b.device) {
            let device = names
                .entry(group[0].device)
                .or_insert_with(|| format!("{}-{}", config.device_prefix, group[0].device))
                .clone();
            let channel = channel_name(&config.channel, channels, u64::from(group[0].device));
            let path = format!(
                "/feedback/{}",
                pere_http::client::encode_component(&channel)
            );
            let chunks: Vec<&[AckItem]> = match mode {
                AckMode::Each => group.chunks(1).collect(),
                AckMode::Batch => group.chunks(1000).collect(),
            };
            for items in chunks {
                // Ids come from the server: quoted as JSON strings, so an odd
                // one makes a rejected receipt (counted), never a broken body.
                let status = serde_json::Value::from(config.status.as_str()).to_string();
                let receipt = |item: &AckItem| {
                    format!(
                        "{{\"id\":{},\"status\":{status}}}",
                        serde_json::Value::from(item.id.as_str())
                    )
                };
                let body = match mode {
                    AckMode::Each => receipt(&items[0]),
                    AckMode::Batch => {
                        let mut s = String::with_capacity(items.len() * 40);
                        s.push('[');
                        for (k, item) in items.iter().enumerate() {
                            if k > 0 {
                                s.push(',');
                            }
                            s.push_str(&receipt(item));
                        }
                        s.push(']');
                        s
                    }
                };
                let sent_at = unix_micros();
                note_time(&shared.first_ack, &shared.last_ack, sent_at);
                shared
                    .acks_sent
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                let acked = post(&config, server, source, &mut conn, &path, &device, body).await;
                record(&shared, items, acked, &mut broken, &device);
            }
        }
        batch.clear();
    }
}

/// Counts a receipt request's outcome: receipts acked or failed, and when
/// each event was last acknowledged. The first failure is reported.
fn record(
    shared: &Shared,
    items: &[AckItem],
    acked: Result<u64, String>,
    broken: &mut bool,
    device: &str,
) {
    let now = unix_micros();
    shared.last_ack.fetch_max(now, Ordering::Relaxed);
    match acked {
        Ok(n) => {
            shared.acked.fetch_add(n, Ordering::Relaxed);
            let failed = (items.len() as u64).saturating_sub(n);
            shared.ack_failures.fetch_add(failed, Ordering::Relaxed);
            if failed == 0 {
                let mut tracker = shared.ack_tracker.lock().unwrap_or_else(|e| e.into_inner());
                for item in items {
                    let e = tracker.entry(item.key).or_insert((item.t, 0, 0));
                    e.1 += 1;
                    e.2 = e.2.max(now);
                }
            }
        }
        Err(e) => {
            shared
                .ack_failures
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            if !*broken {
                *broken = true;
                shared.error(format!("receipt of device {device}: {e}"));
            }
        }
    }
}

/// The receipt worker of [`AckMode::Each`] with `pipeline` > 1: what
/// arrived is sent in windows of up to `pipeline` requests, each window
/// written at once on one connection and its answers read in order.
async fn pipelined_worker(
    config: Arc<Config>,
    shared: Arc<Shared>,
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
    mut rx: mpsc::UnboundedReceiver<AckItem>,
    pipeline: usize,
) {
    let channels = config.channels.max(1);
    let host = config.addr.to_string();
    let status = serde_json::Value::from(config.status.as_str()).to_string();
    let mut conn = None;
    let mut batch = Vec::with_capacity(256);
    let mut paths: HashMap<u32, (String, String)> = HashMap::new();
    let mut requests = Vec::with_capacity(pipeline * 256);
    let mut broken = false;
    while rx.recv_many(&mut batch, 4096).await > 0 {
        for window in batch.chunks(pipeline) {
            requests.clear();
            for item in window {
                let (path, device) = paths.entry(item.device).or_insert_with(|| {
                    let channel = channel_name(&config.channel, channels, u64::from(item.device));
                    (
                        format!(
                            "/feedback/{}",
                            pere_http::client::encode_component(&channel)
                        ),
                        format!("{}-{}", config.device_prefix, item.device),
                    )
                });
                let body = format!(
                    "{{\"id\":{},\"status\":{status}}}",
                    serde_json::Value::from(item.id.as_str())
                );
                write_request(&mut requests, &host, path, device, body.as_bytes());
            }
            note_time(&shared.first_ack, &shared.last_ack, unix_micros());
            shared
                .acks_sent
                .fetch_add(window.len() as u64, Ordering::Relaxed);
            match exchange_window(server, source, &mut conn, &requests, window.len()).await {
                Ok(answers) => {
                    for (item, (code, body)) in window.iter().zip(answers) {
                        let device = &paths[&item.device].1;
                        let acked = if (200..300).contains(&code) {
                            Ok(acked_in(&body))
                        } else {
                            Err(format!(
                                "status {code}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(200)])
                            ))
                        };
                        record(
                            &shared,
                            std::slice::from_ref(item),
                            acked,
                            &mut broken,
                            device,
                        );
                    }
                }
                Err(e) => {
                    let device = &paths[&window[0].device].1;
                    record(&shared, window, Err(e), &mut broken, device);
                }
            }
        }
        batch.clear();
    }
}

/// Receipts an answer says were recorded.
fn acked_in(body: &[u8]) -> u64 {
    String::from_utf8_lossy(body)
        .matches("\"state\":\"acked\"")
        .count() as u64
}

/// Sends one receipt request; the number of receipts the server recorded.
async fn post(
    config: &Config,
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
    slot: &mut Option<Conn>,
    path: &str,
    device: &str,
    body: String,
) -> Result<u64, String> {
    let req = request(config, Method::POST, path, Some(device), Bytes::from(body))
        .ok_or_else(|| "cannot build the receipt request".to_string())?;
    let (status, body) = exchange(server, source, slot, req).await?;
    if !status.is_success() {
        return Err(refusal(status, &body));
    }
    Ok(acked_in(&body))
}
