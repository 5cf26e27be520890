//! Real clients of the TLS server (docs/PROTOCOL.md §10, issue 17): curl
//! over HTTP/2, `pere-pub`/`pere-sub` over `https://` with `--ca`, and a
//! page in headless Chromium holding more EventSources than the 6 HTTP/1.1
//! connections a browser allows per origin, over one HTTP/2 connection.

use serde_json::Value;

use crate::tls::{h2, h2_call, tls_server, tls_server_issued};
use pere_tests::raw::read_until;
use pere_tests::tls::{TestCa, server_process};
use pere_tests::{TestServer, WAIT, eventually};

/// Runs `curl ARGS…` (bounded) and returns its stdout.
async fn curl(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl ends in time")
    .expect("curl is installed (apt-get install -y curl; .ci/run does)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `HEAD` is accepted wherever `GET` is, over HTTP/2 too: the server once
/// sent the body as DATA after the headers, which HTTP/2 forbids after a
/// `HEAD` (curl: "HTTP/2 stream 1 was not closed cleanly: PROTOCOL_ERROR").
#[tokio::test]
async fn head_over_http2_answers_headers_only() {
    let ca = TestCa::new("tls-head");
    let server = tls_server(&ca, TestServer::builder()).await;
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let cacert = ca.ca_pem.display().to_string();
    for path in ["/healthz", "/", "/subscriber.html", "/admin/connections"] {
        let head = curl(&[
            "--http2",
            "--cacert",
            &cacert,
            "-sS",
            "-I",
            &format!("{base}{path}"),
        ])
        .await
        .to_ascii_lowercase();
        assert!(head.starts_with("http/2 200"), "{path}: {head}");
        let get = curl(&[
            "--http2",
            "--cacert",
            &cacert,
            "-sS",
            &format!("{base}{path}"),
        ])
        .await;
        assert!(
            head.contains(&format!("content-length: {}\r\n", get.len())),
            "{path}: the length a GET would have: {head}"
        );
    }
    // Plain HTTP/2 (prior knowledge) and HTTP/1.1 alike.
    let plain = TestServer::start().await;
    let url = format!("http://{}/healthz", plain.addr);
    for version in ["--http2-prior-knowledge", "--http1.1"] {
        let head = curl(&[version, "-sS", "-I", &url])
            .await
            .to_ascii_lowercase();
        assert!(head.contains(" 200"), "{version}: {head}");
        assert!(head.contains("content-length: 2\r\n"), "{version}: {head}");
    }
}

#[tokio::test]
async fn curl_speaks_http2_to_the_tls_server() {
    let ca = TestCa::new("tls-curl");
    let server = tls_server(&ca, TestServer::builder()).await;
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let cacert = ca.ca_pem.display().to_string();
    let version = curl(&[
        "--http2",
        "--cacert",
        &cacert,
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &format!("{base}/healthz"),
    ])
    .await;
    assert_eq!(version, "2");
    // A stream read by curl over HTTP/2, fed by a publish from curl.
    let mut stream = tokio::process::Command::new("curl")
        .args([
            "--http2",
            "--cacert",
            &cacert,
            "-sSN",
            "--max-time",
            "20",
            "-H",
            "device: curl-1",
        ])
        .arg(format!("{base}/feed/c"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = stream.stdout.take().unwrap();
    let mut got = Vec::new();
    read_until(&mut out, &mut got, "pere.hello").await;
    let published = curl(&[
        "--http2",
        "--cacert",
        &cacert,
        "-sS",
        "--data-binary",
        "hello over h2",
        &format!("{base}/push/c"),
    ])
    .await;
    assert!(published.contains("\"id\""), "{published}");
    read_until(&mut out, &mut got, "data: hello over h2").await;
    let _ = stream.start_kill();
    let _ = stream.wait().await;
    server.stop().await;
    pere_tests::tls::remove(&ca.dir);
}

/// Runs a built tool (bounded); its exit status, stdout and stderr.
async fn tool(name: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(pere_tests::bin(name))
            .args(args)
            .envs(env.iter().copied())
            .env_remove("PERE_CA")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the tool ends in time")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_tools_work_over_https_with_their_ca() {
    let ca = TestCa::new("tls-cli");
    let issued = ca.issue("server");
    let server = server_process(&issued, &[]).await;
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let cacert = ca.ca_pem.display().to_string();
    let (ok, _, err) = tool(
        "pere-pub",
        &[&url, "c", "--data", "first", "--ca", &cacert],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = tool(
        "pere-sub",
        &[
            &url,
            "c",
            "--count",
            "1",
            "--replay-all",
            "--json",
            "--ca",
            &cacert,
        ],
        &[],
    )
    .await;
    assert!(ok && out.contains("first"), "{out} {err}");
    // PERE_CA does what --ca does.
    let env = [("PERE_CA", cacert.as_str())];
    let (ok, out, err) = {
        let out = tokio::process::Command::new(pere_tests::bin("pere-sub"))
            .args([
                &url,
                "c",
                "--count",
                "1",
                "--replay-all",
                "--device",
                "by-env",
            ])
            .envs(env)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok && out.contains("first"), "{out} {err}");
    // Without the CA, the server's certificate is not trusted.
    let (ok, _, err) = tool(
        "pere-pub",
        &[&url, "c", "--data", "x", "--retries", "0"],
        &[],
    )
    .await;
    assert!(!ok, "an untrusted certificate must fail");
    assert!(
        err.to_lowercase().contains("certificate") && err.contains("--ca"),
        "says what to give: {err}"
    );
    // Plain HTTP to the TLS port: the server answers with a TLS alert.
    // That is no lost answer (exit 4, "the outcome is unknown"): nothing
    // was published, and the port wants https.
    let plain = format!("127.0.0.1:{}", server.addr.port());
    let out = tokio::process::Command::new(pere_tests::bin("pere-pub"))
        .args([&plain, "c", "--data", "x", "--retries", "0"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("use {url}")), "{err}");
    // A --ca that is no certificate is a usage error.
    let (ok, _, err) = tool(
        "pere-pub",
        &[
            &url,
            "c",
            "--data",
            "x",
            "--ca",
            &issued.key.display().to_string(),
        ],
        &[],
    )
    .await;
    assert!(!ok && err.contains("--ca"), "{err}");
    server.stop();
    pere_tests::tls::remove(&ca.dir);
}

/// Standard base64, padded (Chromium's SPKI pins).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn a_page_in_chromium_holds_more_than_six_eventsources_over_http2() {
    use sha2::Digest;
    const STREAMS: usize = 10;
    let ca = TestCa::new("tls-chromium");
    let (server, issued) = tls_server_issued(&ca, TestServer::builder()).await;
    // The test profile trusts exactly this certificate's key.
    let pin = base64(&sha2::Sha256::digest(&issued.spki));
    let mut browser =
        crate::web::Browser::launch_with(&[format!("--ignore-certificate-errors-spki-list={pin}")])
            .await;
    let origin = format!("https://127.0.0.1:{}", server.addr.port());
    browser.open(&format!("{origin}/healthz"), 800, 600).await;
    browser
        .call(true, "Network.enable", serde_json::json!({}))
        .await
        .unwrap();
    browser
        .eval(&format!(
            "window.got = []; window.sources = []; for (let i = 0; i < {STREAMS}; i++) {{ \
               const es = new EventSource('/feed/web' + i + '?device=w' + i); \
               es.onmessage = (e) => {{ window.got[i] = e.data; }}; \
               window.sources.push(es); }} true"
        ))
        .await
        .unwrap();
    browser
        .wait_for(
            "every EventSource is open",
            "window.sources.every((es) => es.readyState === 1)",
        )
        .await;
    let mut send = h2(&ca, server.addr).await;
    for i in 0..STREAMS {
        eventually("the page's devices are online", || async {
            let (_, body) = h2_call(
                &mut send.clone(),
                "GET",
                &format!("/admin/devices/web{i}"),
                &[],
                "",
            )
            .await;
            serde_json::from_slice::<Value>(&body).unwrap()[format!("w{i}")]["online"] == true
        })
        .await;
        let (status, _) = h2_call(
            &mut send,
            "POST",
            &format!("/push/web{i}"),
            &[],
            &format!("e{i}"),
        )
        .await;
        assert_eq!(status, 201);
    }
    browser
        .wait_for(
            "each EventSource received its own event",
            &format!(
                "window.got.length === {STREAMS} && window.got.every((d, i) => d === 'e' + i)"
            ),
        )
        .await;
    // The page and every stream went over HTTP/2.
    let page = browser
        .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await
        .unwrap();
    assert_eq!(page, "h2");
    let feeds: Vec<&Value> = browser
        .responses
        .iter()
        .filter(|r| {
            r["response"]["url"]
                .as_str()
                .is_some_and(|u| u.contains("/feed/web"))
        })
        .collect();
    assert_eq!(feeds.len(), STREAMS, "{:?}", browser.responses);
    for r in feeds {
        assert_eq!(r["response"]["protocol"], "h2", "{r}");
    }
    browser.close().await;
    server.stop().await;
    pere_tests::tls::remove(&ca.dir);
}
