//! An event stream as a test reads it: decoded with pere-http's WHATWG
//! decoder, with the raw bytes kept for exact assertions.

use std::net::SocketAddr;

use pere_http::sse::{Decoder, Item, SseEvent};
use tokio::net::TcpStream;

use crate::http::{HttpReader, raw_request};

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

    /// Sends exactly `request` on `stream` (one set up as a test needs it,
    /// a small receive buffer say) and reads the response as an event
    /// stream.
    pub async fn open_on(stream: TcpStream, request: &[u8]) -> Self {
        Self::start(HttpReader::new(stream), request).await
    }

    /// Sends `request` on `reader`'s connection and reads the response
    /// head; the body is read as an event stream from then on.
    pub(crate) async fn start(mut reader: HttpReader, request: &[u8]) -> Self {
        reader.send(request).await;
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
        crate::http::header_in(&self.headers, name)
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

    /// The data of the next `n` messages (see [`Self::messages`]).
    pub async fn data(&mut self, n: usize) -> Vec<String> {
        self.messages(n).await.into_iter().map(|e| e.data).collect()
    }

    /// The ids of the next `n` messages (see [`Self::messages`]).
    pub async fn ids(&mut self, n: usize) -> Vec<String> {
        self.messages(n).await.into_iter().map(|e| e.id).collect()
    }

    /// The JSON data of the next event, which must be the control event
    /// `kind` (`pere.hello`, `pere.gap`).
    pub async fn control(&mut self, kind: &str) -> serde_json::Value {
        let e = self.next_event().await.expect("a control event");
        assert_eq!(e.event, kind, "expected {kind}: {e:?}");
        serde_json::from_str(&e.data)
            .unwrap_or_else(|err| panic!("{kind} data is JSON ({err}): {e:?}"))
    }

    /// The JSON data of the `pere.hello` that must come next.
    pub async fn hello(&mut self) -> serde_json::Value {
        self.control("pere.hello").await
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
