//! `pere-sub --exec` and the processes a command starts: at
//! `--exec-timeout` they are stopped with it (only the `sh -c` was, and a
//! `sleep` the shell forked ran on, one orphan per event: a probe's
//! finding); what a command that ended by itself left in the background
//! neither holds its receipt back nor is killed. And a stop (SIGTERM,
//! Ctrl-C) while a command runs: the receipt says what happened to it.

use std::process::Stdio;

use pere_tests::eventually;

use crate::procs::{Proc, Server};

/// Pids of the processes whose command line holds `marker` (a number no
/// other process uses, given to `sleep`).
fn running_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == marker.as_bytes()))
        })
        .collect()
}

/// Ends what a failing test left running: only the processes this test's
/// commands started, found by their marker.
struct Sweep(&'static str);

impl Drop for Sweep {
    fn drop(&mut self) {
        for pid in running_with(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// `pere-sub` on `jobs` as device `w`, printing JSON, for `count` events.
fn sub_args<'a>(addr: &'a str, count: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![addr, "jobs", "--json", "--count", count, "--device", "w"];
    args.extend_from_slice(extra);
    args
}

fn start_sub(addr: &str, extra: &[&str]) -> Proc {
    Proc::start("pere-sub", &sub_args(addr, "1", extra), Stdio::null())
}

#[tokio::test]
async fn an_exec_timeout_stops_the_processes_the_command_started() {
    const MARKER: &str = "299.4101";
    let _sweep = Sweep(MARKER);
    let server = Server::start(0).await;
    let addr = server.hostport();
    // `sleep` is not the shell's last command: the shell forks it.
    let exec = format!("sleep {MARKER}; true");
    let mut sub = start_sub(&addr, &["--exec-timeout", "3s", "--exec", &exec]);
    assert_eq!(sub.json_line().await["event"], "pere.hello");
    let id = server.publish("jobs", "job").await;
    eventually("the command's sleep runs", || async {
        !running_with(MARKER).is_empty()
    })
    .await;
    sub.success().await;
    let receipts = server.get_json(&format!("/receipts/jobs/{id}")).await;
    assert_eq!(
        receipts["devices"]["w"]["status"], "error: timed out after 3s",
        "{receipts}"
    );
    eventually("the timed-out command's sleep is gone", || async {
        running_with(MARKER).is_empty()
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn what_a_finished_command_left_in_the_background_is_left_alone() {
    const MARKER: &str = "298.4102";
    let _sweep = Sweep(MARKER);
    let server = Server::start(0).await;
    let addr = server.hostport();
    // The background sleep keeps the shell's stderr open: the receipt
    // must not wait for it (it waited for the timeout, and said so).
    let exec = format!("sleep {MARKER} >/dev/null & echo started >&2; exit 0");
    let mut sub = start_sub(&addr, &["--exec-timeout", "20s", "--exec", &exec]);
    assert_eq!(sub.json_line().await["event"], "pere.hello");
    let id = server.publish("jobs", "job").await;
    sub.success().await;
    let receipts = server.get_json(&format!("/receipts/jobs/{id}")).await;
    assert_eq!(receipts["devices"]["w"]["status"], "ok", "{receipts}");
    assert!(
        !running_with(MARKER).is_empty(),
        "the command's background sleep was left running"
    );
    server.stop().await;
}

/// `kill PID` of `pere-sub` alone while its command runs: the command
/// finishes, its receipt is sent, and `pere-sub` exits with 143 (it died
/// at once, without the receipt: the event came again, and ran twice).
#[tokio::test]
async fn a_stop_sent_to_pere_sub_alone_lets_the_command_finish_and_acks_it() {
    const MARKER: &str = "1.4103";
    let _sweep = Sweep(MARKER);
    let server = Server::start(0).await;
    let addr = server.hostport();
    let exec = format!("sleep {MARKER}; echo done >&2");
    let args = sub_args(&addr, "2", &["--exec", &exec]);
    let mut sub = Proc::start("pere-sub", &args, Stdio::null());
    assert_eq!(sub.json_line().await["event"], "pere.hello");
    let id = server.publish("jobs", "job").await;
    eventually("the command runs", || async {
        !running_with(MARKER).is_empty()
    })
    .await;
    sub.terminate();
    sub.exit_with(143).await;
    let receipts = server.get_json(&format!("/receipts/jobs/{id}")).await;
    assert_eq!(receipts["devices"]["w"]["state"], "acked", "{receipts}");
    assert_eq!(receipts["devices"]["w"]["status"], "ok", "{receipts}");
    server.stop().await;
}

/// A stop that reaches the command too (systemd's, a terminal's Ctrl-C):
/// the command was cut short, not failed, so its event is not
/// acknowledged (it was, as `error: signal 15`, and never came again):
/// the next run gets it and runs it.
#[tokio::test]
async fn a_stop_that_reaches_the_command_too_leaves_its_event_to_come_again() {
    const MARKER: &str = "297.4104";
    let _sweep = Sweep(MARKER);
    let server = Server::start(0).await;
    let addr = server.hostport();
    // A device that acknowledges (its first receipt says so) gets what it
    // did not acknowledge again (docs/PROTOCOL.md §5).
    let mut first = start_sub(&addr, &["--exec", "cat >/dev/null"]);
    assert_eq!(first.json_line().await["event"], "pere.hello");
    server.publish("jobs", "first").await;
    first.success().await;
    // Killed by the signal, or a script that traps it and exits 143.
    for exec in [
        format!("sleep {MARKER}"),
        format!("trap 'exit 143' TERM; sleep {MARKER} & wait"),
    ] {
        let mut sub = Proc::start_group("pere-sub", &sub_args(&addr, "2", &["--exec", &exec]));
        assert_eq!(sub.json_line().await["event"], "pere.hello");
        let id = server.publish("jobs", "job").await;
        eventually("the command runs", || async {
            !running_with(MARKER).is_empty()
        })
        .await;
        sub.terminate_group();
        sub.exit_with(143).await;
        assert!(
            sub.stderr_text().contains("comes again"),
            "{exec}: {}",
            sub.stderr_text()
        );
        let receipts = server.get_json(&format!("/receipts/jobs/{id}")).await;
        assert_eq!(
            receipts["devices"]["w"]["state"], "delivered",
            "{exec}: {receipts}"
        );
        let mut again = start_sub(&addr, &["--exec", "cat >/dev/null"]);
        assert_eq!(again.json_line().await["event"], "pere.hello");
        assert_eq!(again.json_line().await["id"], id.as_str());
        again.success().await;
    }
    server.stop().await;
}
