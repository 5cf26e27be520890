//! The load modes as processes: `pere-sub --devices N --ack` and
//! `pere-pub --concurrency K` against a real `pere-server`, their JSON
//! reports read as `benches/e2e-vs-nchan.sh` reads them. The tools are what
//! the performance figures rest on, so they are tested here, not just the
//! server. Needs the binaries built first (`cargo build --workspace`).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pere_core::{DeviceId, Pattern};
use pere_http::client::Address;
use pere_load::{self as load, Flavor, devices};
use pere_tests::{TestServer, WAIT, bin, eventually};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Bound on a whole load run (the tools stop themselves well before).
const RUN: Duration = Duration::from_secs(60);

fn spawn(name: &str, args: &[&str]) -> Child {
    Command::new(bin(name))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// Reads `child`'s stderr until a line contains `needle`; the lines read.
async fn stderr_until(child: &mut Child, needle: &str) -> (String, Vec<String>) {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(RUN, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => {
            // Keep draining so the process never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            (line, seen)
        }
        _ => panic!("never saw `{needle}` on stderr:\n{}", seen.join("\n")),
    }
}

/// Waits for `child` to succeed and parses its one stdout line.
async fn report(child: Child, name: &str) -> Value {
    let (success, report) = report_any(child, name).await;
    assert!(success, "{name} failed: {report}");
    report
}

/// Waits for `child` to stop and parses its one stdout line; whether it
/// exited with status 0, and the report.
async fn report_any(mut child: Child, name: &str) -> (bool, Value) {
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let status = tokio::time::timeout(RUN, async {
        stdout.read_to_string(&mut out).await.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not stop within {RUN:?}"));
    let report = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{name} ({status}): not JSON ({e}): {out}"));
    (status.success(), report)
}

/// Starts `pere-server --memory` on a free port; the server and its
/// address.
async fn server_process() -> (Child, String) {
    let mut server = spawn("pere-server", &["--memory", "--port", "0"]);
    let (banner, _) = stderr_until(&mut server, "listening   http://").await;
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    (server, addr)
}

#[tokio::test]
async fn fifty_acking_devices_get_every_event_once_in_order_and_every_receipt_counts() {
    load_run(50, 120, "--ack", "4").await;
}

#[tokio::test]
async fn devices_acking_one_request_per_event_count_every_receipt_too() {
    load_run(10, 30, "--ack-each", "2").await;
}

#[tokio::test]
async fn devices_pipelining_their_receipts_count_every_receipt_too() {
    load_run(10, 30, "--ack-each --ack-pipeline 8", "2").await;
}

/// `devices_n` acking devices (`ack`: `--ack` or `--ack-each`, with its
/// options) and `events_n` events from `publishers` publishers; checks both
/// reports.
async fn load_run(devices_n: u64, events_n: u64, ack: &str, publishers: &str) {
    let (_server, addr) = server_process().await;

    let (devices, count) = (devices_n.to_string(), events_n.to_string());
    let mut args = vec![
        addr.as_str(),
        "loadtest",
        "--devices",
        &devices,
        "--count",
        &count,
        "--duration",
        "50s",
    ];
    args.extend(ack.split(' '));
    let mut sub = spawn("pere-sub", &args);
    // Publishing before every stream is open would be loss by design.
    stderr_until(&mut sub, "devices ready (").await;
    let publisher = spawn(
        "pere-pub",
        &[
            &addr,
            "loadtest",
            "--count",
            &count,
            "--concurrency",
            publishers,
            "--duration",
            "50s",
        ],
    );
    let published = report(publisher, "pere-pub").await;
    let devices = report(sub, "pere-sub").await;

    assert_eq!(published["published"], events_n, "{published}");
    assert_eq!(published["failed"], 0, "{published}");
    assert_eq!(devices["ready"], devices_n, "{devices}");
    assert_eq!(devices["completed"], devices_n, "{devices}");
    assert_eq!(devices["deliveries"], devices_n * events_n, "{devices}");
    for zero in [
        "lost",
        "lost_before_first",
        "lost_in_gaps",
        "not_arrived_by_deadline",
        "missed_after_disconnect",
        "unseen_events",
        "duplicates",
        "reordered",
        "disconnects",
        "reconnects",
        "devices_at_deadline",
        "unreported",
        "failed",
        "bad_payloads",
    ] {
        assert_eq!(devices[zero], 0, "{zero}: {devices}");
    }
    assert_eq!(
        devices["latency_us"]["count"],
        devices_n * events_n,
        "{devices}"
    );
    let receipts = &devices["receipts"];
    assert_eq!(receipts["sent"], devices_n * events_n, "{devices}");
    assert_eq!(receipts["acked"], devices_n * events_n, "{devices}");
    assert_eq!(receipts["failed"], 0, "{devices}");
    let mode = if ack == "--ack" { "batch" } else { "each" };
    assert_eq!(receipts["mode"], mode, "{devices}");
    assert!(receipts["per_second"].as_f64().unwrap() > 0.0, "{devices}");
    // Every event was acked by its whole audience.
    assert_eq!(receipts["events"], events_n, "{devices}");
    assert_eq!(receipts["all_acked_us"]["count"], events_n, "{devices}");
}

#[tokio::test]
async fn a_load_run_without_a_bound_is_refused() {
    // Every run must stop by itself: a count or a duration is required.
    let sub = spawn("pere-sub", &["127.0.0.1:9", "c", "--devices", "3"]);
    let out = sub.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a bound"));
    let publisher = spawn("pere-pub", &["127.0.0.1:9", "c", "--concurrency", "3"]);
    let out = publisher.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a bound"));
}

/// Events never published are not "lost": at the deadline they are what the
/// devices were still waiting for, and no device got them.
#[tokio::test]
async fn events_still_owed_at_the_deadline_are_not_counted_as_lost() {
    let (_server, addr) = server_process().await;
    let mut sub = spawn(
        "pere-sub",
        &[
            &addr,
            "owed",
            "--devices",
            "4",
            "--count",
            "10",
            "--duration",
            "3s",
        ],
    );
    stderr_until(&mut sub, "devices ready (").await;
    let publisher = spawn(
        "pere-pub",
        &[&addr, "owed", "--count", "6", "--concurrency", "2"],
    );
    let published = report(publisher, "pere-pub").await;
    assert_eq!(published["published"], 6, "{published}");
    assert_eq!(
        published["failed_events"],
        serde_json::json!([]),
        "{published}"
    );
    let (success, devices) = report_any(sub, "pere-sub").await;
    assert!(!success, "4 events per device are missing: {devices}");
    assert_eq!(devices["deliveries"], 24, "{devices}");
    assert_eq!(devices["lost"], 0, "{devices}");
    assert_eq!(devices["not_arrived_by_deadline"], 16, "{devices}");
    assert_eq!(devices["devices_at_deadline"], 4, "{devices}");
    assert_eq!(devices["missed_after_disconnect"], 0, "{devices}");
    // Sequence numbers 6..10 were never published: no device got them.
    assert_eq!(devices["unseen_events"], 4, "{devices}");
    assert_eq!(devices["disconnects"], 0, "{devices}");
    assert_eq!(devices["completed"], 0, "{devices}");
    // Quiet since the last event, at least the time from publishing to
    // the deadline.
    assert!(
        devices["quiet_at_deadline_max_ms"].as_f64().unwrap() > 0.0,
        "{devices}"
    );
}

/// A stream that ends early is a disconnect, with its cause; what came
/// after it is missed, not lost.
#[tokio::test]
async fn events_after_a_disconnect_are_missed_not_lost() {
    let (mut server, addr) = server_process().await;
    let mut sub = spawn(
        "pere-sub",
        &[
            &addr,
            "cut",
            "--devices",
            "4",
            "--count",
            "10",
            "--duration",
            "30s",
        ],
    );
    stderr_until(&mut sub, "devices ready (").await;
    let publisher = spawn(
        "pere-pub",
        &[&addr, "cut", "--count", "3", "--concurrency", "1"],
    );
    report(publisher, "pere-pub").await;
    // The server goes away with the streams open (the devices have their
    // 3 events by now or not: either way the rest is after the end).
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.start_kill().unwrap();
    let _ = server.wait().await;
    let (success, devices) = report_any(sub, "pere-sub").await;
    assert!(!success, "{devices}");
    assert_eq!(devices["disconnects"], 4, "{devices}");
    assert_eq!(
        devices["closed_by_server"].as_u64().unwrap() + devices["stream_errors"].as_u64().unwrap(),
        4,
        "{devices}"
    );
    assert_eq!(devices["reconnects"], 0, "{devices}");
    assert_eq!(devices["lost"], 0, "{devices}");
    assert_eq!(devices["not_arrived_by_deadline"], 0, "{devices}");
    assert_eq!(
        devices["missed_after_disconnect"].as_u64().unwrap()
            + devices["deliveries"].as_u64().unwrap(),
        40,
        "{devices}"
    );
    let first = devices["first_disconnect"].as_str().unwrap_or_default();
    assert!(first.contains("device load"), "{devices}");
}

/// With `resume`, a device whose stream the server ended reconnects with
/// Last-Event-ID and gets what it missed meanwhile: nothing missing, one
/// reconnect per disconnect.
#[tokio::test]
async fn resuming_devices_get_what_was_published_while_they_were_away() {
    let server = TestServer::start().await;
    let ready = Arc::new(AtomicBool::new(false));
    let config = devices::Config {
        addr: Address::parse(&server.addr.to_string()).unwrap(),
        channel: "resume".into(),
        channels: 1,
        devices: 3,
        flavor: Flavor::Pere,
        count: Some(10),
        duration: Some(Duration::from_secs(30)),
        ack: None,
        ack_connections: None,
        ack_pipeline: 1,
        status: "ok".into(),
        device_prefix: "res".into(),
        connect_concurrency: 8,
        resume: true,
    };
    let run = tokio::spawn(devices::run(config, {
        let ready = ready.clone();
        move |text: &str| {
            if text.contains("devices ready (") {
                ready.store(true, Ordering::Relaxed);
            }
        }
    }));
    eventually("3 devices ready", || async {
        ready.load(Ordering::Relaxed)
    })
    .await;
    let pattern = Pattern::new("resume").unwrap();
    let mut last = String::new();
    for seq in 0..5 {
        last = server
            .publish("resume", &load::payload(load::unix_micros(), seq, 64))
            .await;
    }
    let receipts = server
        .hub
        .receipts(&pattern, pere_core::EventId::parse(&last).unwrap())
        .unwrap();
    eventually("the first 5 events delivered", || async {
        receipts.undelivered() == 0
    })
    .await;
    // The server ends every device's stream (as it does to a slow one);
    // what is published next is published while they are away.
    for d in 0..3 {
        let device = DeviceId::new(&format!("res-{d}")).unwrap();
        server.hub.remove_member(&pattern, &device).await.unwrap();
    }
    for seq in 5..10 {
        server
            .publish("resume", &load::payload(load::unix_micros(), seq, 64))
            .await;
    }
    let report = tokio::time::timeout(WAIT * 3, run)
        .await
        .expect("the devices finish")
        .unwrap()
        .unwrap();
    let json = report.to_json();
    assert_eq!(report.completed, 3, "{json}");
    assert_eq!(report.deliveries, 30, "{json}");
    assert_eq!(report.missing(), 0, "{json}");
    assert_eq!(report.unseen_events, 0, "{json}");
    assert_eq!(report.duplicates, 0, "{json}");
    assert_eq!(report.reordered, 0, "{json}");
    assert_eq!(report.disconnects, 3, "{json}");
    assert_eq!(report.closed_by_server, 3, "{json}");
    assert_eq!(report.reconnects, 3, "{json}");
    assert!(
        report
            .first_disconnect
            .as_deref()
            .is_some_and(|d| d.contains("the server ended the stream")),
        "{json}"
    );
    server.stop().await;
}

/// Sends `sig` (`INT`, `STOP`, `CONT`) to a process this test started.
fn send_signal(child: &Child, sig: &str) {
    let pid = child.id().expect("the process is still running");
    let sent = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
}

/// Waits for `child` to stop; its exit code and stdout.
async fn exit_and_stdout(mut child: Child, within: Duration, name: &str) -> (Option<i32>, String) {
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let status = tokio::time::timeout(within, async {
        stdout.read_to_string(&mut out).await.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not stop within {within:?}"));
    (status.code(), out)
}

/// `pere-pub`'s load mode publishing 50 events a second to `channel`,
/// for longer than any test waits, once it runs (its signal handlers are
/// set once its publishers run).
async fn slow_publisher(addr: &str, channel: &str) -> Child {
    let publisher = spawn(
        "pere-pub",
        &[
            addr,
            channel,
            "--count",
            "100000",
            "--rate",
            "50",
            "--concurrency",
            "2",
        ],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    publisher
}

/// Ctrl-C on a load run: its report still comes, marked interrupted, and
/// the exit status says the run did not finish (it was 0, as for a run
/// that did).
#[tokio::test]
async fn an_interrupted_load_run_reports_and_exits_130() {
    let (_server, addr) = server_process().await;
    let mut sub = spawn(
        "pere-sub",
        &[&addr, "stopped", "--devices", "3", "--duration", "30s"],
    );
    stderr_until(&mut sub, "devices ready (").await;
    send_signal(&sub, "INT");
    let (code, out) = exit_and_stdout(sub, Duration::from_secs(15), "pere-sub").await;
    assert_eq!(code, Some(130), "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["ready"], 3, "{report}");

    let publisher = slow_publisher(&addr, "stopped").await;
    send_signal(&publisher, "TERM");
    let (code, out) = exit_and_stdout(publisher, Duration::from_secs(15), "pere-pub").await;
    assert_eq!(code, Some(143), "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
}

/// A second Ctrl-C while the run waits for publishes in flight (here to a
/// server that hangs: up to 40 s) ends it at once; it was caught and
/// ignored.
#[tokio::test]
async fn a_second_interrupt_ends_a_load_run_at_once() {
    let (server, addr) = server_process().await;
    let mut publisher = slow_publisher(&addr, "hung").await;
    send_signal(&server, "STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_signal(&publisher, "INT");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = publisher.try_wait().unwrap();
    send_signal(&publisher, "INT");
    let ended = exit_and_stdout(publisher, Duration::from_secs(5), "pere-pub").await;
    send_signal(&server, "CONT");
    assert!(
        still.is_none(),
        "the first signal waits for the publishes in flight: {still:?}"
    );
    let (code, out) = ended;
    assert_eq!(code, Some(130), "{out}");
    assert_eq!(out, "", "no report after a second signal");
}
