//! `pere-server`: flags → config → `pere_http::run` over a hub.

mod cluster;
mod config;
mod secure;

use std::io::Write as _;
use std::process::ExitCode;

use config::{Args, Config, LogFormat, StoreKind, show_duration};
use pere_core::{EventStore, FileStore, FileStoreConfig, Fsync, Hub, MemoryStore};
use tracing_subscriber::EnvFilter;

/// Why the hub stopped serving on its own, if it did (see
/// [`Hub::failure`]): the process then exits with 75 so that it is
/// restarted.
static HUB_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let args: Args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let config = match Config::resolve(args, &env) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("pere-server: {err}");
            return ExitCode::from(2);
        }
    };
    if let StoreKind::File { dir, .. } = &config.store
        && dir.exists()
        && !dir.is_dir()
    {
        eprintln!(
            "pere-server: --data-dir `{}` is a file, not a directory: give a directory (it is created if missing), or --memory to keep nothing on disk",
            dir.display()
        );
        return ExitCode::from(2);
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("pere-server: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let explain = Explain::from(&config);
    match runtime.block_on(serve(config)) {
        Ok(()) => match HUB_FAILED.get() {
            Some(reason) => {
                eprintln!(
                    "pere-server: {reason}; restart this node (a supervisor's restart policy does it) to rebuild its state from the log"
                );
                // EX_TEMPFAIL: a restart is the remedy.
                ExitCode::from(75)
            }
            None => ExitCode::SUCCESS,
        },
        Err(err) => {
            eprintln!("pere-server: {}", explain.failure(&err));
            // A configuration error like any other, only found once the
            // listening address is known.
            if matches!(
                err,
                pere_http::Error::WebhookLoop { .. }
                    | pere_http::Error::Core(pere_core::Error::Config(_))
            ) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// What a failure to start means and what to do about it (issue 18.9: a
/// bare "Address already in use" or "lock acquisition failed" leaves the
/// operator guessing).
struct Explain {
    addr: std::net::SocketAddr,
    data_dir: Option<std::path::PathBuf>,
}

impl From<&Config> for Explain {
    fn from(config: &Config) -> Self {
        Self {
            addr: config.addr,
            data_dir: match &config.store {
                StoreKind::File { dir, .. } => Some(dir.clone()),
                StoreKind::Memory | StoreKind::Cluster { .. } => None,
            },
        }
    }
}

impl Explain {
    fn failure(&self, err: &pere_http::Error) -> String {
        use std::io::ErrorKind;
        let port = self.addr.port();
        match err {
            pere_http::Error::Io { source, .. } if source.kind() == ErrorKind::AddrInUse => {
                format!(
                    "{err}: port {port} is taken (another pere-server? `ss -ltnp 'sport = :{port}'` shows who has it): stop it, or choose another port with --port (0 picks a free one)"
                )
            }
            pere_http::Error::Io { source, .. }
                if source.kind() == ErrorKind::PermissionDenied && port < 1024 =>
            {
                format!(
                    "{err}: ports below 1024 need privileges: choose another with --port (PERE's is 4567), or put a proxy in front"
                )
            }
            // Only a lock another process holds: a LOCK file that cannot be
            // opened or locked at all (permissions, a read-only mount, a
            // directory in its place) says its own cause.
            pere_http::Error::Core(pere_core::Error::Io { path, source })
                if source.kind() == ErrorKind::WouldBlock
                    && path.file_name().is_some_and(|n| n == "LOCK") =>
            {
                let dir = self
                    .data_dir
                    .as_deref()
                    .map_or_else(|| path.display().to_string(), |d| d.display().to_string());
                let holder = lock_holder(path).map_or_else(
                    || "another process".to_string(),
                    |(pid, command)| format!("another process (pid {pid}: {command})"),
                );
                format!(
                    "the data directory {dir} is in use by {holder}: one server per directory. Stop that one, or give this one another --data-dir (or --memory)"
                )
            }
            err => err.to_string(),
        }
    }
}

/// The process holding the lock on `path`, from `/proc/locks` (a line
/// ends with the holder's pid, `MAJOR:MINOR:INODE`, start and end), with
/// its command line.
fn lock_holder(path: &std::path::Path) -> Option<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(path).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|line| {
        // Counted from the end: a waiting lock's line has an extra `->`.
        let fields: Vec<&str> = line.split_whitespace().collect();
        let n = fields.len();
        let file = fields.get(n.checked_sub(3)?)?;
        let pid = fields.get(n.checked_sub(4)?)?;
        let file_inode = file.rsplit(':').next()?.parse::<u64>().ok()?;
        if file_inode == inode {
            pid.parse::<u32>().ok()
        } else {
            None
        }
    })?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some((pid, command))
}

/// Parses the command line (usage errors exit with 2, see
/// [`pere_http::cli::command_line`]).
fn parse_args() -> Result<Args, ExitCode> {
    pere_http::cli::command_line("pere-server", |rest| {
        <Args as argh::FromArgs>::from_args(&["pere-server"], rest)
            .map_err(|early| (early.output, early.status.is_ok()))
    })
}

fn init_logging(config: &Config) {
    let default = match (config.quiet, config.log_format) {
        (false, _) => "info",
        (true, LogFormat::Text) => "warn",
        // Quiet JSON has no banner: its `listening` line is the address.
        (true, LogFormat::Json) => "warn,pere_server::listening=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or journald gets
        // plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr on a full disk) is
        // lost; tracing would otherwise report it with `eprintln!`, which
        // panics the task that logged, and a task of the hub must not die
        // of a full disk.
        .log_internal_errors(false);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

async fn serve(config: Config) -> Result<(), pere_http::Error> {
    // Handled from the start: SIGHUP's default action ends the process, and
    // `systemctl reload` or a closed terminal sends it, also while the
    // store recovers or a cluster node loads its snapshot.
    reload_on_sighup(config.server.tls.clone());
    for warning in config.server.tls.iter().flat_map(|tls| tls.warnings()) {
        tracing::warn!("{warning}");
    }
    if config.server.retry < RETRY_WARN {
        // Milliseconds, like the SSE field, where every other duration is
        // seconds: `--retry 3` is more likely a slip than a wish.
        tracing::warn!(
            retry_ms = config.server.retry.as_millis(),
            "--retry is in milliseconds: clients that lose their stream reconnect after that little (the default is 3000)"
        );
    }
    let listener = pere_http::bind(config.addr).await?;
    if let (Some(webhook), Ok(addr)) = (&config.server.webhook, listener.local_addr()) {
        // `run` checks it too; here it comes before the store is opened and
        // the banner printed, so that a refused start does not first look
        // like a started server.
        webhook.check_not_server(addr).await?;
    }
    match &config.store {
        StoreKind::Memory => {
            serve_with(config.clone(), listener, MemoryStore::new(config.retention)).await
        }
        StoreKind::File { dir, fsync } => {
            let store = FileStore::open(FileStoreConfig {
                dir: dir.clone(),
                retention: config.retention,
                fsync: *fsync,
                segment_size: pere_core::DEFAULT_SEGMENT_SIZE,
            })?;
            serve_with(config.clone(), listener, store).await
        }
        StoreKind::Cluster {
            url,
            node,
            snapshot_every,
            log_keep,
            replicas,
        } => {
            let engine = pere_cluster::Engine::connect(pere_cluster::ClusterConfig {
                snapshot_every: *snapshot_every,
                log_keep: *log_keep,
                replicas: *replicas,
                ..pere_cluster::ClusterConfig::new(url.clone(), node.clone())
            })
            .await
            .map_err(|err| cannot_join(url, err))?;
            engine.claim_node().await.map_err(|err| match err {
                // A configuration error: exit 2.
                pere_cluster::EngineError::NodeIdInUse { .. } => {
                    pere_core::Error::Config(err.to_string())
                }
                err => cannot_join(url, err),
            })?;
            // The shared log is the journal: the node's own store only
            // holds what it replays from it.
            let store = MemoryStore::new(config.retention);
            let hub = Hub::open_cluster(
                config.hub.clone(),
                store,
                std::sync::Arc::new(engine.clone())
                    as std::sync::Arc<dyn pere_core::cluster::SharedLog>,
                auth_registry(&config)?,
            )
            .await?;
            let served = serve_hub(config, listener, hub).await;
            // A clean stop frees the node id at once for a restart.
            if let Err(err) = engine.release_node().await {
                tracing::warn!(cause = %err, "the node id's claim was not released: a restart under it waits a few seconds");
            }
            served
        }
    }
}

/// A reconnection delay below which the start warns.
const RETRY_WARN: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a node could not join its cluster at start, and what to check: the
/// engine's "retry in" is for requests, while a start ends here.
fn cannot_join(url: &str, err: pere_cluster::EngineError) -> pere_core::Error {
    let url = cluster::redacted(url);
    pere_core::Error::StoreUnavailable(match err {
        pere_cluster::EngineError::Unavailable { reason, .. } => format!(
            "cannot join the cluster: redis at {url} does not answer ({reason}); is it running, and is --cluster right?"
        ),
        err => format!("cannot join the cluster at {url}: {err}"),
    })
}

async fn serve_with<S: EventStore>(
    config: Config,
    listener: tokio::net::TcpListener,
    store: S,
) -> Result<(), pere_http::Error> {
    let hub = Hub::open_with_auth(config.hub.clone(), store, auth_registry(&config)?).await?;
    serve_hub(config, listener, hub).await
}

/// The hub's token table as configured (`--auth`, `--jwt-*`), set up before
/// the hub opens: what the journal or the cluster's log replays is then
/// checked as it was when it was written.
fn auth_registry(config: &Config) -> Result<pere_core::AuthRegistry, pere_http::Error> {
    let auth = pere_core::AuthRegistry::default();
    if let Some((path, tokens)) = &config.auth {
        if tokens.is_empty() {
            tracing::warn!(file = %path.display(), "the auth file defines no token: every request but the open pages gets 401");
        }
        auth.enable(tokens.clone());
    }
    if let Some(jwt) = &config.jwt {
        // Checked when the configuration was resolved.
        auth.enable_jwt(pere_core::jwt::JwtVerifier::new(jwt)?);
    }
    Ok(auth)
}

async fn serve_hub<S: EventStore>(
    config: Config,
    listener: tokio::net::TcpListener,
    hub: Hub<S>,
) -> Result<(), pere_http::Error> {
    let addr = listener
        .local_addr()
        .map_err(|source| pere_http::Error::Io {
            context: "cannot read the listening address".into(),
            source,
        })?;
    let mut server = config.server.clone();
    let nofile = raise_nofile();
    server.fd_budget = nofile.map(pere_http::server::limits::fd_budget);
    banner(&config, addr, &hub, nofile);
    tokio::spawn(pere_http::server::activity::log_activity(
        hub.clone(),
        config.log_summary,
    ));
    let stop = {
        let hub = hub.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => {}
                reason = hub.failure() => {
                    let _ = HUB_FAILED.set(reason);
                }
            }
        }
    };
    pere_http::run(listener, hub, server, stop).await?;
    tracing::info!("bye");
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft
/// limit now in force. Every stream holds a socket, and the usual soft
/// default (1024) would cap a push server at about a thousand devices while
/// the hard limit allows far more. `None` when the limit cannot be read.
fn raise_nofile() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(err) => {
            tracing::warn!(cause = %err, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

fn banner<S: EventStore>(
    config: &Config,
    addr: std::net::SocketAddr,
    hub: &Hub<S>,
    nofile: Option<u64>,
) {
    let s = &config.server;
    let auth = if !hub.auth().is_enabled() {
        "off (anyone may publish, subscribe and use /admin; see --auth)".to_string()
    } else {
        let tokens = hub.auth().list();
        let n = tokens.len();
        let plural = if n == 1 { "" } else { "s" };
        let mut line = match &config.auth {
            Some((path, _)) => format!("on, {n} token{plural} ({} and run-time)", path.display()),
            None => format!("on, {n} run-time token{plural} kept by the store"),
        };
        if hub.auth().jwt_enabled() {
            line.push_str(&format!("; JWT {}", hub.auth().jwt_algorithms().join(", ")));
        }
        // A JWT may be an admin one.
        if config.jwt.is_none() && !tokens.iter().any(|(_, grants, _)| grants.admin) {
            // Reachable by revoking or not reloading the only admin token:
            // then nothing can manage tokens until one is given back.
            line.push_str(
                "; NO admin token: /admin and /metrics are unreachable until the server \
                 is restarted with --auth FILE listing one (a new one if it was revoked)",
            );
            tracing::warn!(
                "auth is on but no token is admin: restart with --auth FILE listing an admin token (a new one if it was revoked) to manage tokens again"
            );
        }
        line
    };
    let capacity = match nofile {
        Some(n) => format!(
            "{} connections ({n} file descriptors)",
            pere_http::server::limits::fd_budget(n)
        ),
        None => "unknown (open-file limit unreadable)".into(),
    };
    let r = &config.retention;
    let age = r.max_age.map_or("no age limit".to_string(), |a| {
        format!("max age {}", show_duration(a))
    });
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    let lines = [
        format!(
            "PERE {} — push events with return receipts",
            env!("CARGO_PKG_VERSION")
        ),
        format!(
            "  listening   {scheme}://{addr}{}",
            if s.tls.is_some() {
                " (TLS: HTTP/2 and HTTP/1.1)"
            } else {
                ""
            }
        ),
        match &config.store {
            StoreKind::Memory => format!(
                "  store       memory, lost on restart (history {} events/channel, {age})",
                r.history
            ),
            StoreKind::File { dir, fsync } => format!(
                "  store       {} (fsync {}, history {} events/channel, {age})",
                dir.display(),
                match fsync {
                    Fsync::Always => "always",
                    Fsync::Never => "never",
                },
                r.history
            ),
            StoreKind::Cluster {
                url,
                node,
                replicas,
                ..
            } => format!(
                "  store       cluster {} as node {node} (history {} events/channel, {age}{})",
                cluster::redacted(url),
                r.history,
                match replicas {
                    0 => String::new(),
                    1 => ", answers once a replica has it".to_owned(),
                    n => format!(", answers once {n} replicas have it"),
                }
            ),
        },
        format!(
            "  streams     retry {} ms, keepalive {}, member TTL {}, replay-all {}",
            config.server.retry.as_millis(),
            show_duration(config.server.keepalive),
            show_duration(config.hub.member_ttl),
            if config.hub.replay_all { "on" } else { "off" },
        ),
        format!("  auth        {auth}"),
        format!(
            "  limits      {} streams ({} per device), {} channels/stream, {} channels, capacity {capacity}",
            s.max_streams,
            s.max_streams_per_device,
            config.hub.max_channels_per_stream,
            config.hub.max_channels
        ),
        format!(
            "  timeouts    header {}, body {}, idle {}, send {}; head ≤ {} bytes, payload ≤ {} bytes",
            show_duration(s.header_read_timeout),
            show_duration(s.body_read_timeout),
            show_duration(s.idle_timeout),
            show_duration(s.send_timeout),
            s.max_header_bytes,
            config.hub.max_payload
        ),
        format!("  web         {scheme}://{addr}/subscriber.html"),
        if hub.auth().is_enabled() {
            // The token's subject is the device.
            format!(
                "  try         curl -N -H 'Authorization: Bearer TOKEN' {scheme}://{addr}/feed/CHANNEL_1"
            )
        } else {
            format!("  try         curl -N -H 'device: me' {scheme}://{addr}/feed/CHANNEL_1")
        },
    ];
    // JSON logs carry the address in their "listening" line: plain text
    // there would break a reader of JSON lines. Quiet keeps the address
    // (`--port 0` picks one nothing else tells).
    let shown: &[String] = match (config.log_format, config.quiet) {
        (LogFormat::Json, _) => &[],
        (LogFormat::Text, true) => &lines[1..2],
        (LogFormat::Text, false) => &lines,
    };
    for line in shown {
        // Not `eprintln!`: a server whose stderr cannot be written (a
        // full disk under its log file) still serves.
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    tracing::info!(target: "pere_server::listening", %addr, nofile, "listening");
}

/// Reads the certificate again on every SIGHUP (after a renewal): new
/// handshakes present it, open connections and their streams stay. A
/// certificate that cannot be read leaves the current one in use. Without
/// TLS there is nothing to reload, and the signal is only logged. The
/// handler is installed before this returns.
fn reload_on_sighup(tls: Option<std::sync::Arc<pere_http::tls::ServerTls>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(err) => {
                tracing::warn!(cause = %err, "cannot listen for SIGHUP: it would end the server, and the certificate is not reloaded");
                return;
            }
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let Some(tls) = &tls else {
                    tracing::info!("SIGHUP: nothing to reload (no --tls-cert); the server goes on");
                    continue;
                };
                match tls.reload() {
                    Ok(warnings) => {
                        tracing::info!(cert = %tls.cert_path().display(), "certificate reloaded");
                        for warning in warnings {
                            tracing::warn!("{warning}");
                        }
                    }
                    Err(err) => {
                        tracing::error!(cause = %err, "certificate not reloaded; the current one stays")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tls);
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("interrupted"),
        () = term => tracing::info!("terminated"),
    }
}
