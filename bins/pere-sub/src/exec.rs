//! `--exec CMD`: the "status of local elaboration" of PERE's seed. Each
//! event's payload is handed to a command, and how the command ended becomes
//! the event's receipt status.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use pere_core::MAX_STATUS_LEN;
use pere_http::sse::SseEvent;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Once the shell ended, how long its stdin and stderr may go quiet before
/// they are left: what the command left in the background may hold them
/// open for ever, and must neither hold the receipt back nor turn it into
/// a timeout. While stderr still flows, it is read on.
const QUIET_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Kills `shell` and every process it started that is still its
/// descendant: the timeout's end of a command, which killing the shell
/// alone left running (`sh -c 'job; true'` forks `job`; one orphan per
/// event). Found in /proc; a process that left the tree (a daemon that
/// forked away) is not followed. The command stays in pere-sub's process
/// group, so a terminal's Ctrl-C, Ctrl-Z or hangup reaches both, as before.
fn kill_tree(shell: u32) {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) = parent_of(pid) {
                children.entry(parent).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![shell];
    let mut seen = std::collections::HashSet::from([shell]);
    let mut i = 0;
    while let Some(&pid) = tree.get(i) {
        for &child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child) {
                tree.push(child);
            }
        }
        i += 1;
    }
    for pid in tree {
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            // Already gone is fine: nothing left to stop.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The parent of `pid`, from `/proc/PID/stat` (its fourth field, after the
/// command name in parentheses, which may itself hold spaces or `)`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// What the subscriber knows about the event beyond the SSE fields.
pub struct Context<'a> {
    /// The event's channel (the subscribed one when the server did not say).
    pub channel: &'a str,
    /// This subscriber's device id.
    pub device: &'a str,
}

/// Runs `command` through `sh -c` with the event's payload on stdin (as a
/// line: a newline is added unless it ends with one) and
/// returns the receipt status: `ok` when it exits with 0, otherwise
/// `error: exit N` (or `error: signal N`, `error: timed out after …`)
/// followed by the first line of its stderr.
///
/// The command's stdout goes to pere-sub's stdout; its stderr is relayed to
/// pere-sub's stderr so nothing it says is lost.
pub async fn run(command: &str, event: &SseEvent, ctx: &Context<'_>, timeout: Duration) -> String {
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("PERE_EVENT_ID", &event.id)
        .env("PERE_EVENT", &event.event)
        .env("PERE_CHANNEL", ctx.channel)
        .env("PERE_DEVICE", ctx.device)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return clip(format!("error: cannot run `sh -c`: {err}")),
    };
    let shell = child.id();
    // Feed stdin and drain stderr concurrently with waiting: a command that
    // does not read its input, or writes a lot to stderr, must not deadlock.
    let stdin = child.stdin.take();
    // A line of text ends with a newline: `cat >> jobs.log` then keeps one
    // event per line instead of gluing payloads together (issue 18.10);
    // `$(cat)` in the shell drops it again.
    let mut payload = event.data.clone();
    if !payload.ends_with('\n') {
        payload.push('\n');
    }
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that exits without reading its input closes the pipe:
            // that is its business, not an error of ours.
            let _ = stdin.write_all(payload.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
    };
    let stderr = child.stderr.take();
    // The first line of its stderr, for the status; bytes read, to tell
    // a stderr that still flows after the shell ended.
    let mut first: Option<String> = None;
    let read = std::cell::Cell::new(0usize);
    let drain = async {
        if let Some(stderr) = stderr {
            let mut lines = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        read.set(read.get() + n);
                        let text = String::from_utf8_lossy(&line);
                        eprint!("{text}");
                        if !text.ends_with('\n') {
                            eprintln!();
                        }
                        if first.is_none() && !text.trim().is_empty() {
                            first = Some(text.trim().to_owned());
                        }
                    }
                }
            }
            // Whatever is left after a read error is discarded, not kept in
            // memory.
            let _ = lines.read_to_end(&mut Vec::new()).await;
        }
    };
    let wait = async {
        tokio::pin!(feed, drain);
        let (mut fed, mut drained) = (false, false);
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                () = &mut feed, if !fed => fed = true,
                () = &mut drain, if !drained => drained = true,
            }
        };
        // The shell ended. What it left in the background may hold its
        // stdin or stderr for ever: they are left once quiet, and the
        // status is the shell's.
        if !fed {
            let _ = tokio::time::timeout(QUIET_AFTER_EXIT, &mut feed).await;
        }
        while !drained {
            let before = read.get();
            match tokio::time::timeout(QUIET_AFTER_EXIT, &mut drain).await {
                Ok(()) => drained = true,
                Err(_) if read.get() == before => break,
                Err(_) => {}
            }
        }
        status
    };
    let outcome = tokio::time::timeout(timeout, wait).await;
    match outcome {
        Ok(Ok(status)) => status_of(status, first.as_deref()),
        Ok(Err(err)) => clip(format!("error: waiting for the command failed: {err}")),
        Err(_) => {
            if let Some(shell) = shell {
                kill_tree(shell);
            }
            let _ = child.kill().await;
            clip(format!("error: timed out after {}", humanize(timeout)))
        }
    }
}

/// The receipt status for a command that ended with `status`.
fn status_of(status: ExitStatus, first_stderr_line: Option<&str>) -> String {
    if status.success() {
        return "ok".into();
    }
    let how = match status.code() {
        Some(code) => format!("error: exit {code}"),
        None => signal_of(status),
    };
    match first_stderr_line {
        Some(line) => clip(format!("{how}: {line}")),
        None => clip(how),
    }
}

/// How the status of a command a signal ended begins.
pub const SIGNALLED: &str = "error: signal ";

#[cfg(unix)]
fn signal_of(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(sig) => format!("{SIGNALLED}{sig}"),
        None => "error: ended abnormally".into(),
    }
}

#[cfg(not(unix))]
fn signal_of(_status: ExitStatus) -> String {
    "error: ended abnormally".into()
}

/// Cuts a status to what the server accepts, on a character boundary.
fn clip(mut status: String) -> String {
    if status.len() > MAX_STATUS_LEN {
        let mut end = MAX_STATUS_LEN;
        while !status.is_char_boundary(end) {
            end -= 1;
        }
        status.truncate(end);
    }
    status
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(data: &str) -> SseEvent {
        SseEvent {
            id: "7".into(),
            event: "message".into(),
            data: data.into(),
        }
    }

    async fn status(cmd: &str, data: &str) -> String {
        let ctx = Context {
            channel: "orders",
            device: "dev-1",
        };
        run(cmd, &event(data), &ctx, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn success_is_ok_and_the_payload_arrives_on_stdin() {
        assert_eq!(status("grep -q '^hello$'", "hello").await, "ok");
        assert_eq!(
            status(
                "test \"$PERE_EVENT_ID/$PERE_CHANNEL/$PERE_DEVICE\" = 7/orders/dev-1",
                ""
            )
            .await,
            "ok"
        );
    }

    #[tokio::test]
    async fn failure_reports_the_exit_code_and_first_stderr_line() {
        assert_eq!(
            status("echo 'disk full' >&2; echo more >&2; exit 3", "x").await,
            "error: exit 3: disk full"
        );
        assert_eq!(status("exit 9", "x").await, "error: exit 9");
        assert_eq!(status("kill -9 $$", "x").await, "error: signal 9");
    }

    #[tokio::test]
    async fn a_command_that_ignores_a_large_payload_does_not_hang() {
        let big = "x".repeat(1 << 20);
        assert_eq!(status("exit 0", &big).await, "ok");
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_at_the_timeout() {
        let ctx = Context {
            channel: "c",
            device: "d",
        };
        let got = run("sleep 30", &event(""), &ctx, Duration::from_millis(200)).await;
        assert_eq!(got, "error: timed out after 200ms");
    }

    #[test]
    fn long_statuses_are_clipped_on_a_char_boundary() {
        let s = clip("é".repeat(MAX_STATUS_LEN));
        assert!(s.len() <= MAX_STATUS_LEN);
        assert!(s.chars().all(|c| c == 'é'));
    }
}
