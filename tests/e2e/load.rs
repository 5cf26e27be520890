//! The load modes as processes: `pere-sub --devices N --ack` and
//! `pere-pub --concurrency K` against a real `pere-server`, their JSON
//! reports read as `benches/e2e-vs-nchan.sh` reads them. The tools are what
//! the performance figures rest on, so they are tested here, not just the
//! server. Needs the binaries built first (`cargo build --workspace`).

use std::process::Stdio;
use std::time::Duration;

use pere_tests::bin;
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
async fn report(mut child: Child, name: &str) -> Value {
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let status = tokio::time::timeout(RUN, async {
        stdout.read_to_string(&mut out).await.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not stop within {RUN:?}"));
    assert!(status.success(), "{name} failed with {status}: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {out}"))
}

#[tokio::test]
async fn fifty_acking_devices_get_every_event_once_in_order_and_every_receipt_counts() {
    load_run(50, 120, "--ack", "4").await;
}

#[tokio::test]
async fn devices_acking_one_request_per_event_count_every_receipt_too() {
    load_run(10, 30, "--ack-each", "2").await;
}

/// `devices_n` acking devices (`ack`: `--ack` or `--ack-each`) and
/// `events_n` events from `publishers` publishers; checks both reports.
async fn load_run(devices_n: u64, events_n: u64, ack: &str, publishers: &str) {
    let mut server = spawn("pere-server", &["--memory", "--port", "0"]);
    let (banner, _) = stderr_until(&mut server, "listening   http://").await;
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();

    let (devices, count) = (devices_n.to_string(), events_n.to_string());
    let mut sub = spawn(
        "pere-sub",
        &[
            &addr,
            "loadtest",
            "--devices",
            &devices,
            ack,
            "--count",
            &count,
            "--duration",
            "50s",
        ],
    );
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
        "duplicates",
        "reordered",
        "disconnects",
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
