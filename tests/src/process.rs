//! [`ServerProcess`]: the real `pere-server` binary, for what needs it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::client::Client;
use crate::http::request;
use crate::{WAIT, bin, eventually};

/// A `pere-server` process on `127.0.0.1:0`, for what needs the real binary:
/// flags, the `--auth` file, restarts over a data directory, its memory.
/// Its stderr (banner and logs) is collected; it is killed when dropped.
pub struct ServerProcess {
    /// Requests to it (where it listens, read from its banner:
    /// `server.addr`).
    client: Client,
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Starts `pere-server --host 127.0.0.1 --port 0 ARGS…` (with
    /// `--memory` unless `args` name a `--data-dir`) and waits until it
    /// answers `/healthz`.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_logging(args, "info").await
    }

    /// The same, its logs filtered by `rust_log` (`RUST_LOG`).
    pub async fn start_logging(args: &[&str], rust_log: &str) -> Self {
        Self::start_with_env(args, &[("RUST_LOG", rust_log)]).await
    }

    /// [`ServerProcess::start`] with these environment variables
    /// (`RUST_LOG` is `info` unless they set it).
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(bin("pere-server"));
        cmd.env("RUST_LOG", "info").envs(env.iter().copied());
        cmd.args(["--host", "127.0.0.1", "--port", "0"]);
        if !args.contains(&"--data-dir") {
            cmd.arg("--memory");
        }
        let mut child = cmd
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("pere-server starts");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        // Drains stderr for the whole run (a full pipe would block the
        // server) and reports the address from the banner.
        std::thread::spawn({
            let log = log.clone();
            move || {
                let mut tx = Some(tx);
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.trim().strip_prefix("listening")
                        && let Some(addr) = rest
                            .trim()
                            .strip_prefix("http://")
                            .or_else(|| rest.trim().strip_prefix("https://"))
                        && let Some(addr) = addr.split_whitespace().next()
                        && let Ok(addr) = addr.parse::<SocketAddr>()
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "pere-server printed no address: {}",
                    log.lock().unwrap().as_str()
                );
            }
        };
        let server = Self {
            client: Client::new(addr),
            child,
            log,
        };
        if args.contains(&"--tls-cert") {
            // Plain HTTP gets no answer there: the listener is enough (a
            // TLS test checks the rest with its own CA).
            eventually("pere-server accepts connections", || async {
                TcpStream::connect(server.addr).await.is_ok()
            })
            .await;
            return server;
        }
        eventually("pere-server answers /healthz", || async {
            request(server.addr, "GET", "/healthz", &[], b"")
                .await
                .status
                == 200
        })
        .await;
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit code, once it exited by itself (`None` while it runs).
    pub fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its resident memory in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns the log.
    pub fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "pere-server exits cleanly: {status}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pere-server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the drain thread catch the last lines.
        std::thread::sleep(Duration::from_millis(50));
        self.log()
    }
}

impl std::ops::Deref for ServerProcess {
    type Target = Client;

    /// Its requests: `server.publish(…)`, `server.admin().devices(…)`.
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
