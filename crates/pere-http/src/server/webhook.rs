//! Delivery of overdue notices to the publisher's backend: one `POST` of
//! the notice's JSON per (event, device) to `--webhook URL`.
//!
//! A notice is confirmed to the hub ([`Hub::notice_delivered`]) only after a
//! `2xx`; until then it is retried with backoff, a bounded number of times.
//! One that is never accepted stays unconfirmed in the journal and is sent
//! again after a restart; one that was accepted is never sent again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use pere_core::{EventStore, Hub, OverdueNotice};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::server::body::overdue_json;

/// Attempts per notice before giving up until the next restart.
pub const MAX_ATTEMPTS: u32 = 6;
/// Delay before the first retry; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Notices in flight at once.
const CONCURRENCY: usize = 16;

/// Where notices go: a plain `http://host:port/path` URL.
#[derive(Clone, Debug)]
pub struct Webhook {
    uri: Uri,
    authority: String,
    /// What became of the notices, for `/metrics`: shared by every clone
    /// (the server's configuration and the delivering task hold one each).
    stats: Arc<WebhookStats>,
}

impl PartialEq for Webhook {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
    }
}

impl Eq for Webhook {}

/// Outcomes of webhook deliveries since start.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Notices the webhook accepted (`2xx`).
    pub delivered: AtomicU64,
    /// Attempts that failed (connection, non-`2xx`, timeout).
    pub failed_attempts: AtomicU64,
    /// Notices given up after [`MAX_ATTEMPTS`] (sent again after a restart).
    pub given_up: AtomicU64,
}

impl Webhook {
    /// Parses and checks a webhook URL.
    ///
    /// # Errors
    /// [`Error::WebhookUrl`] for anything but an absolute `http://` URL.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why| Error::WebhookUrl {
            url: url.to_owned(),
            why,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "only http:// is supported; put a TLS proxy in front for https",
            ));
        }
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| bad("no host"))?;
        Ok(Self {
            uri,
            authority,
            stats: Arc::default(),
        })
    }

    /// What became of the notices sent to it.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// The URL.
    pub fn url(&self) -> String {
        self.uri.to_string()
    }

    fn socket_addr(&self) -> String {
        if self.authority.contains(':') && !self.authority.ends_with(']') {
            self.authority.clone()
        } else {
            format!("{}:80", self.authority)
        }
    }

    /// Refuses a webhook that would reach the server itself, listening on
    /// `listen`: every notice would come back as a request (a publish, if
    /// the path is `/push/…`, whose own deadline makes more notices). The
    /// host is resolved now; one that does not resolve is let through,
    /// with a warning, as it cannot be the server.
    ///
    /// # Errors
    /// [`Error::WebhookLoop`] naming the URL and the address.
    pub async fn check_not_server(&self, listen: SocketAddr) -> Result<()> {
        let resolved = match tokio::net::lookup_host(self.socket_addr()).await {
            Ok(addrs) => addrs.collect::<Vec<_>>(),
            Err(err) => {
                tracing::warn!(url = %self.uri, cause = %err, "cannot resolve the webhook's host now");
                return Ok(());
            }
        };
        match resolved.into_iter().find(|&to| reaches(to, listen)) {
            Some(_) => Err(Error::WebhookLoop {
                url: self.url(),
                addr: listen,
            }),
            None => Ok(()),
        }
    }

    /// One attempt: `Ok` on a `2xx`.
    async fn post(&self, body: Bytes) -> Result<()> {
        let stream = tokio::net::TcpStream::connect(self.socket_addr())
            .await
            .map_err(|source| Error::Io {
                context: format!("cannot connect to the webhook {}", self.uri),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("pere/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Drain the answer so the exchange completes cleanly.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::Status {
                status,
                message: format!("the webhook answered {status}"),
                code: None,
            })
        }
    }
}

/// Whether a connection to `to` reaches a listener bound to `listen`: the
/// same port, and the same address, or any address of this machine when
/// the listener is bound to all of them (`0.0.0.0`, or `[::]`, which takes
/// IPv4 too).
fn reaches(to: SocketAddr, listen: SocketAddr) -> bool {
    if to.port() != listen.port() {
        return false;
    }
    let to_ip = to.ip().to_canonical();
    let listen_ip = listen.ip().to_canonical();
    if !listen_ip.is_unspecified() {
        // Linux connects to 0.0.0.0 (or ::) as to the loopback address.
        let to_ip = match to_ip {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        return to_ip == listen_ip;
    }
    if listen_ip.is_ipv4() && to_ip.is_ipv6() {
        return false;
    }
    // Connecting to 0.0.0.0 reaches this machine; an address is this
    // machine's if a socket can be bound to it.
    to_ip.is_unspecified()
        || to_ip.is_loopback()
        || std::net::UdpSocket::bind(SocketAddr::new(to_ip, 0)).is_ok()
}

/// Delivers the hub's overdue notices to `webhook` until the hub shuts down.
pub async fn deliver<S: EventStore>(hub: Hub<S>, webhook: Webhook) {
    let mut notices = hub.overdue_notices();
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let webhook = Arc::new(webhook);
    while let Some(notice) = notices.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let hub = hub.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            send_one(&hub, &webhook, &notice).await;
            drop(slot);
        });
    }
}

async fn send_one<S: EventStore>(hub: &Hub<S>, webhook: &Webhook, notice: &OverdueNotice) {
    let body = Bytes::from(overdue_json(notice).to_string());
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=MAX_ATTEMPTS {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, webhook.post(body.clone())).await {
            Ok(Ok(())) => {
                webhook.stats.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(id = %notice.id, device = %notice.device, "overdue notice delivered");
                hub.notice_delivered(notice);
                return;
            }
            Ok(Err(err)) => {
                webhook
                    .stats
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id = %notice.id, device = %notice.device, attempt, cause = %err, "overdue notice not delivered");
            }
            Err(_) => {
                webhook
                    .stats
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id = %notice.id, device = %notice.device, attempt, "overdue notice timed out");
            }
        }
        if hub.is_closing() {
            return;
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    webhook.stats.given_up.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        id = %notice.id,
        device = %notice.device,
        url = %webhook.url(),
        "giving up on an overdue notice until the next restart"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_accepted() {
        let w = Webhook::parse("http://127.0.0.1:9000/hooks/pere").unwrap();
        assert_eq!(w.socket_addr(), "127.0.0.1:9000");
        assert_eq!(
            Webhook::parse("http://example.test/x")
                .unwrap()
                .socket_addr(),
            "example.test:80"
        );
        let https = Webhook::parse("https://example.test/").err().unwrap();
        assert_eq!(
            https.to_string(),
            "invalid URL `https://example.test/`: only http:// is supported; put a TLS proxy in front for https"
        );
        assert!(Webhook::parse("not a url").is_err());
        assert!(Webhook::parse("/relative").is_err());
    }

    #[test]
    fn the_server_s_own_address_is_spotted_however_it_is_bound() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        // Bound to one address: that address and port only.
        assert!(reaches(at("127.0.0.1:4567"), at("127.0.0.1:4567")));
        assert!(reaches(at("[::ffff:127.0.0.1]:4567"), at("127.0.0.1:4567")));
        assert!(!reaches(at("127.0.0.1:4568"), at("127.0.0.1:4567")));
        assert!(!reaches(at("127.0.0.2:4567"), at("127.0.0.1:4567")));
        assert!(!reaches(at("[::1]:4567"), at("127.0.0.1:4567")));
        // 0.0.0.0 and :: are connected to as the loopback address.
        assert!(reaches(at("0.0.0.0:4567"), at("127.0.0.1:4567")));
        assert!(reaches(at("[::]:4567"), at("[::1]:4567")));
        assert!(!reaches(at("0.0.0.0:4567"), at("127.0.0.2:4567")));
        // Bound to every IPv4 address: any local one, and 0.0.0.0 itself.
        for local in ["127.0.0.1:4567", "127.0.0.2:4567", "0.0.0.0:4567"] {
            assert!(reaches(at(local), at("0.0.0.0:4567")), "{local}");
        }
        assert!(!reaches(at("127.0.0.1:80"), at("0.0.0.0:4567")));
        assert!(!reaches(at("[::1]:4567"), at("0.0.0.0:4567")));
        // TEST-NET-3 (RFC 5737) is nobody's own address.
        assert!(!reaches(at("203.0.113.9:4567"), at("0.0.0.0:4567")));
        // Bound to [::]: IPv4 too.
        assert!(reaches(at("[::1]:4567"), at("[::]:4567")));
        assert!(reaches(at("127.0.0.1:4567"), at("[::]:4567")));
        assert!(!reaches(at("203.0.113.9:4567"), at("[::]:4567")));
    }

    #[tokio::test]
    async fn a_webhook_at_the_listening_address_is_refused_by_name() {
        let listen: SocketAddr = "127.0.0.1:4567".parse().unwrap();
        for url in ["http://127.0.0.1:4567/hooks", "http://localhost:4567/x"] {
            let err = Webhook::parse(url)
                .unwrap()
                .check_not_server(listen)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::WebhookLoop { .. }), "{err}");
            assert!(err.to_string().contains(url), "{err}");
        }
        let other = Webhook::parse("http://127.0.0.1:4568/hooks").unwrap();
        assert!(other.check_not_server(listen).await.is_ok());
    }
}
