//! [`TestServer`]: a `pere_http` server in this process, on a loopback
//! port, with the settings a test gives its [`TestServerBuilder`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pere_core::{EventStore, FileStore, FileStoreConfig, Hub, HubConfig, MemoryStore, Retention};
use pere_http::ServerConfig;
use pere_http::server::webhook::Webhook;
use pere_http::tls::ServerTls;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::WAIT;
use crate::client::Client;

/// A `pere_http` server running in-process on `127.0.0.1:0`, over a memory
/// store unless its builder put it on disk.
pub struct TestServer<S: EventStore = MemoryStore> {
    /// Requests to it (where it listens: `server.addr`).
    client: Client,
    /// The hub behind it, for assertions on state.
    pub hub: Hub<S>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server with default settings.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// The settings of a server, defaults until a test says otherwise:
    /// `TestServer::builder().history(3).replay_all().start().await`.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }
}

/// The settings of a [`TestServer`]: the hub's, the store's retention and
/// the HTTP server's, each knob named as the field it sets.
#[derive(Clone, Debug, Default)]
pub struct TestServerBuilder {
    hub: HubConfig,
    history: Option<usize>,
    max_age: Option<Duration>,
    server: ServerConfig,
}

impl TestServerBuilder {
    /// How many events a stream's queue holds before the stream is closed
    /// as too slow.
    pub fn queue_capacity(mut self, events: usize) -> Self {
        self.hub.queue_capacity = events;
        self
    }

    /// How many bytes of events a stream's queue holds before the stream is
    /// closed as too slow.
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.hub.queue_bytes = bytes;
        self
    }

    /// A new device gets every retained event, as PERE did.
    pub fn replay_all(mut self) -> Self {
        self.hub.replay_all = true;
        self
    }

    /// How long a recipient may take to acknowledge before it is reported
    /// overdue.
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.hub.ack_deadline = Some(deadline);
        self
    }

    /// How often the hub's maintenance (deadlines, retention) runs.
    pub fn tick(mut self, every: Duration) -> Self {
        self.hub.tick = every;
        self
    }

    /// Keeps the newest `events` of each channel, however old (unless
    /// [`Self::max_age`] says otherwise).
    pub fn history(mut self, events: usize) -> Self {
        self.history = Some(events);
        self
    }

    /// Drops events older than `age` (keeping the default history unless
    /// [`Self::history`] says otherwise).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The `retry` sent at the start of each stream.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.server.retry = retry;
        self
    }

    /// Quiet time after which a stream gets a keepalive comment.
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.server.keepalive = every;
        self
    }

    /// How long a client may take to send a request head.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.server.header_read_timeout = timeout;
        self
    }

    /// How long a client may take to send a request body.
    pub fn body_read_timeout(mut self, timeout: Duration) -> Self {
        self.server.body_read_timeout = timeout;
        self
    }

    /// How long a connection may wait for its next request.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.server.idle_timeout = timeout;
        self
    }

    /// How long a client may accept no byte while the server has some for
    /// it.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.server.send_timeout = timeout;
        self
    }

    /// The largest request head, in bytes.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.server.max_header_bytes = bytes;
        self
    }

    /// Most open streams, server-wide.
    pub fn max_streams(mut self, streams: usize) -> Self {
        self.server.max_streams = streams;
        self
    }

    /// Most open streams of one device.
    pub fn max_streams_per_device(mut self, streams: usize) -> Self {
        self.server.max_streams_per_device = streams;
        self
    }

    /// Most connections the descriptors allow for streams.
    pub fn fd_budget(mut self, connections: usize) -> Self {
        self.server.fd_budget = Some(connections);
        self
    }

    /// Where overdue notices are POSTed.
    pub fn webhook(mut self, url: &str) -> Self {
        self.server.webhook = Some(Webhook::parse(url).unwrap());
        self
    }

    /// Speaks TLS with this certificate.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.server.tls = Some(Arc::new(tls));
        self
    }

    /// The store's retention: the default, or what the test set (what it
    /// left out of history and age then has no limit of its own).
    fn retention(&self) -> Retention {
        match (self.history, self.max_age) {
            (None, None) => Retention::default(),
            (history, max_age) => Retention {
                history: history.unwrap_or(Retention::default().history),
                max_age,
            },
        }
    }

    /// Starts the server over a memory store.
    pub async fn start(self) -> TestServer {
        let store = MemoryStore::new(self.retention());
        self.start_over(store).await
    }

    /// Starts the server over a file store in `dir` (what an earlier server
    /// left there is recovered).
    pub async fn start_on_disk(self, dir: &Path) -> TestServer<FileStore> {
        let store = FileStore::open(FileStoreConfig {
            retention: self.retention(),
            ..FileStoreConfig::new(dir)
        })
        .unwrap();
        self.start_over(store).await
    }

    async fn start_over<S: EventStore>(self, store: S) -> TestServer<S> {
        let listener = pere_http::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Hub::open(self.hub, store).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = self.server;
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
        TestServer {
            client: Client::new(addr),
            hub,
            shutdown: Some(tx),
            task: Some(task),
        }
    }
}

impl<S: EventStore> std::ops::Deref for TestServer<S> {
    type Target = Client;

    /// Its requests: `server.publish(…)`, `server.admin().devices(…)`.
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl<S: EventStore> TestServer<S> {
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

impl<S: EventStore> Drop for TestServer<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
