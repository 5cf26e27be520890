//! `pere-load`: the load generator behind `pere-sub --devices` and
//! `pere-pub --concurrency`: many simulated devices and publishers against
//! PERE or nginx + nchan, with latency percentiles, loss, duplicates,
//! reorder and receipts counted. Internal (`publish = false`): the figures
//! of `benches/e2e-vs-nchan.sh` and the README rest on it.
//!
//! It is not part of `pere-http` because it is neither the server nor a
//! client an application would embed: a simulated device speaks HTTP/1.1
//! through hyper's own client connection and nothing else, so that ten
//! thousand of them cost what ten thousand connections cost. From
//! `pere-http` it takes only the address syntax ([`pere_http::client::Address`])
//! and the SSE decoder.
//!
//! - [`devices`]: N devices, each on its own connection (`GET /feed/:ch`,
//!   or nchan's `GET /sub/:ch`), optionally acknowledging every event.
//! - [`publish`]: K concurrent publishers (`POST /push/:ch`, or nchan's
//!   `POST /pub/:ch`), paced or as fast as the server answers.
//!
//! The two agree on the payload ([`payload`], [`Stamp`]): a JSON object with
//! the send time in unix microseconds (`"t"`) and the event's sequence number
//! on its channel (`"c"`), padded to the requested size. Every run is bounded
//! by an event count or a duration.

pub mod devices;
mod histogram;
pub mod publish;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

pub use histogram::Histogram;

use pere_http::client::{Address, encode_component};

/// Which server the load talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// PERE: `POST /push/:ch`, `GET /feed/:ch`, receipts on `/feedback/:ch`.
    Pere,
    /// nginx + nchan: `POST /pub/:ch`, `GET /sub/:ch`, no receipts.
    Nchan,
}

impl Flavor {
    /// The path of a publish on `channel`.
    pub fn publish_path(self, channel: &str) -> String {
        match self {
            Flavor::Pere => format!("/push/{}", encode_component(channel)),
            Flavor::Nchan => format!("/pub/{}", encode_component(channel)),
        }
    }

    /// The path of a subscription to `channel`.
    pub fn feed_path(self, channel: &str) -> String {
        match self {
            Flavor::Pere => format!("/feed/{}", encode_component(channel)),
            Flavor::Nchan => format!("/sub/{}", encode_component(channel)),
        }
    }
}

/// The channel of device or event number `n` when the load is spread over
/// `channels` channels: `BASE` for one, `BASE.<n % channels>` for several.
pub fn channel_name(base: &str, channels: u32, n: u64) -> String {
    if channels <= 1 {
        base.to_string()
    } else {
        format!("{base}.{}", n % u64::from(channels))
    }
}

/// Microseconds since the Unix epoch, now.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Smallest payload [`payload`] makes (the JSON around the numbers).
pub const MIN_PAYLOAD: usize = 48;

/// A load payload of `size` bytes (at least [`MIN_PAYLOAD`]):
/// `{"t":<send time, unix µs>,"c":<sequence on its channel>,"p":"xx…"}`.
pub fn payload(t: u64, seq: u64, size: usize) -> String {
    let mut s = format!("{{\"t\":{t},\"c\":{seq},\"p\":\"");
    let pad = size.max(MIN_PAYLOAD).saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// What a device reads back from a load payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, unix µs.
    pub t: u64,
    /// Sequence number on its channel.
    pub seq: u64,
}

impl Stamp {
    /// Reads `"t"` and `"c"` from a [`payload`]; `None` for anything else.
    pub fn parse(data: &str) -> Option<Self> {
        Some(Self {
            t: number_after(data, "\"t\":")?,
            seq: number_after(data, "\"c\":")?,
        })
    }
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text.get(start..start + digits)?.parse().ok()
}

/// An event id as a comparable key: PERE's decimal ids, or nchan's
/// `time:tag` ids (`1700000000:3`); `None` when it is neither.
pub fn id_key(id: &str) -> Option<(u64, u64)> {
    match id.split_once(':') {
        None => Some((id.parse().ok()?, 0)),
        Some((a, b)) => {
            let b = b.split(|c: char| !c.is_ascii_digit()).next()?;
            Some((a.parse().ok()?, b.parse().ok()?))
        }
    }
}

/// Resolves `addr` to one socket address.
///
/// # Errors
/// The name does not resolve.
pub async fn resolve(addr: &Address) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host((addr.host(), addr.port()))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))
}

/// Connections per loopback source address (the ephemeral port range of one
/// source address holds about 28,000, and the previous run's connections
/// may still hold theirs in TIME_WAIT).
pub const CONNECTIONS_PER_SOURCE: u64 = 5_000;

/// Loopback source addresses used: `127.0.0.2` … `127.0.0.251`.
const SOURCES: u64 = 250;

/// The source address of connection number `n` to `server`: spread over
/// `127.0.0.x` for a loopback IPv4 server, so that tens of thousands of
/// connections do not run out of ephemeral ports; `None` (the kernel's
/// choice) otherwise. The first address depends on the process id, so
/// back-to-back runs mostly use fresh addresses.
pub fn source_for(server: SocketAddr, n: u64) -> Option<IpAddr> {
    source_from(server, n, u64::from(std::process::id()) * 7)
}

fn source_from(server: SocketAddr, n: u64, base: u64) -> Option<IpAddr> {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let last = 2 + (base + n / CONNECTIONS_PER_SOURCE) % SOURCES;
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last as u8)))
        }
        _ => None,
    }
}

/// Opens a TCP connection to `server`, from `source` when given, within
/// `timeout`, with `TCP_NODELAY`.
///
/// # Errors
/// The bind or connect failed or timed out.
pub async fn connect_from(
    server: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        // Lets the kernel give this socket a local port that an earlier
        // run's connection still holds in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(server))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One HTTP/1.1 connection whose driving task is aborted on drop.
pub(crate) struct Conn {
    pub(crate) sender: http1::SendRequest<Full<Bytes>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn open(
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> Result<Conn, String> {
    let stream = connect_from(server, source, Duration::from_secs(10))
        .await
        .map_err(|e| format!("connect to {server} from {source:?}: {e}"))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    })
    .abort_handle();
    Ok(Conn { sender, task })
}

/// Sends `req` on the connection in `slot` (opening one if there is none
/// or the server closed it) and reads the whole answer, within 30 s. A
/// connection that failed or timed out is dropped from `slot`; the answer's
/// status is the caller's to judge.
pub(crate) async fn exchange(
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
    slot: &mut Option<Conn>,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), String> {
    use http_body_util::BodyExt;
    if slot.as_ref().is_some_and(|c| c.sender.is_closed()) {
        *slot = None;
    }
    let conn = match slot {
        Some(c) => c,
        None => slot.insert(open(server, source).await?),
    };
    let exchange = async {
        conn.sender.ready().await.map_err(|e| with_causes(&e))?;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| with_causes(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| with_causes(&e))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => {
            *slot = None;
            Err(e)
        }
        Err(_) => {
            *slot = None;
            Err("no answer within 30 s".into())
        }
    }
}

/// An error with its causes: hyper's say only "connection error", and
/// what the socket said is in the source.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `status {status}: {the body's first 200 bytes}`, for a refused request.
pub(crate) fn refusal(status: hyper::StatusCode, body: &[u8]) -> String {
    format!(
        "status {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    )
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns the
/// soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() && limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// SIGINT and SIGTERM, as one future.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    /// The next one, as the number a shell adds to 128 (2 or 15).
    pub(crate) async fn recv(&mut self) -> u8 {
        #[cfg(unix)]
        let term = async {
            match self.term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
                2
            }
            () = term => 15,
        }
    }

    /// After the first signal, while the run winds down (up to 40 s for
    /// publishes in flight to a server that hangs): a second one exits at
    /// once. Caught, it would otherwise be ignored.
    pub(crate) fn exit_on_next(mut self, tool: &'static str) {
        tokio::spawn(async move {
            let sig = self.recv().await;
            eprintln!("{tool}: a second signal: exiting without the report");
            std::process::exit(128 + i32::from(sig));
        });
    }
}

/// Runs a load mode's future on a fresh multi-threaded runtime, for the
/// CLIs; `None` (after saying why on stderr) if no runtime could start.
pub fn block_on<F: std::future::Future>(tool: &str, run: F) -> Option<F::Output> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{tool}: cannot start the runtime: {err}");
            return None;
        }
    };
    let out = runtime.block_on(run);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Some(out)
}

/// Prints a finished run as the load modes do: the summary lines and the
/// first error on stderr, the JSON report on stdout.
pub fn print_report(
    tool: &str,
    text: &[String],
    first_error: Option<&str>,
    json: &serde_json::Value,
) {
    for line in text {
        eprintln!("{tool}: {line}");
    }
    if let Some(err) = first_error {
        eprintln!("{tool}: first error: {err}");
    }
    println!("{json}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn payloads_have_the_size_asked_and_parse_back() {
        for size in [0, 48, 128, 1000] {
            let p = payload(1_700_000_000_123_456, 42, size);
            assert_eq!(p.len(), size.max(MIN_PAYLOAD), "{p}");
            assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
            assert_eq!(
                Stamp::parse(&p),
                Some(Stamp {
                    t: 1_700_000_000_123_456,
                    seq: 42
                })
            );
        }
        assert_eq!(Stamp::parse("hello"), None);
        assert_eq!(Stamp::parse("{\"t\":,\"c\":1}"), None);
    }

    #[test]
    fn ids_of_both_servers_compare() {
        assert_eq!(id_key("17"), Some((17, 0)));
        assert!(id_key("1700000000:3").unwrap() < id_key("1700000000:4").unwrap());
        assert!(id_key("1700000000:9").unwrap() < id_key("1700000001:0").unwrap());
        assert_eq!(id_key("x"), None);
        assert_eq!(id_key(""), None);
    }

    #[test]
    fn channels_and_sources_spread() {
        assert_eq!(channel_name("c", 1, 7), "c");
        assert_eq!(channel_name("c", 10, 17), "c.7");
        let server: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(
            source_from(server, 0, 0),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(
            source_from(server, CONNECTIONS_PER_SOURCE, 0),
            Some("127.0.0.3".parse().unwrap())
        );
        assert_eq!(
            source_from(server, 0, SOURCES - 1),
            Some("127.0.0.251".parse().unwrap())
        );
        assert_eq!(
            source_from(server, 0, SOURCES),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(source_for("10.0.0.1:80".parse().unwrap(), 0), None);
    }
}
