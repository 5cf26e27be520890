//! TLS for the end-to-end tests: a [`TestCa`] made in the test (rcgen),
//! the server certificates it issues, and clients that trust it only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{HttpReader, Response, SseStream, raw_request};

/// A certificate authority for one test, in its own directory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (what `--ca` and `PERE_CA` take).
    pub ca_pem: PathBuf,
    /// Where its files are.
    pub dir: PathBuf,
    der: CertificateDer<'static>,
}

/// A server certificate and key issued by a [`TestCa`], as files.
pub struct Issued {
    /// The certificate, PEM (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key, PEM (`--tls-key`).
    pub key: PathBuf,
    /// The certificate, DER: what a client sees in the handshake.
    pub der: CertificateDer<'static>,
    /// The SubjectPublicKeyInfo of its key, DER (Chromium's SPKI pinning).
    pub spki: Vec<u8>,
}

impl TestCa {
    /// A fresh CA, its certificate written to `DIR/ca.pem`.
    pub fn new(name: &str) -> Self {
        let dir = crate::temp_dir(name);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("PERE test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        Self {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            ca_pem,
            dir,
        }
    }

    /// Issues a server certificate for `127.0.0.1` and `localhost`, written
    /// to `DIR/STEM.pem` and `DIR/STEM.key`.
    pub fn issue(&self, stem: &str) -> Issued {
        self.issue_with(stem, |_| {})
    }

    /// Issues a server certificate that expired in 2020.
    pub fn issue_expired(&self, stem: &str) -> Issued {
        self.issue_with(stem, |params| {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    /// Issues a server certificate, its parameters changed by `edit`.
    pub fn issue_with(&self, stem: &str, edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("pere test {stem}"));
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            der: cert.der().clone(),
            spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// A client configuration that trusts this CA only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Connects to `addr` over TLS, trusting this CA, offering `alpn`.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        alpn: &[&[u8]],
    ) -> TlsStream<TcpStream> {
        connect(addr, self.client_config(alpn)).await
    }

    /// Sends one HTTP/1.1 request over TLS and reads the whole response.
    pub async fn request(
        &self,
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let tls = self.connect(addr, &[b"http/1.1"]).await;
        let mut reader = HttpReader::over(tls);
        reader.send(&raw_request(method, path, headers, body)).await;
        let (status, headers) = reader.head().await;
        let body = reader.body(&headers, status).await;
        Response {
            status,
            headers,
            body,
        }
    }

    /// Opens an event stream over TLS and HTTP/1.1.
    pub async fn stream(
        &self,
        addr: std::net::SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> SseStream {
        let tls = self.connect(addr, &[b"http/1.1"]).await;
        SseStream::open_over(HttpReader::over(tls), path, headers).await
    }
}

/// Connects to `addr` over TLS with `config`, naming the server
/// `127.0.0.1`.
pub async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(
        crate::WAIT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("the TLS handshake ends in time")
    .unwrap()
}

/// The server certificate a TLS connection presented.
pub fn peer_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// The ALPN protocol a TLS connection agreed on.
pub fn alpn(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// A `pere-server` process serving TLS with `issued`.
pub async fn server_process(issued: &Issued, args: &[&str]) -> crate::ServerProcess {
    let cert = issued.cert.display().to_string();
    let key = issued.key.display().to_string();
    let mut all = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    all.extend_from_slice(args);
    crate::ServerProcess::start(&all).await
}

/// Removes a test CA's directory.
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
