//! [`TestServer`]: a `pere_http` server in this process, on a loopback
//! port.

use std::net::SocketAddr;

use pere_core::{Hub, HubConfig, MemoryStore, Retention};
use pere_http::ServerConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::http::{Response, request};
use crate::sse::SseStream;
use crate::{WAIT, eventually};

/// A `pere_http` server running in-process on `127.0.0.1:0`.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The hub behind it, for assertions on state.
    pub hub: Hub<MemoryStore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server with default settings.
    pub async fn start() -> Self {
        Self::start_with(
            HubConfig::default(),
            Retention::default(),
            ServerConfig::default(),
        )
        .await
    }

    /// A server with these settings.
    pub async fn start_with(hub: HubConfig, retention: Retention, server: ServerConfig) -> Self {
        let listener = pere_http::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Hub::open(hub, MemoryStore::new(retention)).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let hub = hub.clone();
            async move {
                pere_http::run(listener, hub, server, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            }
        });
        Self {
            addr,
            hub,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request and reads the whole response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.addr, method, path, headers, body).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"").await
    }

    /// `POST path` with a body.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.request("POST", path, headers, body).await
    }

    /// Publishes `payload` on `channel` and returns the event id.
    pub async fn publish(&self, channel: &str, payload: &str) -> String {
        let r = self
            .post(&format!("/push/{channel}"), &[], payload.as_bytes())
            .await;
        assert_eq!(r.status, 201, "publish failed: {}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// Opens an event stream.
    pub async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        SseStream::open(self.addr, path, headers).await
    }

    /// Opens `/feed/{channel}` as `device` and reads up to its `pere.hello`.
    pub async fn subscribe(&self, channel: &str, device: &str) -> SseStream {
        let mut s = self
            .stream(&format!("/feed/{channel}"), &[("device", device)])
            .await;
        assert_eq!(s.status, 200, "subscribe failed: {}", s.text());
        let hello = s.next_event().await.expect("a pere.hello");
        assert_eq!(hello.event, "pere.hello", "the first event is pere.hello");
        s
    }

    /// Acknowledges event `id` on `channel` as `device` with a JSON receipt
    /// and asserts it was recorded.
    pub async fn ack(&self, channel: &str, device: &str, id: &str) {
        let body = format!(r#"{{"id":"{id}","status":"ok"}}"#);
        let r = self
            .post(
                &format!("/feedback/{channel}"),
                &[("device", device), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "receipt failed: {}", r.text());
    }

    /// The presence of `device` on `subscription` as `/admin/devices` shows
    /// it, if the device is known there.
    pub async fn presence(&self, subscription: &str, device: &str) -> Option<serde_json::Value> {
        let r = self.get(&format!("/admin/devices/{subscription}")).await;
        assert_eq!(r.status, 200, "admin/devices failed: {}", r.text());
        r.json().get(device).cloned()
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

    /// Triggers a graceful shutdown and waits (bounded) for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the server returns after shutdown")
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
