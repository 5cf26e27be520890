//! `pere-pub`'s pace at its edges: a rate so slow that its next event lies
//! past what a clock holds, and a slow load run stopped by `--duration`.
//! The first panicked (exit 101), the second ran on until its workers'
//! next events were due, up to 40 s (a probe's findings).

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::procs::{Proc, Server};

#[tokio::test]
async fn a_rate_whose_next_event_is_beyond_any_clock_waits_instead_of_panicking() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    // One event every 10^19 s: the first goes at once, the second never.
    let mut publisher = Proc::start(
        "pere-pub",
        &[&addr, "c", "--data", "x", "--count", "2", "--rate", "1e-19"],
        Stdio::null(),
    );
    let first = publisher.line().await;
    assert!(first.contains("channel=c"), "{first}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        publisher.child.try_wait().unwrap().is_none(),
        "pere-pub ended while waiting for its second event: {}",
        publisher.stderr_text()
    );
    publisher.terminate();
    publisher.exit().await;
    assert!(
        !publisher.stderr_text().contains("panicked"),
        "{}",
        publisher.stderr_text()
    );
    // Slower still, the pace itself cannot be counted: a usage error.
    let mut refused = Proc::start(
        "pere-pub",
        &[&addr, "c", "--data", "x", "--rate", "1e-20"],
        Stdio::null(),
    );
    refused.exit_with(2).await;
    assert!(
        refused
            .stderr_text()
            .contains("is too small: one event in more time than can be counted"),
        "{}",
        refused.stderr_text()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_load_run_ends_at_its_duration() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let started = Instant::now();
    // Two publishers at 0.2 events/s in all: the second event is due at
    // 5 s, the third at 10 s; the run is to end at 1 s.
    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &addr,
            "bench",
            "--concurrency",
            "2",
            "--rate",
            "0.2",
            "--duration",
            "1s",
        ],
        Stdio::null(),
    );
    let lines = publisher.success().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "ended after {took:?}, not at its 1 s duration: {lines:?}"
    );
    let report: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(report["published"], 1, "{report}");
    server.stop().await;
}
