//! The command-line tools as processes: `pere-server`, `pere-pub` and
//! `pere-sub` talking over loopback, their output read as scripts read it
//! (docs/PROTOCOL.md §9). Needs the binaries built first (`cargo build --workspace`).
//!
//! Every process is owned by a [`Proc`] guard that kills it when dropped, so
//! a failing test leaves nothing running.

pub(crate) use crate::procs::{Proc, Server, first_word_id, free_port};

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use pere_tests::{WAIT, bin};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::task::JoinHandle;

#[tokio::test]
async fn pere_pub_prints_each_event_id_and_pere_sub_receives_and_acks_exactly_those() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let mut sub = Proc::start(
        "pere-sub",
        &[
            &addr,
            "CHANNEL_1",
            "--json",
            "--count",
            "3",
            "--device",
            "H-cli-1",
        ],
        Stdio::null(),
    );
    let hello = sub.json_line().await;
    assert_eq!(hello["event"], "pere.hello", "{hello}");
    assert_eq!(hello["id"], "", "no event id yet: {hello}");
    assert_eq!(
        hello["channel"],
        Value::Null,
        "control events have no channel"
    );

    let mut publisher = Proc::start(
        "pere-pub",
        &[&addr, "CHANNEL_1", "--data", "x", "--count", "3"],
        Stdio::null(),
    );
    let lines = publisher.success().await;
    assert_eq!(lines.len(), 3, "one line per event: {lines:?}");
    let ids: Vec<u64> = lines.iter().map(|l| first_word_id(l)).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "increasing ids: {ids:?}"
    );
    assert!(
        lines[0].contains("channel=CHANNEL_1 recipients=1"),
        "{lines:?}"
    );

    for id in &ids {
        let event = sub.json_line().await;
        assert_eq!(
            event,
            serde_json::json!({
                "id": id.to_string(),
                "event": "message",
                "data": "x",
                "channel": "CHANNEL_1",
            })
        );
    }
    assert!(
        sub.success().await.is_empty(),
        "nothing after --count events"
    );

    for id in &ids {
        let receipts = server.get_json(&format!("/receipts/CHANNEL_1/{id}")).await;
        assert_eq!(
            receipts["devices"]["H-cli-1"]["state"], "acked",
            "the subscriber acked {id}: {receipts}"
        );
        assert_eq!(receipts["devices"]["H-cli-1"]["status"], "ok");
    }
    server.stop().await;
}

#[tokio::test]
async fn pere_pub_publishes_each_line_of_its_stdin() {
    let server = Server::start(0).await;
    let mut publisher = Proc::start("pere-pub", &[&server.hostport(), "lines"], Stdio::piped());
    let mut stdin = publisher.child.stdin.take().unwrap();
    stdin.write_all(b"one\n\n{\"n\":2}\nthree\n").await.unwrap();
    drop(stdin);
    let lines = publisher.success().await;
    assert_eq!(lines.len(), 3, "empty lines are skipped: {lines:?}");
    let events = server.get_json("/admin/events/lines").await;
    let data: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["data"])
        .collect();
    assert_eq!(
        data,
        [
            &Value::from("one"),
            &serde_json::json!({"n": 2}),
            &Value::from("three")
        ]
    );
    let printed: Vec<String> = lines.iter().map(|l| first_word_id(l).to_string()).collect();
    let stored: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(printed, stored);
    server.stop().await;
}

#[tokio::test]
async fn pere_sub_reconnects_with_last_event_id_after_the_server_restarts() {
    let server = Server::start(0).await;
    let port = server.addr.port();
    let addr = server.hostport();
    let mut sub = Proc::start(
        "pere-sub",
        &[&addr, "restart", "--json", "--device", "H-cli-r"],
        Stdio::null(),
    );
    assert_eq!(sub.json_line().await["event"], "pere.hello");
    let first = server.publish("restart", "before").await;
    let event = sub.json_line().await;
    assert_eq!(
        (event["id"].as_str(), event["data"].as_str()),
        (Some(first.as_str()), Some("before"))
    );

    server.stop().await;
    sub.stderr_line_containing("disconnected").await;
    let server = Server::start(port).await;
    let second = server.publish("restart", "after").await;
    assert!(
        second.parse::<u64>().unwrap() > first.parse::<u64>().unwrap(),
        "ids keep increasing across restarts"
    );

    // The new stream starts with a hello naming the resume point (the
    // Last-Event-ID sent), maybe a gap (the memory store forgot `first`),
    // then the new event.
    let mut controls = Vec::new();
    let event = loop {
        let line = sub.json_line().await;
        if line["channel"].is_null() {
            controls.push(line);
        } else {
            break line;
        }
    };
    assert_eq!(event["id"], second.as_str(), "{event}");
    assert_eq!(event["data"], "after");
    let hello = controls
        .iter()
        .find(|c| c["event"] == "pere.hello")
        .unwrap_or_else(|| panic!("a pere.hello after reconnecting: {controls:?}"));
    let hello: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        hello["resumed_from"],
        first.as_str(),
        "Last-Event-ID was sent"
    );
    assert!(
        controls.iter().all(|c| c["id"] == first.as_str()),
        "control events report the last event id unchanged: {controls:?}"
    );
    drop(sub);
    server.stop().await;
}

#[tokio::test]
async fn pere_pub_retries_until_the_server_starts_and_the_event_is_stored_once() {
    let port = free_port().await;
    let mut publisher = Proc::start(
        "pere-pub",
        &[&format!("127.0.0.1:{port}"), "retried", "--data", "once"],
        Stdio::null(),
    );
    // It tried, failed, and is backing off.
    publisher.stderr_line_containing("retry 1/").await;
    let server = Server::start(port).await;
    let lines = publisher.success().await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let events = server.get_json("/admin/events/retried").await;
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 1, "stored once: {events:?}");
    assert_eq!(events[0]["id"], first_word_id(&lines[0]).to_string());
    server.stop().await;
}

/// Something that accepts connections and never answers (a stopped
/// server, another program on the port): before the server ever answered,
/// pere-pub gives each try 5 s, not its usual 30 s, and says what to check.
/// It took 186 s to give up with its six tries (a probe's finding).
#[tokio::test]
async fn pere_pub_tells_a_port_that_never_answers_within_seconds() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut publisher = Proc::start(
        "pere-pub",
        &[&addr.to_string(), "c", "--data", "x", "--retries", "0"],
        Stdio::null(),
    );
    // Within `Proc::exit`'s 10 s; the 30 s timeout would not be.
    publisher.exit_with(4).await;
    let said = publisher.stderr_text();
    assert!(said.contains("within 5000 ms"), "{said}");
    assert!(said.contains("is pere-server running at"), "{said}");
    holder.abort();
}

/// A proxy to `upstream` that loses the answer to the first request: it
/// forwards the request, waits for the server's answer, and closes the
/// client's connection without relaying it. Later connections are relayed
/// both ways.
async fn answer_losing_proxy(upstream: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let mut server = TcpStream::connect(upstream).await.unwrap();
            if first {
                first = false;
                let (mut client_read, _client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let forward = tokio::io::copy(&mut client_read, &mut server_write);
                let mut answer = [0u8; 1];
                // Relay the request until the server starts answering, then
                // drop both connections.
                tokio::select! {
                    _ = forward => {}
                    _ = server_read.read(&mut answer) => {}
                }
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        }
    });
    (addr, task)
}

#[tokio::test]
async fn pere_pub_resends_a_publish_whose_answer_was_lost_with_the_same_idempotency_key() {
    let server = Server::start(0).await;
    let (proxy, proxy_task) = answer_losing_proxy(server.addr).await;
    let mut publisher = Proc::start(
        "pere-pub",
        &[&proxy.to_string(), "lost", "--data", "once"],
        Stdio::null(),
    );
    let lines = publisher.success().await;
    proxy_task.abort();
    assert!(
        publisher.stderr_text().contains("retry 1/"),
        "the first answer was lost and the publish retried; stderr:\n{}",
        publisher.stderr_text()
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("duplicate=true"),
        "the server recognised the key: {lines:?}"
    );
    let events = server.get_json("/admin/events/lost").await;
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 1, "stored once: {events:?}");
    assert_eq!(events[0]["id"], first_word_id(&lines[0]).to_string());
    server.stop().await;
}

/// Running the same command with a key of one's own again is a retry: the
/// second run answers the first event, whatever device each run picked.
#[tokio::test]
async fn pere_pub_run_again_with_the_same_idempotency_key_publishes_once() {
    let server = Server::start(0).await;
    let addr = server.addr.to_string();
    let command = ["order", "--data", "42 EUR", "--idempotency-key", "order-42"];
    let mut runs = Vec::new();
    for _ in 0..2 {
        let args: Vec<&str> = std::iter::once(addr.as_str()).chain(command).collect();
        let mut publisher = Proc::start("pere-pub", &args, Stdio::null());
        runs.push(publisher.success().await);
    }
    assert_eq!(first_word_id(&runs[0][0]), first_word_id(&runs[1][0]));
    assert!(runs[1][0].contains("duplicate=true"), "{runs:?}");
    let events = server.get_json("/admin/events/order").await;
    assert_eq!(events.as_array().unwrap().len(), 1, "stored once: {events}");
    server.stop().await;
}

#[tokio::test]
async fn pere_sub_exits_quietly_when_its_output_is_closed() {
    let server = Server::start(0).await;
    let mut sub = Proc::start(
        "pere-sub",
        &[&server.hostport(), "piped", "--no-ack"],
        Stdio::null(),
    );
    assert!(sub.line().await.starts_with("RX CTL> event: pere.hello"));
    sub.close_stdout();
    // The next write fails with a broken pipe; publish until it happens.
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        server.publish("piped", "x").await;
        if let Ok(status) = tokio::time::timeout(Duration::from_millis(100), sub.child.wait()).await
        {
            break status.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pere-sub still runs after its output closed; stderr:\n{}",
            sub.stderr_text()
        );
    };
    assert!(status.success(), "exit status {status}");
    let stderr = sub.stderr_text();
    assert!(
        !stderr.contains("panicked") && !stderr.to_lowercase().contains("broken pipe"),
        "quiet: {stderr}"
    );
    server.stop().await;
}

/// Runs `name args…` to completion (bounded), returning status and stdout.
pub(crate) async fn run_tool(name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let output = tokio::time::timeout(
        WAIT,
        Command::new(bin(name))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} {args:?} did not finish"))
    .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn help_of_each_tool_explains_every_option_and_usage_errors_exit_with_2() {
    let tools: [(&str, &[&str]); 2] = [
        (
            "pere-pub",
            &[
                "--data",
                "--count",
                "--rate",
                "--interval",
                "--event",
                "--device",
                "--idempotency-key",
                "--retries",
                "--wait",
                "--timeout",
                "--quiet",
            ],
        ),
        (
            "pere-sub",
            &[
                "--device",
                "--json",
                "--count",
                "--no-ack",
                "--status",
                "--last-event-id",
                "--replay-all",
                "--max-reconnects",
                "--timeout",
                "--quiet",
            ],
        ),
    ];
    for (tool, flags) in tools {
        let (status, stdout, _) = run_tool(tool, &["--help"]).await;
        assert!(status.success(), "{tool} --help: {status}");
        for flag in flags {
            let explained = stdout.lines().any(|l| {
                let l = l.trim_start();
                (l.starts_with(flag) || l.starts_with(&format!("-q, {flag}")))
                    && l.len() > flag.len() + 10
            });
            assert!(explained, "{tool} --help explains {flag}:\n{stdout}");
        }
        for positional in ["addr", "channel"] {
            assert!(
                stdout.contains(positional),
                "{tool} --help names <{positional}>"
            );
        }
        let (status, _, stderr) = run_tool(tool, &["127.0.0.1:1"]).await;
        assert_eq!(status.code(), Some(2), "{tool} without a channel: {stderr}");
        let (status, _, stderr) = run_tool(tool, &["127.0.0.1:1", "a b"]).await;
        assert_eq!(
            status.code(),
            Some(2),
            "{tool} with a bad channel: {stderr}"
        );
        assert!(
            stderr.contains("a b"),
            "the error names the value: {stderr}"
        );
    }
}

/// The words `key=value` of a pere-pub line, by key.
pub(crate) fn word<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[tokio::test]
async fn pere_sub_exec_turns_the_command_outcome_into_the_receipt_status_and_pere_pub_waits_for_it()
{
    let server = Server::start(0).await;
    let addr = server.hostport();
    let start_sub = |device: &'static str, exec: &'static str| {
        Proc::start(
            "pere-sub",
            &[
                &addr, "jobs", "--json", "--count", "1", "--device", device, "--exec", exec,
            ],
            Stdio::null(),
        )
    };
    // The payload reaches the command on stdin, and its environment names
    // the event.
    let mut good = start_sub(
        "worker-ok",
        r#"test "$(cat)" = 'resize 42' && test "$PERE_DEVICE" = worker-ok"#,
    );
    let mut bad = start_sub(
        "worker-bad",
        "cat >/dev/null; echo 'disk full on /var' >&2; echo more >&2; exit 4",
    );
    for sub in [&mut good, &mut bad] {
        assert_eq!(sub.json_line().await["event"], "pere.hello");
    }

    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &addr,
            "jobs",
            "--data",
            "resize 42",
            "--wait",
            "acked",
            "--timeout",
            "5s",
        ],
        Stdio::null(),
    );
    let lines = publisher.success().await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    let id = first_word_id(line);
    assert_eq!(word(line, "recipients"), "2", "{line}");
    assert_eq!(word(line, "acked"), "2", "{line}");
    assert_eq!(word(line, "timed_out"), "false", "{line}");
    assert_eq!(word(line, "pending"), "-", "{line}");
    let mut acked_by: Vec<&str> = word(line, "acked_by").split(',').collect();
    acked_by.sort_unstable();
    assert_eq!(acked_by, ["worker-bad", "worker-ok"], "{line}");

    for sub in [&mut good, &mut bad] {
        assert_eq!(sub.json_line().await["data"], "resize 42");
        sub.success().await;
    }
    let receipts = server.get_json(&format!("/receipts/jobs/{id}")).await;
    assert_eq!(
        receipts["devices"]["worker-ok"]["status"], "ok",
        "{receipts}"
    );
    assert_eq!(
        receipts["devices"]["worker-bad"]["status"], "error: exit 4: disk full on /var",
        "the exit code and the first stderr line: {receipts}"
    );
    assert!(
        bad.stderr_text().contains("disk full on /var"),
        "the command's stderr is relayed: {}",
        bad.stderr_text()
    );
    server.stop().await;
}

#[tokio::test]
async fn pere_pub_wait_names_the_devices_that_did_not_ack_in_time() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let mut acker = Proc::start(
        "pere-sub",
        &[&addr, "alerts", "--json", "--device", "fast"],
        Stdio::null(),
    );
    let mut silent = Proc::start(
        "pere-sub",
        &[&addr, "alerts", "--json", "--device", "silent", "--no-ack"],
        Stdio::null(),
    );
    for sub in [&mut acker, &mut silent] {
        assert_eq!(sub.json_line().await["event"], "pere.hello");
    }
    let started = std::time::Instant::now();
    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &addr,
            "alerts",
            "--data",
            "fire",
            "--wait",
            "acked",
            "--timeout",
            "700ms",
        ],
        Stdio::null(),
    );
    // Published, but not proven: status 3, distinct from a failed publish.
    let lines = publisher.exit_with(3).await;
    let line = &lines[0];
    assert!(
        publisher
            .stderr_text()
            .contains("wait timed out for 1 event"),
        "{}",
        publisher.stderr_text()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the wait lasts the timeout"
    );
    assert_eq!(word(line, "timed_out"), "true", "{line}");
    assert_eq!(word(line, "acked"), "1", "{line}");
    assert_eq!(word(line, "acked_by"), "fast", "{line}");
    assert_eq!(word(line, "unacked"), "silent", "{line}");
    assert_eq!(
        word(line, "pending"),
        "-",
        "silent got it, it only did not ack: {line}"
    );
    server.stop().await;
}

#[tokio::test]
async fn pere_pub_wait_keeps_exit_3_when_its_output_is_closed_early() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let mut silent = Proc::start(
        "pere-sub",
        &[&addr, "pager", "--json", "--device", "silent", "--no-ack"],
        Stdio::null(),
    );
    assert_eq!(silent.json_line().await["event"], "pere.hello");
    // As in `pere-pub … --wait acked | head -1`.
    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &addr,
            "pager",
            "--data",
            "x",
            "--count",
            "2",
            "--wait",
            "acked",
            "--timeout",
            "200ms",
        ],
        Stdio::null(),
    );
    let line = publisher.line().await;
    assert_eq!(word(&line, "timed_out"), "true", "{line}");
    // The second event is published, its line finds no reader.
    publisher.close_stdout();
    let status = publisher.exit().await;
    assert_eq!(
        status.code(),
        Some(3),
        "a timed-out wait is not success, even when the reader left; stderr:\n{}",
        publisher.stderr_text()
    );
    assert_eq!(
        server
            .get_json("/admin/events/pager")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    server.stop().await;
}
