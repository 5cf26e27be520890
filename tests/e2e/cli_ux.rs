//! The command-line tools as an operator and a developer meet them first
//! (issue 18): what they say when the server is gone, stopping, or not
//! there at all, what their exit statuses mean, and the device `pere-sub`
//! keeps. Processes and helpers as in `cli.rs`.

use std::process::Stdio;
use std::time::Duration;

use crate::cli::{Proc, Server, first_word_id, free_port, run_tool, word};

/// Issue 18.1: a `pere-pub --wait` held by the server when it was stopped
/// used to be cut after the grace period, and `pere-pub` retried against a
/// dead port and said "not published" about a published event. The server
/// now answers held waits at shutdown with what it has.
#[tokio::test]
async fn a_wait_held_at_shutdown_is_answered_and_pere_pub_says_it_was_published() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let mut silent = Proc::start(
        "pere-sub",
        &[&addr, "held", "--json", "--device", "silent", "--no-ack"],
        Stdio::null(),
    );
    assert_eq!(silent.json_line().await["event"], "pere.hello");
    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &addr,
            "held",
            "--data",
            "x",
            "--wait",
            "acked",
            "--timeout",
            "30s",
        ],
        Stdio::null(),
    );
    // Published and delivered: the wait for the receipt is held.
    assert_eq!(silent.json_line().await["data"], "x");
    let stopped = std::time::Instant::now();
    server.stop().await;
    let lines = publisher.exit_with(3).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "answered at once, not after the grace period: {:?}",
        stopped.elapsed()
    );
    let line = &lines[0];
    first_word_id(line);
    assert_eq!(word(line, "timed_out"), "true", "{line}");
    assert_eq!(word(line, "shutting_down"), "true", "{line}");
    assert_eq!(word(line, "unacked"), "silent", "{line}");
    let stderr = publisher.stderr_text();
    assert!(
        stderr.contains("was published") && !stderr.contains("not published"),
        "{stderr}"
    );
    // Its own sentences only: no raw log line about receipts it could not
    // read from a server going away.
    assert!(
        stderr.lines().all(|l| l.starts_with("pere-pub: ")),
        "{stderr}"
    );
}

/// Issue 18.1: when the answer is lost for good (the server is killed
/// while it holds the request), `pere-pub` cannot know whether the event
/// was stored: it says so, with its own exit status, and how to retry
/// safely.
#[tokio::test]
async fn pere_pub_says_the_outcome_is_unknown_when_the_answer_is_lost() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let mut silent = Proc::start(
        "pere-sub",
        &[&addr, "lost", "--json", "--device", "silent", "--no-ack"],
        Stdio::null(),
    );
    assert_eq!(silent.json_line().await["event"], "pere.hello");
    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &addr,
            "lost",
            "--data",
            "x",
            "--wait",
            "acked",
            "--timeout",
            "30s",
            "--retries",
            "2",
        ],
        Stdio::null(),
    );
    assert_eq!(silent.json_line().await["data"], "x");
    server.kill9().await;
    let lines = publisher.exit_with(4).await;
    assert!(lines.is_empty(), "no event line: {lines:?}");
    let stderr = publisher.stderr_text();
    assert!(
        stderr.contains("the outcome is unknown")
            && stderr.contains("--idempotency-key")
            && !stderr.contains("not published"),
        "{stderr}"
    );
    // Publishing again as it says stores the event once, however many
    // times it is run (keys are scoped by publisher: a run without
    // `--device` is a new one).
    let retry: Vec<&str> = stderr
        .split('`')
        .find(|s| s.starts_with("--idempotency-key "))
        .unwrap_or_else(|| panic!("no retry command in {stderr}"))
        .split(' ')
        .collect();
    let server = Server::start(0).await;
    let addr = server.hostport();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut args = vec![addr.as_str(), "lost", "--data", "x"];
        args.extend(&retry);
        let (status, stdout, stderr) = run_tool("pere-pub", &args).await;
        assert!(status.success(), "{args:?}: {stderr}");
        ids.push(
            stdout
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(ids[0], ids[1], "the second run is the first one's retry");
    assert_eq!(
        server
            .get_json("/admin/events/lost")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Issue 18.10: a wrong port took 28 s to fail, with no hint.
#[tokio::test]
async fn pere_pub_on_a_port_where_nothing_listens_fails_fast_with_a_hint() {
    let port = free_port().await;
    let started = std::time::Instant::now();
    let mut publisher = Proc::start(
        "pere-pub",
        &[&format!("127.0.0.1:{port}"), "c", "--data", "x"],
        Stdio::null(),
    );
    publisher.exit_with(1).await;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "it gave up within seconds: {:?}",
        started.elapsed()
    );
    let stderr = publisher.stderr_text();
    assert!(
        stderr.contains("is pere-server running at 127.0.0.1:") && stderr.contains("not published"),
        "{stderr}"
    );
}

/// Issue 18.10: `pere-pub --rate 2 --count 70 -q </dev/null` published
/// nothing and exited 0. `/dev/null` (what cron and nohup give) is not a
/// pipe or a file, so the events are generated, as from a terminal.
#[tokio::test]
async fn pere_pub_with_stdin_from_dev_null_publishes_generated_events() {
    let server = Server::start(0).await;
    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &server.hostport(),
            "cron",
            "--rate",
            "50",
            "--count",
            "3",
            "-q",
        ],
        Stdio::from(std::fs::File::open("/dev/null").unwrap()),
    );
    let lines = publisher.success().await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let events = server.get_json("/admin/events/cron").await;
    assert_eq!(events.as_array().unwrap().len(), 3, "{events}");
    assert_eq!(
        events[0]["data"]["channel"], "cron",
        "publisher.rb's events"
    );
    server.stop().await;
}

/// Issue 18.10: a pipe that ends without a line published nothing and
/// exited 0 (silently with `-q`): asked to publish, nothing was.
#[tokio::test]
async fn pere_pub_with_an_empty_pipe_fails_even_when_quiet() {
    let server = Server::start(0).await;
    let mut publisher = Proc::start(
        "pere-pub",
        &[&server.hostport(), "empty", "-q"],
        Stdio::piped(),
    );
    drop(publisher.child.stdin.take());
    publisher.exit_with(1).await;
    assert!(
        publisher.stderr_text().contains("nothing was published"),
        "{}",
        publisher.stderr_text()
    );
    server.stop().await;
}

/// Issue 18.10: a bad flag exited 1 in pere-server and 2 in the tools.
#[tokio::test]
async fn a_bad_flag_exits_with_2_in_every_tool() {
    for (tool, args) in [
        ("pere-server", &["--no-such-flag"][..]),
        ("pere-server", &["--port", "many"]),
        ("pere-pub", &["127.0.0.1:1", "c", "--no-such-flag"]),
        ("pere-sub", &["127.0.0.1:1", "c", "--no-such-flag"]),
    ] {
        let (status, _, stderr) = run_tool(tool, args).await;
        assert_eq!(status.code(), Some(2), "{tool} {args:?}: {stderr}");
        assert!(
            stderr.contains("--help"),
            "{tool} {args:?} says where help is: {stderr}"
        );
    }
}

/// `--version` prints each tool's name and version (an operator checking
/// an upgrade got `Unrecognized argument`).
#[tokio::test]
async fn every_tool_says_its_version() {
    for tool in ["pere-server", "pere-pub", "pere-sub"] {
        for flag in ["--version", "-V"] {
            let (status, stdout, stderr) = run_tool(tool, &[flag]).await;
            assert!(status.success(), "{tool} {flag}: {stderr}");
            assert_eq!(
                stdout.trim(),
                format!("{tool} {}", env!("CARGO_PKG_VERSION"))
            );
        }
    }
}

/// The server forgotten (`pere-pub orders --data x`): `orders` is taken
/// for it, and argh says only that a channel is missing; the tools say
/// which comes first.
#[tokio::test]
async fn a_forgotten_server_address_is_pointed_out() {
    for (tool, args) in [
        ("pere-pub", &["orders", "--data", "x"][..]),
        ("pere-sub", &["orders"]),
    ] {
        let (status, _, stderr) = run_tool(tool, args).await;
        assert_eq!(status.code(), Some(2), "{tool} {args:?}: {stderr}");
        assert!(
            stderr.contains("takes the server first, then the channel"),
            "{tool} {args:?}: {stderr}"
        );
    }
}

/// A load-mode flag without `--devices` is a usage error: `--ack` silently
/// ran a one-device benchmark, `--duration` alone was ignored and the run
/// never ended.
#[tokio::test]
async fn a_load_flag_without_devices_exits_with_2() {
    for flag in [&["--ack"][..], &["--duration", "1s"], &["--resume"]] {
        let mut args = vec!["127.0.0.1:1", "c"];
        args.extend_from_slice(flag);
        let (status, _, stderr) = run_tool("pere-sub", &args).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--devices"), "{args:?}: {stderr}");
    }
}

/// Issue 18.10: with nothing listening, pere-sub retried every 3 s forever,
/// without a word about why. It now asks whether the server runs, and
/// backs off.
#[tokio::test]
async fn pere_sub_on_a_port_where_nothing_listens_backs_off_with_a_hint() {
    let port = free_port().await;
    let mut sub = Proc::start(
        "pere-sub",
        &[&format!("127.0.0.1:{port}"), "c"],
        Stdio::null(),
    );
    let first = sub.stderr_line_containing("reconnecting in").await;
    assert!(
        first.contains("reconnecting in 3000 ms") && first.contains("is pere-server running at"),
        "{first}"
    );
    let second = sub.stderr_line_containing("reconnecting in").await;
    assert!(second.contains("reconnecting in 6000 ms"), "{second}");
    assert!(!second.contains("is pere-server running"), "once: {second}");
}

/// A server that answers (here `429`: its one stream slot is taken) is
/// running: pere-sub says why it waits, and does not ask whether a server
/// runs there, which pointed the wrong way (a probe's finding).
#[tokio::test]
async fn pere_sub_refused_by_a_running_server_does_not_ask_whether_it_runs() {
    let server = pere_tests::TestServer::builder()
        .max_streams(1)
        .start()
        .await;
    let _taken = server.subscribe("c", "first").await;
    let mut sub = Proc::start(
        "pere-sub",
        &[&server.addr.to_string(), "c", "--max-reconnects", "2"],
        Stdio::null(),
    );
    let first = sub.stderr_line_containing("reconnecting in").await;
    assert!(!first.contains("is pere-server running"), "{first}");
    sub.exit_with(1).await;
    let said = sub.stderr_text();
    assert!(said.contains("429"), "{said}");
    assert!(!said.contains("is pere-server running"), "{said}");
    server.stop().await;
}

/// Without `--json`, an event is one line for a person's terminal: a
/// publisher's newline made a second, forged `RX EVT>` line, and its escape
/// sequences reached the terminal (a probe's finding). Control characters
/// are shown escaped; `--json` keeps the data whole.
#[tokio::test]
async fn pere_sub_text_output_is_one_line_per_event_without_escapes() {
    let server = Server::start(0).await;
    let mut sub = Proc::start(
        "pere-sub",
        &[&server.hostport(), "txt", "--count", "1", "--device", "t1"],
        Stdio::null(),
    );
    assert!(sub.line().await.starts_with("RX CTL> event: pere.hello"));
    server
        .publish("txt", "real\nRX EVT> id: 1, data: FORGED\u{1b}[2J")
        .await;
    let line = sub.line().await;
    assert!(
        line.starts_with("RX EVT> id: ")
            && line.ends_with(r"data: real\nRX EVT> id: 1, data: FORGED\u{1b}[2J"),
        "{line:?}"
    );
    let rest = sub.success().await;
    assert!(rest.is_empty(), "one line per event: {rest:?}");
    server.stop().await;
}

/// Issue 18.10: the README's `--exec 'cat >> jobs.log'` glued payloads
/// together; each now arrives as a line.
#[tokio::test]
async fn pere_sub_exec_gets_each_payload_as_a_line() {
    let server = Server::start(0).await;
    let dir = pere_tests::temp_dir("exec-lines");
    let log = dir.join("jobs.log");
    let command = format!("cat >> '{}'", log.display());
    let mut sub = Proc::start(
        "pere-sub",
        &[
            &server.hostport(),
            "jobs",
            "--json",
            "--count",
            "2",
            "--device",
            "worker",
            "--exec",
            &command,
        ],
        Stdio::null(),
    );
    assert_eq!(sub.json_line().await["event"], "pere.hello");
    server.publish("jobs", "first").await;
    server.publish("jobs", "second\n").await;
    sub.success().await;
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "first\nsecond\n");
    let _ = std::fs::remove_dir_all(dir);
    server.stop().await;
}

/// Issue 18.3: an `--exec` that failed (`error: exit 4: boom`) looked like
/// any other receipt in `pere-pub --wait` (`acked_by=worker-9`, exit 0).
/// The line names devices whose status is not `ok`, stderr shows the
/// status, and `--require-status` makes it a failure of its own.
#[tokio::test]
async fn pere_pub_shows_bad_receipt_statuses_and_require_status_fails_on_them() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let start_sub = |device: &'static str, exec: &'static str| {
        Proc::start(
            "pere-sub",
            &[&addr, "work", "--json", "--device", device, "--exec", exec],
            Stdio::null(),
        )
    };
    let mut good = start_sub("worker-1", "cat >/dev/null");
    let mut bad = start_sub("worker-9", "cat >/dev/null; echo boom >&2; exit 4");
    for sub in [&mut good, &mut bad] {
        assert_eq!(sub.json_line().await["event"], "pere.hello");
    }
    let publish = |extra: &'static [&'static str]| {
        let mut args = vec![
            addr.as_str(),
            "work",
            "--data",
            "job",
            "--wait",
            "acked",
            "--timeout",
            "5s",
        ];
        args.extend_from_slice(extra);
        Proc::start("pere-pub", &args, Stdio::null())
    };
    // Shown, not failed, without the flag.
    let mut shown = publish(&[]);
    let lines = shown.success().await;
    assert_eq!(word(&lines[0], "acked"), "2", "{lines:?}");
    assert_eq!(word(&lines[0], "bad_status"), "worker-9", "{lines:?}");
    assert!(
        shown
            .stderr_text()
            .contains(r#"worker-9 acknowledged it with status "error: exit 4: boom""#),
        "{}",
        shown.stderr_text()
    );
    // Failed, with its own status, with it.
    let mut required = publish(&["--require-status", "ok"]);
    let lines = required.exit_with(5).await;
    assert_eq!(word(&lines[0], "bad_status"), "worker-9", "{lines:?}");
    assert_eq!(word(&lines[0], "timed_out"), "false", "{lines:?}");
    // A prefix accepts every status that starts with it.
    let mut lenient = publish(&["--require-status", "ok,error: exit 4*"]);
    let lines = lenient.success().await;
    assert_eq!(word(&lines[0], "bad_status"), "-", "{lines:?}");
    server.stop().await;
}

/// Issue 18.7: every `pere-sub` run without `--device` used to be a new
/// random device, a member for 24 h, so events waited for a pile of stale
/// members. A run is now this user's device on this machine, kept in
/// `$XDG_STATE_HOME/pere/device`.
#[tokio::test]
async fn pere_sub_without_a_device_is_the_same_device_on_every_run() {
    let server = Server::start(0).await;
    let state = pere_tests::temp_dir("sub-state");
    let hello_device = |state: std::path::PathBuf| {
        let addr = server.hostport();
        async move {
            let mut sub = Proc::start_env(
                "pere-sub",
                &[&addr, "mine", "--json", "--timeout", "200ms"],
                Stdio::null(),
                &[("XDG_STATE_HOME", &state)],
            );
            let hello = sub.json_line().await;
            assert_eq!(hello["event"], "pere.hello");
            sub.success().await;
            let data: serde_json::Value =
                serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
            data["device"].as_str().unwrap().to_string()
        }
    };
    let first = hello_device(state.clone()).await;
    let second = hello_device(state.clone()).await;
    assert_eq!(first, second, "the same device on every run");
    assert!(first.starts_with("H0039"), "{first}");
    let kept = std::fs::read_to_string(state.join("pere/device")).unwrap();
    assert_eq!(kept.trim(), first);
    let members = server.get_json("/admin/devices/mine").await;
    assert_eq!(
        members.as_object().unwrap().len(),
        1,
        "one member, not one per run: {members}"
    );
    // Another user (another state directory) is another device.
    let other = pere_tests::temp_dir("sub-state-other");
    assert_ne!(hello_device(other.clone()).await, first);
    for dir in [state, other] {
        let _ = std::fs::remove_dir_all(dir);
    }
    server.stop().await;
}

/// Issue 18.2: one INFO line per publish and per receipt (548,000 lines in
/// 7 s under load). Per-event lines are DEBUG now; while busy, one INFO
/// line per `--log-summary` period says how much happened.
#[tokio::test]
async fn the_server_logs_a_periodic_summary_instead_of_a_line_per_event() {
    let server = pere_tests::ServerProcess::start(&["--log-summary", "300ms"]).await;
    let mut stream =
        pere_tests::SseStream::open(server.addr, "/feed/busy", &[("device", "d")]).await;
    assert_eq!(stream.next_event().await.unwrap().event, "pere.hello");
    const EVENTS: usize = 40;
    for n in 0..EVENTS {
        let r = server
            .request("POST", "/push/busy", &[], n.to_string().as_bytes())
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        let body = serde_json::json!({ "id": id }).to_string();
        let r = server
            .request(
                "POST",
                "/feedback/busy",
                &[("device", "d"), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    stream.messages(EVENTS).await;
    pere_tests::eventually("an activity line", || async {
        let log = server.log();
        let published: u64 = log
            .lines()
            .filter(|l| l.contains("activity:"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("published="))?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        published == EVENTS as u64
    })
    .await;
    drop(stream);
    let log = server.stop();
    let per_event: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("recipients=") || l.contains("status=") || l.contains("subscribed"))
        .collect();
    assert!(
        per_event.is_empty(),
        "per-event lines at INFO: {per_event:#?}"
    );
    let activity = log.lines().find(|l| l.contains("activity:")).unwrap();
    assert!(
        activity.contains("publishes/s") && activity.contains("INFO"),
        "{activity}"
    );
    assert!(
        log.lines().count() < 40,
        "{EVENTS} publishes and receipts, {} log lines:\n{log}",
        log.lines().count()
    );
}

/// Issue 18.9: a taken port said only "Address already in use", a data
/// directory in use did not say by whom, and `--data-dir` naming a file
/// said "File exists (os error 17)". Each now says what to do.
#[tokio::test]
async fn pere_server_says_what_to_do_when_it_cannot_start() {
    // The port is taken.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (status, _, stderr) = run_tool("pere-server", &["--memory", "--port", &port]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("port {port} is taken")) && stderr.contains("--port"),
        "{stderr}"
    );
    drop(taken);

    // The data directory is another server's.
    let dir = pere_tests::temp_dir("held-data");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let first = pere_tests::ServerProcess::start(&["--data-dir", data]).await;
    let (status, _, stderr) = run_tool("pere-server", &["--data-dir", data, "--port", "0"]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid()))
            && stderr.contains("--data-dir")
            && stderr.contains(data),
        "{stderr}"
    );
    first.stop();

    // --data-dir names a file.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (status, _, stderr) = run_tool(
        "pere-server",
        &["--data-dir", file.to_str().unwrap(), "--port", "0"],
    )
    .await;
    assert_eq!(status.code(), Some(2), "a bad flag value: {stderr}");
    assert!(
        stderr.contains("is a file, not a directory") && !stderr.contains("os error"),
        "{stderr}"
    );

    // A LOCK that cannot be opened is not another server's (it was said to
    // be, whatever the cause): the cause is said.
    let odd = dir.join("odd-data");
    std::fs::create_dir_all(odd.join("LOCK")).unwrap();
    let (status, _, stderr) = run_tool(
        "pere-server",
        &["--data-dir", odd.to_str().unwrap(), "--port", "0"],
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("in use") && stderr.contains("LOCK") && stderr.contains("directory"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/PROTOCOL.md §9: on a pattern, `pere-sub --json` reports the channel
/// each event was published on (it used to report the pattern), and
/// `--exec` gets it as `PERE_CHANNEL`; the payload is the one published.
#[tokio::test]
async fn pere_sub_on_a_pattern_reports_each_event_s_own_channel() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let mut sub = Proc::start(
        "pere-sub",
        &[
            &addr, "orders.*", "--json", "--count", "2", "--device", "pat-1",
        ],
        Stdio::null(),
    );
    let hello = sub.json_line().await;
    assert_eq!(
        (&hello["event"], &hello["channel"]),
        (&"pere.hello".into(), &serde_json::Value::Null)
    );
    let eu = server.publish("orders.eu", r#"{"n":1}"#).await;
    let us = server.publish("orders.us", "line 1\nline 2").await;
    let a = sub.json_line().await;
    assert_eq!(
        a,
        serde_json::json!({"id": eu, "event": "message", "data": r#"{"n":1}"#, "channel": "orders.eu"})
    );
    let b = sub.json_line().await;
    assert_eq!(
        (&b["channel"], &b["data"]),
        (&"orders.us".into(), &"line 1\nline 2".into())
    );
    assert_eq!(b["id"], us);
    sub.success().await;
    // Receipts were sent on the pattern, for the right events.
    let r = server.get_json(&format!("/receipts/orders.us/{us}")).await;
    assert_eq!(r["devices"]["pat-1"]["state"], "acked", "{r}");
}

/// A reader that leaves before the run is done (`| head -1`) stops it:
/// what was left is not published, and that is not a success.
#[tokio::test]
async fn pere_pub_stopped_by_its_reader_before_the_end_exits_1() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    for source in [&["--data", "x", "--count", "5"][..], &["--count", "5"][..]] {
        let mut args = vec![addr.as_str(), "paced", "--interval", "300ms"];
        args.extend(source);
        let mut publisher = Proc::start("pere-pub", &args, Stdio::null());
        publisher.line().await;
        publisher.close_stdout();
        let status = publisher.exit().await;
        assert_eq!(
            status.code(),
            Some(1),
            "{args:?}: {}",
            publisher.stderr_text()
        );
        let said = publisher.stderr_line_containing("stdout was closed").await;
        assert!(
            said.contains("after event 2 was published")
                && said.contains("the other 3 event(s) of --count were not published"),
            "{said}"
        );
    }
    // A run without an end of its own ends so, with 0.
    let mut publisher = Proc::start(
        "pere-pub",
        &[&addr, "paced", "--data", "x", "--interval", "300ms"],
        Stdio::null(),
    );
    publisher.line().await;
    publisher.close_stdout();
    assert_eq!(
        publisher.exit().await.code(),
        Some(0),
        "{}",
        publisher.stderr_text()
    );

    // From stdin: lines left unread are a failure, the end of the input
    // is not, even when the last line's report found no reader.
    for (lines, code) in [("a\nb\nc\nd\n", 1), ("a\n", 0)] {
        let channel = format!("piped{code}");
        let mut publisher = Proc::start("pere-pub", &[&addr, &channel], Stdio::piped());
        publisher.close_stdout();
        // The pipe's reading end is dropped with its task, soon after.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut stdin = publisher.child.stdin.take().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stdin, lines.as_bytes())
            .await
            .unwrap();
        if code == 0 {
            drop(stdin);
        }
        let status = publisher.exit().await;
        assert_eq!(
            status.code(),
            Some(code),
            "{lines:?}: {}",
            publisher.stderr_text()
        );
        let events = server.get_json(&format!("/admin/events/{channel}")).await;
        assert_eq!(events.as_array().unwrap().len(), 1, "{lines:?}");
    }
    server.stop().await;
}

/// `data` is what an EventSource dispatches (PROTOCOL.md §3, §9): SSE
/// carries no CR, so every CRLF and CR of a payload reads as LF.
#[tokio::test]
async fn pere_sub_json_data_reads_as_an_eventsource_reads_it() {
    let server = Server::start(0).await;
    let addr = server.hostport();
    let mut sub = Proc::start(
        "pere-sub",
        &[&addr, "lines", "--json", "--count", "1"],
        Stdio::null(),
    );
    assert_eq!(sub.json_line().await["event"], "pere.hello");
    server.publish("lines", "l1\r\nl2\rl3\n").await;
    assert_eq!(sub.json_line().await["data"], "l1\nl2\nl3\n");
    sub.success().await;
    server.stop().await;
}

/// `-q` keeps the one banner line a `--port 0` start needs (it printed
/// nothing at all); `--log-format json` prints no plain-text banner among
/// its JSON lines, and its "listening" line carries the address.
#[tokio::test]
async fn quiet_keeps_the_address_and_json_logs_are_json_only() {
    let mut quiet = Proc::start(
        "pere-server",
        &["--memory", "--port", "0", "-q"],
        Stdio::null(),
    );
    let line = quiet.stderr_line_containing("listening").await;
    assert!(line.contains("http://127.0.0.1:"), "{line}");

    for quiet in [&[][..], &["-q"]] {
        let mut args = vec!["--memory", "--port", "0", "--log-format", "json"];
        args.extend_from_slice(quiet);
        let mut json = Proc::start("pere-server", &args, Stdio::null());
        let line = json.stderr_line_containing("listening").await;
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let addr = value["fields"]["addr"].as_str().unwrap_or_default();
        assert!(addr.starts_with("127.0.0.1:"), "{quiet:?}: {line}");
        for line in json.stderr_text().lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "a line that is not JSON: {line}"
            );
        }
    }
}

/// `--retry` is milliseconds, like the SSE field, where every other
/// duration is seconds: `--retry 3` (clients reconnecting after 3 ms) is
/// warned of at start; the default is not.
#[tokio::test]
async fn a_retry_of_a_few_milliseconds_is_warned_of_at_start() {
    let slip = pere_tests::ServerProcess::start(&["--retry", "3"]).await;
    let mut stream = pere_tests::SseStream::open(slip.addr, "/feed/r", &[]).await;
    assert_eq!(stream.next_event().await.unwrap().event, "pere.hello");
    assert!(stream.text().contains("retry:3\n"), "{}", stream.text());
    assert!(
        slip.log().contains("--retry is in milliseconds"),
        "{}",
        slip.log()
    );
    let default = pere_tests::ServerProcess::start(&[]).await;
    assert!(
        !default.log().contains("--retry is in"),
        "{}",
        default.log()
    );
}
