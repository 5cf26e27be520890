//! The tool processes the CLI tests drive: a [`Proc`] guard that kills its
//! process when dropped (so a failing test leaves nothing running), a
//! `pere-server` [`Server`] on a free port, and small readers of their output.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use pere_tests::{WAIT, bin, request};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A process this test started, with its output read line by line in the
/// background. Dropping it kills the process (`kill_on_drop`).
pub(crate) struct Proc {
    name: String,
    /// Its own `XDG_STATE_HOME`, removed with it.
    state: std::path::PathBuf,
    pub(crate) child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stdout_task: JoinHandle<()>,
    stderr: mpsc::UnboundedReceiver<String>,
    stderr_log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts the workspace binary `name` with `args`.
    pub(crate) fn start(name: &str, args: &[&str], stdin: Stdio) -> Self {
        Self::start_env(name, args, stdin, &[])
    }

    /// Starts `name` with `args` and these environment variables. Each
    /// process gets its own `XDG_STATE_HOME` unless `env` names one, so
    /// that `pere-sub` never keeps a device id in the home of whoever runs
    /// the tests, and tests do not share one.
    pub(crate) fn start_env(
        name: &str,
        args: &[&str],
        stdin: Stdio,
        env: &[(&str, &std::path::Path)],
    ) -> Self {
        Self::spawn(name, args, stdin, env, false)
    }

    /// Starts `name` as the leader of a process group of its own, as a
    /// service manager runs it: [`terminate_group`](Proc::terminate_group)
    /// then signals it with every process it started.
    pub(crate) fn start_group(name: &str, args: &[&str]) -> Self {
        Self::spawn(name, args, Stdio::null(), &[], true)
    }

    fn spawn(
        name: &str,
        args: &[&str],
        stdin: Stdio,
        env: &[(&str, &std::path::Path)],
        group: bool,
    ) -> Self {
        let state = pere_tests::temp_dir("cli-state");
        let mut command = Command::new(bin(name));
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env("XDG_STATE_HOME", &state);
        if group {
            command.process_group(0);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (out_tx, stdout) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let stdout_task = tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = mpsc::unbounded_channel();
        let stderr_log = Arc::new(Mutex::new(Vec::new()));
        let log = stderr_log.clone();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                log.lock().unwrap().push(line.clone());
                let _ = err_tx.send(line);
            }
        });
        Self {
            name: name.to_string(),
            state,
            child,
            stdout,
            stdout_task,
            stderr,
            stderr_log,
        }
    }

    /// Everything the process wrote on stderr so far.
    pub(crate) fn stderr_text(&self) -> String {
        self.stderr_log.lock().unwrap().join("\n")
    }

    /// The next stdout line, waiting at most `WAIT`.
    pub(crate) async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.stdout.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "{} closed stdout; stderr:\n{}",
                self.name,
                self.stderr_text()
            ),
            Err(_) => panic!(
                "{} printed no line within {WAIT:?}; stderr:\n{}",
                self.name,
                self.stderr_text()
            ),
        }
    }

    /// The next stdout line, parsed as JSON.
    pub(crate) async fn json_line(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Reads stderr until a line contains `needle`; returns that line.
    pub(crate) async fn stderr_line_containing(&mut self, needle: &str) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.stderr.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!(
                    "{} never printed `{needle}` on stderr; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Waits (at most `WAIT`) for the process to exit.
    pub(crate) async fn exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "{} did not exit within {WAIT:?}; stderr:\n{}",
                self.name,
                self.stderr_text()
            ),
        }
    }

    /// Waits for a successful exit and returns every stdout line not read
    /// yet.
    pub(crate) async fn success(&mut self) -> Vec<String> {
        self.exit_with(0).await
    }

    /// Waits for an exit with status `code` and returns every stdout line
    /// not read yet.
    pub(crate) async fn exit_with(&mut self, code: i32) -> Vec<String> {
        let status = self.exit().await;
        assert_eq!(
            status.code(),
            Some(code),
            "{} exited with {status}; stderr:\n{}",
            self.name,
            self.stderr_text()
        );
        let mut lines = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, self.stdout.recv()).await {
            lines.push(line);
        }
        lines
    }

    /// Closes our end of the process's stdout, as `head` does when it has
    /// read enough.
    pub(crate) fn close_stdout(&mut self) {
        self.stdout_task.abort();
        self.stdout.close();
    }

    /// Sends SIGTERM to this process (by its pid), like a service manager.
    pub(crate) fn terminate(&self) {
        self.signal_term(false);
    }

    /// Sends SIGTERM to the process group of a [`start_group`](Proc::start_group)
    /// process: to it and to every process it started.
    pub(crate) fn terminate_group(&self) {
        self.signal_term(true);
    }

    fn signal_term(&self, group: bool) {
        let pid = self.child.id().expect("the process is still running");
        let target = if group {
            format!("-{pid}")
        } else {
            pid.to_string()
        };
        let sent = std::process::Command::new("kill")
            .args(["-TERM", "--", &target])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "cannot send SIGTERM to {}",
            self.name
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A `pere-server` process with the memory store (nothing written to disk;
/// a restart forgets every event) and a 200 ms `retry`, so subscribers
/// reconnect quickly.
pub(crate) struct Server {
    proc: Proc,
    pub(crate) addr: SocketAddr,
}

impl Server {
    /// Starts a server on `port` (0 picks a free one, read from the banner).
    pub(crate) async fn start(port: u16) -> Self {
        let port = port.to_string();
        let mut proc = Proc::start(
            "pere-server",
            &["--memory", "--port", &port, "--retry", "200"],
            Stdio::null(),
        );
        // The banner: `  listening   http://127.0.0.1:PORT`.
        let line = proc.stderr_line_containing("listening   http://").await;
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in the banner line {line:?}"));
        Self { proc, addr }
    }

    /// `HOST:PORT`, as the tools take it.
    pub(crate) fn hostport(&self) -> String {
        self.addr.to_string()
    }

    /// `GET path` as JSON, asserting `200`.
    pub(crate) async fn get_json(&self, path: &str) -> Value {
        let r = request(self.addr, "GET", path, &[], b"").await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Publishes over HTTP and returns the id.
    pub(crate) async fn publish(&self, channel: &str, payload: &str) -> String {
        let r = request(
            self.addr,
            "POST",
            &format!("/push/{channel}"),
            &[],
            payload.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 201, "publish: {}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// SIGKILL: the server vanishes without answering anything.
    pub(crate) async fn kill9(mut self) {
        self.proc.child.start_kill().unwrap();
        self.proc.exit().await;
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) async fn stop(mut self) {
        self.proc.terminate();
        let status = self.proc.exit().await;
        assert!(
            status.success(),
            "the server exits cleanly on SIGTERM ({status}); stderr:\n{}",
            self.proc.stderr_text()
        );
    }
}

/// A port with nothing listening on it (bound, then released: the race
/// with another process taking it meanwhile is accepted).
pub(crate) async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// The event id that starts a `pere-pub` output line.
pub(crate) fn first_word_id(line: &str) -> u64 {
    line.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("the line does not start with an event id: {line:?}"))
}
