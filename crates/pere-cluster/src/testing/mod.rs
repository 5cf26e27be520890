//! Test support (feature `testing`): real `redis-server` and
//! `redis-sentinel` processes on free 127.0.0.1 ports, each in a temporary
//! directory, started by the test and killed by PID when dropped.
//!
//! [`RedisServer`] is one server, persistent the way PERE's docs tell users
//! to run it (`--appendonly yes --appendfsync always`, no RDB snapshots), so
//! a test can `kill -9` and restart it and expect every acknowledged write
//! back. [`SentinelGroup`] is a primary, a replica and three sentinels, for
//! failover tests.
//!
//! This is test code in a library so that the workspace's e2e tests and
//! benchmarks share it; it is never built into PERE's binaries. Waits are
//! bounded, and failures say what the server logged.

mod sentinel;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use sentinel::SentinelGroup;

/// How long a server may take to answer `PING` after it was started
/// (loading a large AOF included).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A port that was free a moment ago on 127.0.0.1. Another process may
/// take it before the server binds it; [`RedisServer::start`] then retries.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The server binary: `PERE_REDIS_SERVER` or `redis-server` on the `PATH`.
fn server_binary() -> String {
    std::env::var("PERE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// The sentinel binary: `PERE_REDIS_SENTINEL` or `redis-sentinel`.
fn sentinel_binary() -> String {
    std::env::var("PERE_REDIS_SENTINEL").unwrap_or_else(|_| "redis-sentinel".into())
}

/// How a server process is started, kept so it can be restarted the same.
#[derive(Clone, Debug)]
enum Launch {
    /// `redis-server` with these arguments (the port and dir are added).
    Server(Vec<String>),
    /// `redis-sentinel FILE` with this configuration (port and dir added).
    Sentinel(String),
}

/// A `redis-server` (or `redis-sentinel`) process owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Holds the data (AOF) across restarts, removed on drop.
    dir: tempfile::TempDir,
    launch: Launch,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with AOF `appendfsync always` and no RDB snapshots.
    ///
    /// # Errors
    ///
    /// When `redis-server` is missing or does not answer in time.
    pub fn start() -> io::Result<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments (`["--maxmemory", "10mb"]`).
    ///
    /// # Errors
    ///
    /// When `redis-server` is missing or does not answer in time.
    pub fn start_with(extra: &[&str]) -> io::Result<RedisServer> {
        let mut args: Vec<String> = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        // The harness kills by PID; no daemon may escape it.
        args.extend(["--daemonize".into(), "no".into()]);
        RedisServer::launch(Launch::Server(args))
    }

    /// Starts a sentinel with this configuration (without `port`/`dir`).
    pub(crate) fn start_sentinel(config: &str) -> io::Result<RedisServer> {
        RedisServer::launch(Launch::Sentinel(config.to_owned()))
    }

    fn launch(launch: Launch) -> io::Result<RedisServer> {
        let mut last = None;
        // A free port can be taken between our look and the server's bind.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port()?,
                dir: tempfile::Builder::new().prefix("pere-redis-").tempdir()?,
                launch: launch.clone(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// Starts the process on our port and dir, and waits until it answers.
    fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir.path().to_path_buf();
        let mut command = match &self.launch {
            Launch::Server(args) => {
                let mut command = Command::new(server_binary());
                command
                    .arg("--port")
                    .arg(self.port.to_string())
                    .arg("--bind")
                    .arg("127.0.0.1")
                    .arg("--dir")
                    .arg(&dir)
                    .arg("--logfile")
                    .arg(dir.join("redis.log"))
                    .args(args);
                command
            }
            Launch::Sentinel(config) => {
                let file = dir.join("sentinel.conf");
                // Sentinel rewrites its file, so it is written only once:
                // a restarted sentinel remembers what it learnt.
                if !file.exists() {
                    let full = format!(
                        "port {}\nbind 127.0.0.1\ndaemonize no\ndir {}\nlogfile {}\n{config}",
                        self.port,
                        dir.display(),
                        dir.join("redis.log").display(),
                    );
                    std::fs::write(&file, full)?;
                }
                let mut command = Command::new(sentinel_binary());
                command.arg(&file);
                command
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "cannot run {:?} (is it installed?): {err}",
                    command.get_program()
                ),
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "redis on port {} exited with {status}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            if self.query::<String>(&["PING"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(io::Error::other(format!(
                    "redis on port {} did not answer within {START_TIMEOUT:?}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines the server logged, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: the server dies at once, as in a crash, and its port
    /// refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL to our own child's PID; reaped so it leaves no zombie.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (after [`kill`]
    /// or on its own), and waits until it answers (its AOF loaded).
    ///
    /// [`kill`]: RedisServer::kill
    ///
    /// # Errors
    ///
    /// When it does not answer in time.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        // The old socket may linger a moment; Redis binds with SO_REUSEADDR.
        let mut last = None;
        for _ in 0..5 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(err) => last = Some(err),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis did not restart")))
    }

    /// `SIGSTOP`: the server keeps its connections but answers nothing, as
    /// a hung host does. [`thaw`](RedisServer::thaw) undoes it.
    ///
    /// # Errors
    ///
    /// When it is not running or `kill` fails.
    pub fn freeze(&self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// `SIGCONT` after [`freeze`](RedisServer::freeze).
    ///
    /// # Errors
    ///
    /// When it is not running or `kill` fails.
    pub fn thaw(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("redis is not running"))?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {signal} {pid}: {status}")))
        }
    }

    /// Runs one command on a fresh blocking connection (bounded by a
    /// timeout), for tests that inspect or poke the server.
    ///
    /// # Errors
    ///
    /// Whatever Redis or the connection says.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut command = redis::cmd(args.first().copied().unwrap_or("PING"));
        for arg in args.iter().skip(1) {
            command.arg(*arg);
        }
        command.query(&mut conn)
    }

    /// One field of `INFO` (`info("replication", "role")`).
    ///
    /// # Errors
    ///
    /// Whatever Redis or the connection says; a missing field is an error.
    pub fn info(&self, section: &str, field: &str) -> redis::RedisResult<String> {
        let text: String = self.query(&["INFO", section])?;
        text.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
            .ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "no such INFO field",
                    field.to_owned(),
                ))
            })
    }

    /// The calls of each command since the last `CONFIG RESETSTAT`, from
    /// `INFO commandstats` (`evalsha`, `xadd`, … including those scripts
    /// make), to count what an operation costs Redis.
    ///
    /// # Errors
    ///
    /// Whatever Redis or the connection says.
    pub fn command_calls(&self) -> redis::RedisResult<Vec<(String, u64)>> {
        let text: String = self.query(&["INFO", "commandstats"])?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.strip_prefix("calls=")?.split(',').next()?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect())
    }

    /// The path of a file in its directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
///
/// # Errors
///
/// A timeout naming `what`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> io::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {limit:?} waiting for {what}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
