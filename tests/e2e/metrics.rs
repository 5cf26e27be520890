//! `/metrics` as an operator scrapes it (issue 18.11): the exposition passes
//! `promtool check metrics` (Debian's `prometheus` package; `.ci/run`
//! installs it), and it counts what an operator needs: latency histograms,
//! unacknowledged receipts, overdue notices and the webhook's outcomes,
//! errors by code, auth failures, idempotent replays, redeliveries, gaps,
//! the process's memory, descriptors and CPU, build and uptime.

use std::process::Stdio;
use std::time::Duration;

use pere_core::{Grants, Token};
use pere_tests::{TestServer, eventually};
use tokio::io::AsyncWriteExt;

use crate::overdue::Receiver;

/// Where promtool is looked for.
const PROMTOOL: &str = "promtool";

/// `promtool check metrics` on `text`: its complaints, empty when none.
async fn promtool(text: &str) -> String {
    let mut child = tokio::process::Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "the metrics test needs promtool ({e}): install it with \
                 `apt-get install -y prometheus` (Debian)"
            )
        });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(pere_tests::WAIT, child.wait_with_output())
        .await
        .expect("promtool finishes")
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        String::new()
    } else {
        format!("{}: {said}", out.status)
    }
}

/// The value of the sample `name` (with its labels, as written) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[tokio::test]
async fn the_exposition_passes_promtool_and_counts_what_an_operator_needs() {
    let webhook = Receiver::start(1).await;
    let server = TestServer::builder()
        .ack_deadline(Duration::from_millis(200))
        .tick(Duration::from_millis(50))
        .history(3)
        .webhook(&format!("http://{}/hook", webhook.addr))
        .start()
        .await;
    // Fresh: already valid, every family present.
    let fresh = server.metrics().await;
    assert_eq!(promtool(&fresh).await, "", "{fresh}");

    let mut d = server.subscribe("c", "d").await;
    let _late = server.subscribe("c", "late").await;
    let first = server.publish("c", "1").await;
    let second = server.publish("c", "2").await;
    d.messages(2).await;
    server.ack("c", "d", &first).await;
    // An idempotent retry, an error, and a stream resuming after an event
    // that retention dropped.
    for _ in 0..2 {
        let r = server
            .post("/push/c", &[("Idempotency-Key", "k-1")], b"3")
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    server.publish("c", "4").await;
    assert_eq!(server.get("/nowhere").await.status, 404);
    let mut gap = server.stream("/feed/c", &[("Last-Event-ID", "1")]).await;
    assert_eq!(gap.next_event().await.unwrap().event, "pere.hello");
    assert_eq!(gap.next_event().await.unwrap().event, "pere.gap");
    drop(gap);
    // The deadline passes for what nobody acknowledged; the webhook refuses
    // the first notice once, then takes them all.
    eventually("overdue notices delivered", || async {
        let text = server.metrics().await;
        sample(&text, "pere_webhook_notices_total{outcome=\"delivered\"}") >= 1.0
    })
    .await;

    let text = server.metrics().await;
    assert_eq!(promtool(&text).await, "", "{text}");
    assert_eq!(sample(&text, "pere_idempotent_replays_total"), 1.0);
    assert_eq!(sample(&text, "pere_gaps_total"), 1.0);
    assert_eq!(
        sample(&text, "pere_http_errors_total{code=\"not_found\"}"),
        1.0
    );
    // Three events retained (the first was dropped, with late's pair), to
    // two devices, none acknowledged: six pairs.
    assert_eq!(sample(&text, "pere_receipts_unacked"), 6.0, "{second}");
    assert!(sample(&text, "pere_overdue_notices_total") >= 1.0);
    assert!(sample(&text, "pere_webhook_failed_attempts_total") >= 1.0);
    assert!(sample(&text, "pere_publish_to_delivered_seconds_count") >= 2.0);
    assert_eq!(sample(&text, "pere_publish_to_acked_seconds_count"), 1.0);
    assert!(sample(&text, "pere_publish_to_acked_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    assert!(sample(&text, "pere_journal_write_seconds_count") >= 5.0);
    assert!(sample(&text, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&text, "process_open_fds") > 3.0);
    assert!(sample(&text, "process_max_fds") > 0.0);
    assert!(sample(&text, "process_cpu_seconds_total") >= 0.0);
    assert!(sample(&text, "process_start_time_seconds") > 1.6e9);
    assert!(sample(&text, "pere_uptime_seconds") > 0.0);
    assert_eq!(
        sample(
            &text,
            &format!(
                "pere_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(!webhook.received().is_empty());

    // Authentication failures, by status.
    let admin = Token::new("metrics-admin-token-0001").unwrap();
    server.hub.auth().enable(vec![(
        admin,
        Grants {
            subject: pere_core::DeviceId::new("ops").unwrap(),
            subscribe: Vec::new(),
            publish: Vec::new(),
            admin: true,
        },
    )]);
    assert_eq!(server.get("/admin/channels").await.status, 401);
    let text = server
        .request(
            "GET",
            "/metrics",
            &[("Authorization", "Bearer metrics-admin-token-0001")],
            b"",
        )
        .await
        .text();
    assert_eq!(
        sample(&text, "pere_auth_failures_total{status=\"401\"}"),
        1.0
    );
    assert_eq!(promtool(&text).await, "", "{text}");
}

/// What a connection sends that never reaches a handler (a request line
/// that is not HTTP, a head over `--max-header-bytes`, a head that does not
/// arrive in `--header-timeout`) is answered with §8's JSON by the
/// connection itself, and was not counted: an operator saw none of these
/// clients in `pere_http_errors_total` (a probe's finding).
#[tokio::test]
async fn answers_of_the_connection_itself_are_counted() {
    let server = TestServer::builder()
        .header_read_timeout(Duration::from_millis(300))
        .max_header_bytes(8192)
        .start()
        .await;
    let long = format!(
        "GET /healthz HTTP/1.1\r\nx-long: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let cases: [(&[u8], &str); 3] = [
        (b"NOT HTTP AT ALL\r\n\r\n", "HTTP/1.1 400"),
        (long.as_bytes(), "HTTP/1.1 431"),
        (b"GET /healthz HT", "HTTP/1.1 408"),
    ];
    for (sent, status) in cases {
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        socket.write_all(sent).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            pere_tests::WAIT,
            tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut answer),
        )
        .await
        .expect("the server answers and closes")
        .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(status), "{status}: {answer}");
    }
    let text = server.metrics().await;
    assert_eq!(promtool(&text).await, "", "{text}");
    for code in ["invalid_request", "headers_too_large", "request_timeout"] {
        assert_eq!(
            sample(&text, &format!("pere_http_errors_total{{code=\"{code}\"}}")),
            1.0,
            "{code}"
        );
    }
    assert_eq!(
        sample(&text, "pere_http_responses_total{class=\"4xx\"}"),
        3.0
    );
}

/// Issue 18.11: `docs/grafana/pere.json` charts the exposition; every
/// metric it queries is one the server exports (a renamed metric would
/// leave an empty panel).
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_server_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/pere.json");
    let text = std::fs::read_to_string(path).expect("docs/grafana/pere.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        serde_json::Value::String(s) if k == "expr" => out.push(s.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(list) => list.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "{queries:?}");
    let server = TestServer::start().await;
    let exported = server.metrics().await;
    let mut used = std::collections::BTreeSet::new();
    for query in &queries {
        for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("pere_") || word.starts_with("process_") {
                used.insert(word.strip_suffix("_bucket").unwrap_or(word).to_string());
            }
        }
    }
    for family in &used {
        assert!(
            exported.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {family}, which /metrics does not export"
        );
    }
    for needed in [
        "pere_publish_to_delivered_seconds",
        "pere_publish_to_acked_seconds",
        "pere_journal_write_seconds",
        "pere_receipts_unacked",
        "pere_http_errors_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(needed), "the dashboard charts {needed}");
    }
}

/// The README's Monitoring table names every family `/metrics` serves
/// (a new user's walk found four families missing from it).
#[tokio::test]
async fn the_readme_names_every_family_the_server_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let table = readme
        .split("\n## Monitoring\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has a Monitoring section");
    let server = TestServer::start().await;
    let exported = server.metrics().await;
    let missing: Vec<&str> = exported
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .filter(|family| !table.contains(&format!("`{family}")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the README's Monitoring table: {missing:?}"
    );
}
