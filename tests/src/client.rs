//! [`Client`]: what a test says to a PERE server, by endpoint: publish,
//! subscribe, acknowledge, read receipts and presence, and the admin views
//! ([`Admin`]). [`TestServer`](crate::TestServer) and
//! [`ServerProcess`](crate::ServerProcess) are one (they dereference to
//! theirs), so a test reads `server.receipts("c", &id)` whichever it runs.
//!
//! The helpers that return a view assert it was served (`200`); a test
//! about an error answer sends its request with [`Client::request`] and
//! asserts the error itself.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::http::{Response, request};
use crate::sse::SseStream;
use crate::{WAIT, eventually};

/// Requests to one server, as one caller (anonymous, or a bearer token).
#[derive(Clone, Debug)]
pub struct Client {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// The `Authorization` header sent with every request, if any.
    authorization: Option<String>,
}

impl Client {
    /// An anonymous client of the server at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            authorization: None,
        }
    }

    /// The same server, as the holder of `token` (`Authorization: Bearer`).
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            addr: self.addr,
            authorization: Some(format!("Bearer {token}")),
        }
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `headers` after this client's `Authorization`, if it has one.
    fn headers<'a>(&'a self, headers: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = Vec::with_capacity(headers.len() + 1);
        if let Some(auth) = &self.authorization {
            all.push(("Authorization", auth.as_str()));
        }
        all.extend_from_slice(headers);
        all
    }

    /// Sends a request on a fresh connection and reads the whole response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.addr, method, path, &self.headers(headers), body).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"").await
    }

    /// `POST path` with a body.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.request("POST", path, headers, body).await
    }

    /// `PUT path` with a body.
    pub async fn put(&self, path: &str, body: &[u8]) -> Response {
        self.request("PUT", path, &[], body).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, &[], b"").await
    }

    /// `GET path` as JSON, asserting it was served.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Publishes `payload` on `channel` and returns the event id.
    pub async fn publish(&self, channel: &str, payload: &str) -> String {
        self.publish_json(channel, payload).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Publishes `payload` on `channel`, asserts `201`, and returns the
    /// answer (`id`, `channel`, `recipients`).
    pub async fn publish_json(&self, channel: &str, payload: &str) -> Value {
        let r = self
            .post(&format!("/push/{channel}"), &[], payload.as_bytes())
            .await;
        assert_eq!(r.status, 201, "publish failed: {}", r.text());
        r.json()
    }

    /// Opens an event stream (not read yet; a refused one holds its error).
    pub async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        SseStream::open(self.addr, path, &self.headers(headers)).await
    }

    /// Opens the feed `path` with `headers`, asserts it was accepted and
    /// reads up to its `pere.hello`.
    pub async fn open(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut s = self.stream(path, headers).await;
        assert_eq!(s.status, 200, "stream {path} refused: {}", s.text());
        let hello = s.next_event().await.expect("a pere.hello");
        assert_eq!(hello.event, "pere.hello", "the first event is pere.hello");
        s
    }

    /// Opens `/feed/{channel}` as `device` and reads up to its `pere.hello`.
    pub async fn subscribe(&self, channel: &str, device: &str) -> SseStream {
        self.open(&format!("/feed/{channel}"), &[("device", device)])
            .await
    }

    /// `POST /feedback/{channel}`: a receipt in whatever form `headers` and
    /// `body` give it.
    pub async fn feedback(&self, channel: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.post(&format!("/feedback/{channel}"), headers, body)
            .await
    }

    /// Acknowledges event `id` on `channel` as `device` with a JSON receipt
    /// and asserts it was recorded.
    pub async fn ack(&self, channel: &str, device: &str, id: &str) {
        self.ack_with(channel, device, id, "ok").await;
    }

    /// The same, with receipt status `status`.
    pub async fn ack_with(&self, channel: &str, device: &str, id: &str, status: &str) {
        let body = serde_json::json!({ "id": id, "status": status }).to_string();
        let r = self
            .feedback(
                channel,
                &[("device", device), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "receipt failed: {}", r.text());
    }

    /// `GET /receipts/{channel}/{id}`: the event's receipts summary.
    pub async fn receipts(&self, channel: &str, id: &str) -> Value {
        self.get_json(&format!("/receipts/{channel}/{id}")).await
    }

    /// Waits until the server records `device`'s receipt for event `id`
    /// on `channel`; the receipts summary then.
    pub async fn wait_acked(&self, channel: &str, id: &str, device: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = Value::Null;
        while tokio::time::Instant::now() < deadline {
            last = self.receipts(channel, id).await;
            if last["devices"][device]["state"] == "acked" {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("device {device} did not ack event {id} on {channel}: {last}");
    }

    /// The presence of `device` on `subscription` as `/admin/devices` shows
    /// it, if the device is known there.
    pub async fn presence(&self, subscription: &str, device: &str) -> Option<Value> {
        self.admin()
            .devices(subscription)
            .await
            .get(device)
            .cloned()
    }

    /// Waits until `device` has an open stream on `subscription`.
    pub async fn wait_online(&self, subscription: &str, device: &str) {
        eventually(&format!("{device} online on {subscription}"), || async {
            self.presence(subscription, device)
                .await
                .is_some_and(|p| p["online"] == true)
        })
        .await;
    }

    /// Waits until `device` has no open stream left on `subscription` (the
    /// server noticed the connection closed).
    pub async fn wait_offline(&self, subscription: &str, device: &str) {
        eventually(&format!("{device} offline on {subscription}"), || async {
            self.presence(subscription, device)
                .await
                .is_some_and(|p| p["online"] == false)
        })
        .await;
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// The admin endpoints.
    pub fn admin(&self) -> Admin<'_> {
        Admin(self)
    }
}

/// The `/admin` endpoints of a [`Client`]'s server.
#[derive(Clone, Copy, Debug)]
pub struct Admin<'a>(&'a Client);

impl Admin<'_> {
    /// `GET /admin/connections`: open streams by subscription, and the
    /// `"total number"`.
    pub async fn connections(&self) -> Value {
        self.0.get_json("/admin/connections").await
    }

    /// How many streams are open (`"total number"` of
    /// `/admin/connections`).
    pub async fn open_streams(&self) -> u64 {
        self.connections().await["total number"].as_u64().unwrap()
    }

    /// `GET /admin/channels`.
    pub async fn channels(&self) -> Value {
        self.0.get_json("/admin/channels").await
    }

    /// `GET /admin/events/{channel}`: its retained events, oldest first.
    pub async fn events(&self, channel: &str) -> Value {
        self.0.get_json(&format!("/admin/events/{channel}")).await
    }

    /// `GET /admin/devices/{channel}`: its members, by device.
    pub async fn devices(&self, channel: &str) -> Value {
        self.0.get_json(&format!("/admin/devices/{channel}")).await
    }

    /// `DELETE /admin/devices/{channel}/{device}`.
    pub async fn drop_device(&self, channel: &str, device: &str) -> Response {
        self.0
            .delete(&format!("/admin/devices/{channel}/{device}"))
            .await
    }

    /// `GET /admin/tokens`.
    pub async fn tokens(&self) -> Response {
        self.0.get("/admin/tokens").await
    }

    /// `PUT /admin/tokens/{token}` with `grants` (JSON).
    pub async fn put_token(&self, token: &str, grants: &[u8]) -> Response {
        self.0.put(&format!("/admin/tokens/{token}"), grants).await
    }

    /// `DELETE /admin/tokens/{token}` (or `jti:ID`).
    pub async fn revoke_token(&self, token: &str) -> Response {
        self.0.delete(&format!("/admin/tokens/{token}")).await
    }
}
