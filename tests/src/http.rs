//! A raw HTTP/1.1 client that shows exact bytes: one request per
//! connection ([`request`], [`send_raw`]), several on a kept-alive one
//! ([`Connection`]), and the response reader under both ([`HttpReader`]).

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;
use crate::sse::SseStream;

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

/// The first value of header `name` (case-insensitive) among `headers`,
/// whose names the reader stored lowercase.
pub(crate) fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
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

/// Sends a keep-alive `GET /healthz` and `second` in one write on a fresh
/// connection (so that hyper, not the server's own paths, reads `second`,
/// and in the same read as the first), and reads the answer to `second`
/// up to its head.
pub async fn behind_healthz(addr: SocketAddr, second: &[u8]) -> (u16, Vec<(String, String)>) {
    let mut both = raw_request("GET", "/healthz", &[("Connection", "keep-alive")], b"");
    both.extend_from_slice(second);
    let mut reader = HttpReader::new(TcpStream::connect(addr).await.unwrap());
    reader.send(&both).await;
    let (status, headers) = reader.head().await;
    assert_eq!(status, 200, "GET /healthz");
    reader.body(&headers, status).await;
    reader.head().await
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
        self.reader.send(bytes).await;
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
