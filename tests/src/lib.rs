//! Helpers for PERE's end-to-end tests: a [`TestServer`] on a loopback port,
//! a raw HTTP/1.1 client that shows exact bytes ([`request`]), an SSE reader
//! built on pere-http's decoder ([`SseStream`]), and [`bin`] to find the
//! built binaries for process-level tests.
//!
//! Everything talks to 127.0.0.1 only, and every wait is bounded.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pere_core::{Hub, HubConfig, MemoryStore, Retention};
use pere_http::ServerConfig;
use pere_http::sse::{Decoder, Item, SseEvent};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod tls;

/// Held by the tests that load the machine most (thousands of connections
/// or handshakes), so that they do not run at once and starve each other's
/// bounded waits.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

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

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts a docs/PROTOCOL.md §8 error: status, JSON `code`, and an `error` sentence.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        let body = self.json();
        assert_eq!(body["code"], code, "unexpected code; body: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "an error sentence: {body}"
        );
    }
}

/// Builds the raw bytes of a request. `Host` and `Content-Length` are added
/// unless given; `Connection: close` is added so the response ends the read.
pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        out.extend_from_slice(b"Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !has("content-length") && (!body.is_empty() || method == "POST" || method == "PUT") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    if !has("connection") {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends one request on a fresh connection and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    send_raw(addr, &raw_request(method, path, headers, body)).await
}

/// Sends raw bytes and reads one whole response (the server must close or
/// delimit it).
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut reader = HttpReader::new(stream);
    let (status, headers) = reader.head().await;
    let body = if bytes.starts_with(b"HEAD ") {
        // A response to HEAD has headers only, whatever they announce.
        Vec::new()
    } else {
        reader.body(&headers, status).await
    };
    Response {
        status,
        headers,
        body,
    }
}

/// One kept-alive HTTP/1.1 connection carrying several requests in turn.
pub struct Connection {
    reader: HttpReader,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self {
            reader: HttpReader::new(stream),
        }
    }

    /// Sends one request (with `Connection: keep-alive` unless `headers`
    /// name a `Connection`) and reads its whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut all = headers.to_vec();
        if !all
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
        {
            all.push(("Connection", "keep-alive"));
        }
        self.send_raw(&raw_request(method, path, &all, body)).await
    }

    /// Opens an event stream as the next request on this connection.
    pub async fn stream(self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("Connection", "keep-alive"));
        SseStream::start(self.reader, &raw_request("GET", path, &all, b"")).await
    }

    /// Sends raw bytes and reads one whole response.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Response {
        self.reader.stream.write_all(bytes).await.unwrap();
        let (status, headers) = self.reader.head().await;
        let body = if bytes.starts_with(b"HEAD ") {
            Vec::new()
        } else {
            self.reader.body(&headers, status).await
        };
        Response {
            status,
            headers,
            body,
        }
    }
}

/// A connection a test reads and writes: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads HTTP/1.1 responses from a stream: head, then a body that is
/// content-length, chunked, or read to the end.
pub struct HttpReader {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
}

impl HttpReader {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        Self::over(stream)
    }

    /// Wraps any connection (a TLS stream).
    pub fn over(stream: impl Io + 'static) -> Self {
        Self {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` (a request).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the server answers within the timeout")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads a status line and headers.
    pub async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill().await,
                "connection closed before the response head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers)
    }

    /// Reads a whole body.
    pub async fn body(&mut self, headers: &[(String, String)], status: u16) -> Vec<u8> {
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        if status == 204 || status == 304 {
            return Vec::new();
        }
        if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut body = Vec::new();
            while let Some(chunk) = self.chunk().await {
                body.extend_from_slice(&chunk);
            }
            return body;
        }
        if let Some(len) = get("content-length").and_then(|l| l.parse::<usize>().ok()) {
            while self.buf.len() < len {
                assert!(self.fill().await, "connection closed mid-body");
            }
            return self.buf.drain(..len).collect();
        }
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Reads one chunk of a chunked body; `None` at the last chunk or EOF.
    pub async fn chunk(&mut self) -> Option<Vec<u8>> {
        let line_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            if !self.fill().await {
                return None;
            }
        };
        let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        self.buf.drain(..line_end + 2);
        while self.buf.len() < size + 2 {
            if !self.fill().await {
                return None;
            }
        }
        let data: Vec<u8> = self.buf.drain(..size).collect();
        self.buf.drain(..2);
        if size == 0 { None } else { Some(data) }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An open event stream, decoded with pere-http's WHATWG decoder; the raw
/// bytes are kept for exact assertions.
pub struct SseStream {
    /// Response status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Every body byte received so far.
    pub raw: Vec<u8>,
    reader: HttpReader,
    decoder: Decoder,
    items: std::collections::VecDeque<Item>,
    ended: bool,
}

impl SseStream {
    /// Opens `GET path` with `headers` (keeps the connection open).
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("Connection", "keep-alive"));
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::start(
            HttpReader::new(stream),
            &raw_request("GET", path, &all, b""),
        )
        .await
    }

    /// Opens `GET path` with `headers` on `reader`'s connection (a TLS
    /// one).
    pub async fn open_over(reader: HttpReader, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("Connection", "keep-alive"));
        Self::start(reader, &raw_request("GET", path, &all, b"")).await
    }

    /// Sends exactly `request` (a whole raw `GET`, as some client writes
    /// it) and reads the response as an event stream.
    pub async fn open_raw(addr: SocketAddr, request: &[u8]) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::start(HttpReader::new(stream), request).await
    }

    /// Sends `request` on `reader`'s connection and reads the response
    /// head; the body is read as an event stream from then on.
    async fn start(mut reader: HttpReader, request: &[u8]) -> Self {
        reader.stream.write_all(request).await.unwrap();
        let (status, headers) = reader.head().await;
        let mut s = Self {
            status,
            headers,
            raw: Vec::new(),
            reader,
            decoder: Decoder::new(),
            items: Default::default(),
            ended: false,
        };
        if status != 200 {
            let body = s.reader.body(&s.headers, status).await;
            s.raw = body;
            s.ended = true;
        }
        s
    }

    /// The first value of response header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The raw body bytes received so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The next `n` events that are not `pere.` control events; fails the
    /// test if the stream ends first.
    pub async fn messages(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_message().await {
                Some(e) => out.push(e),
                None => panic!(
                    "the stream ended after {} of {n} messages: {:?}",
                    out.len(),
                    self.text()
                ),
            }
        }
        out
    }

    /// The next decoded item, waiting at most `WAIT`; `None` when the
    /// stream ended.
    pub async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            match self.reader.chunk().await {
                Some(chunk) => {
                    self.raw.extend_from_slice(&chunk);
                    let mut out = Vec::new();
                    self.decoder.feed(&chunk, &mut out);
                    self.items.extend(out);
                }
                None => self.ended = true,
            }
        }
    }

    /// The next dispatched event (control events included).
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        while let Some(item) = self.next_item().await {
            if let Item::Event(e) = item {
                return Some(e);
            }
        }
        None
    }

    /// The next event whose type is not a `pere.` control event.
    pub async fn next_message(&mut self) -> Option<SseEvent> {
        while let Some(e) = self.next_event().await {
            if !e.event.starts_with("pere.") {
                return Some(e);
            }
        }
        None
    }

    /// Reads until the stream ends (bounded by `WAIT` per read).
    pub async fn until_end(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event().await {
            events.push(e);
        }
        events
    }
}

/// Polls `check` every few milliseconds until it returns true, failing the
/// test after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The path of a built binary of this workspace (`pere-server`, `pere-pub`,
/// `pere-sub`), next to the test executable's directory. Build them first:
/// the README's test command does (`cargo build --workspace` before `cargo
/// test`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/e2e-HASH → target/debug/NAME
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// A `pere-server` process on `127.0.0.1:0`, for what needs the real binary:
/// flags, the `--auth` file, restarts over a data directory, its memory.
/// Its stderr (banner and logs) is collected; it is killed when dropped.
pub struct ServerProcess {
    /// Where it listens (read from its banner).
    pub addr: SocketAddr,
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Starts `pere-server --host 127.0.0.1 --port 0 ARGS…` (with
    /// `--memory` unless `args` name a `--data-dir`) and waits until it
    /// answers `/healthz`.
    pub async fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(bin("pere-server"));
        cmd.args(["--host", "127.0.0.1", "--port", "0"]);
        if !args.contains(&"--data-dir") {
            cmd.arg("--memory");
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("pere-server starts");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        // Drains stderr for the whole run (a full pipe would block the
        // server) and reports the address from the banner.
        std::thread::spawn({
            let log = log.clone();
            move || {
                let mut tx = Some(tx);
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.trim().strip_prefix("listening")
                        && let Some(addr) = rest
                            .trim()
                            .strip_prefix("http://")
                            .or_else(|| rest.trim().strip_prefix("https://"))
                        && let Some(addr) = addr.split_whitespace().next()
                        && let Ok(addr) = addr.parse::<SocketAddr>()
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "pere-server printed no address: {}",
                    log.lock().unwrap().as_str()
                );
            }
        };
        let server = Self { addr, child, log };
        if args.contains(&"--tls-cert") {
            // Plain HTTP gets no answer there: the listener is enough (a
            // TLS test checks the rest with its own CA).
            eventually("pere-server accepts connections", || async {
                TcpStream::connect(server.addr).await.is_ok()
            })
            .await;
            return server;
        }
        eventually("pere-server answers /healthz", || async {
            request(server.addr, "GET", "/healthz", &[], b"")
                .await
                .status
                == 200
        })
        .await;
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its resident memory in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Sends one request and reads the whole response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.addr, method, path, headers, body).await
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns the log.
    pub fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "pere-server exits cleanly: {status}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pere-server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the drain thread catch the last lines.
        std::thread::sleep(Duration::from_millis(50));
        self.log()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, empty directory under the system's temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("pere-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The value of a gauge or counter in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
