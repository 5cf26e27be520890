//! TLS with rustls (no OpenSSL), on the aws-lc-rs provider: the server's
//! certificate ([`ServerTls`], `--tls-cert`/`--tls-key`, docs/PROTOCOL.md
//! §10) and what the client trusts for `https://` ([`ClientTls`], `--ca`).
//!
//! The server offers ALPN `h2` and `http/1.1`. Browsers speak HTTP/2 only
//! over TLS, and over HTTP/1.1 they open at most 6 connections per origin:
//! a page with a seventh EventSource waits. Over HTTP/2 every stream of a
//! page shares one connection.
//!
//! The certificate is read again by [`ServerTls::reload`] (the server binary
//! calls it on SIGHUP, after a renewal): handshakes from then on present the
//! new one, connections already open keep their session and their streams.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{Error, Result};

/// ALPN protocols offered by the server, preferred first.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider of every TLS configuration here.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_error(what: impl fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

/// The server's TLS settings: its certificate files and the rustls
/// configuration every handshake uses.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<CurrentCert>,
    config: Arc<rustls::ServerConfig>,
    /// What clients will hold against the certificate loaded at start.
    warnings: Vec<String>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads a PEM certificate chain (leaf first) and its PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`Error::Tls`] naming the file when one cannot be read or parsed, or
    /// when the key is not the certificate's.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self> {
        let (cert, key) = (cert.into(), key.into());
        let provider = provider();
        let (certified, warnings) = load_pair(&cert, &key, &provider, false)?;
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(certified))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            cert,
            key,
            current,
            config: Arc::new(config),
            warnings,
        })
    }

    /// What clients will hold against the certificate loaded at start
    /// (expired, not valid yet, a CA certificate, expiring within a week),
    /// for the operator to hear: it is served all the same.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Reads the certificate and key files again; new handshakes present
    /// them. On an error the certificate in use stays. Returns what
    /// clients will hold against the new one, as [`warnings`](Self::warnings).
    ///
    /// # Errors
    /// As [`load`](Self::load); and a certificate outside its validity
    /// (expired, or not valid yet) is not taken in place of the current one.
    pub fn reload(&self) -> Result<Vec<String>> {
        let (certified, warnings) = load_pair(&self.cert, &self.key, &provider(), true)?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(warnings)
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// An acceptor for one connection's handshake.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// The certificate handshakes present: swapped whole by a reload.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The pair of files as rustls serves it, and what clients will hold
/// against its certificate; with `refuse_invalid`, a certificate outside
/// its validity is an error instead.
fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
    refuse_invalid: bool,
) -> Result<(CertifiedKey, Vec<String>)> {
    let chain = read_certs(cert)?;
    let mut warnings = Vec::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match leaf_check(&chain[0], now) {
        LeafCheck::Invalid(why) if refuse_invalid => {
            return Err(tls_error(format!(
                "the certificate `{}` {why}",
                cert.display()
            )));
        }
        LeafCheck::Invalid(why) | LeafCheck::Warn(why) => {
            warnings.push(format!("the certificate `{}` {why}", cert.display()));
        }
        LeafCheck::Fine => {}
    }
    if is_ca(&chain[0]) {
        warnings.push(format!(
            "the certificate `{}` is a CA certificate (basicConstraints CA:TRUE): clients built on rustls or webpki refuse one as a server's own; put the server's own certificate first",
            cert.display()
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        tls_error(format!(
            "cannot read a PEM private key from `{}`: {e}",
            key.display()
        ))
    })?;
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        tls_error(format!(
            "the key `{}` cannot serve the certificate `{}`: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok((certified, warnings))
}

/// What the leaf's validity says at `now` (Unix seconds).
#[derive(Debug, PartialEq, Eq)]
enum LeafCheck {
    Fine,
    /// Expiring within [`EXPIRY_WARNING`].
    Warn(String),
    /// Expired, or not valid yet: every client refuses it.
    Invalid(String),
}

/// How long before its expiry a certificate is warned of.
const EXPIRY_WARNING: i64 = 7 * 24 * 3600;
/// How far in the future a certificate's start may be and still be taken
/// on SIGHUP (clocks of a CA and a server disagree).
const CLOCK_SKEW: i64 = 3600;

fn leaf_check(leaf: &CertificateDer<'_>, now: i64) -> LeafCheck {
    // rustls checked nothing of this: a certificate it cannot read the
    // validity of is left to the clients.
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) else {
        return LeafCheck::Fine;
    };
    let validity = parsed.validity();
    let (not_before, not_after) = (validity.not_before, validity.not_after);
    if not_after.timestamp() < now {
        LeafCheck::Invalid(format!("expired on {not_after}: every client refuses it"))
    } else if not_before.timestamp() > now + CLOCK_SKEW {
        LeafCheck::Invalid(format!(
            "is not valid before {not_before}: every client refuses it until then"
        ))
    } else if not_before.timestamp() > now {
        // Issued a moment ago by a CA whose clock is ahead: taken, and
        // clients with the right time accept it soon.
        LeafCheck::Warn(format!(
            "is not valid before {not_before} by this machine's clock: clients whose clock is behind refuse it until then"
        ))
    } else if not_after.timestamp() - now < EXPIRY_WARNING {
        LeafCheck::Warn(format!(
            "expires on {not_after}: renew it and send the server SIGHUP"
        ))
    } else {
        LeafCheck::Fine
    }
}

/// Whether the leaf says it is a certificate authority.
fn is_ca(leaf: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(leaf).is_ok_and(|(_, parsed)| parsed.is_ca())
}

/// Every certificate of a PEM file, in order; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: &dyn fmt::Display| {
        tls_error(format!(
            "cannot read PEM certificates from `{}`: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"the file holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// What an `https://` client trusts: the system's roots, or the
/// certificates of a `--ca` file.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

/// The trust every `https://` connection of the process uses when it was
/// given none (see [`ClientTls::install`]).
static DEFAULT_CLIENT: OnceLock<ClientTls> = OnceLock::new();
/// The system's roots, read once.
static SYSTEM: OnceLock<ClientTls> = OnceLock::new();

impl ClientTls {
    /// Trusts the certificates (CA or self-signed) of a PEM file, only.
    ///
    /// # Errors
    /// [`Error::Tls`] when the file cannot be read or holds no certificate.
    pub fn with_ca(path: impl AsRef<Path>) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(path.as_ref())? {
            roots.add(cert).map_err(|e| {
                tls_error(format!(
                    "a certificate of `{}` cannot be a trust anchor: {e}",
                    path.as_ref().display()
                ))
            })?;
        }
        Self::with_roots(roots)
    }

    /// Trusts the system's root certificates (as OpenSSL finds them:
    /// `SSL_CERT_FILE`, `SSL_CERT_DIR`, or the distribution's bundle).
    ///
    /// # Errors
    /// [`Error::Tls`] when none can be found.
    pub fn system() -> Result<Self> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(tls_error(format!(
                "no system root certificate found ({} errors); give the server's CA with --ca",
                found.errors.len()
            )));
        }
        Self::with_roots(roots)
    }

    fn with_roots(roots: rustls::RootCertStore) -> Result<Self> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The client speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The tools' `--ca FILE` (else `PERE_CA`): installs that file's trust
    /// for the process (see [`install`](Self::install)); without either,
    /// `https://` trusts the system's roots.
    ///
    /// # Errors
    /// As [`with_ca`](Self::with_ca).
    pub fn install_ca_option(flag: Option<&str>) -> Result<()> {
        let from_env = std::env::var("PERE_CA").ok();
        let path = flag
            .or(from_env.as_deref())
            .filter(|p| !p.trim().is_empty());
        if let Some(path) = path {
            Self::with_ca(path)?.install();
        }
        Ok(())
    }

    /// Makes this the trust of every `https://` connection of the process
    /// (the tools' `--ca`). Only the first call counts.
    pub fn install(self) -> bool {
        DEFAULT_CLIENT.set(self).is_ok()
    }

    /// The installed trust, else the system's (loaded once).
    pub(crate) fn default_for_process() -> Result<Self> {
        if let Some(installed) = DEFAULT_CLIENT.get() {
            return Ok(installed.clone());
        }
        if let Some(system) = SYSTEM.get() {
            return Ok(system.clone());
        }
        let system = Self::system()?;
        Ok(SYSTEM.get_or_init(|| system).clone())
    }

    /// Opens TLS to `host` over `stream`, checking the certificate names
    /// `host` (a DNS name or an IP address).
    pub(crate) async fn connect(
        &self,
        host: &str,
        stream: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| tls_error(format!("`{host}` is not a host name for TLS")))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| {
                let mut why = format!("TLS handshake with {host} failed: {e}");
                if why.contains("CaUsedAsEndEntity") {
                    // OpenSSL 3 makes a self-signed certificate a CA unless
                    // told otherwise; rustls, like browsers, refuses one.
                    why.push_str(
                        " (the server's certificate is a CA certificate: make a self-signed one with -addext basicConstraints=critical,CA:FALSE, as the README's TLS section shows)",
                    );
                } else if why.contains("invalid peer certificate") {
                    // Most often a certificate of one's own, which the
                    // system's roots do not vouch for.
                    why.push_str(
                        " (a certificate of your own? give the CA that signed it, or the self-signed certificate itself, with --ca FILE)",
                    );
                }
                tls_error(why)
            })
    }
}
