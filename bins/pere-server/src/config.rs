//! Command-line flags (`Args`, the "low" form) resolved with `PERE_*`
//! environment variables and defaults into a validated [`Config`].
//! Precedence: flag, then environment, then default — in one function that
//! takes the environment as a map, so tests never touch the process's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use argh::FromArgs;
use pere_core::duration::parse_duration;
use pere_core::{Fsync, Grants, HubConfig, Retention, Token};
use pere_http::{Cors, ServerConfig};

/// PERE: push events to devices over Server-Sent Events, and know, per event
/// and per device, whether each was delivered and acknowledged.
///
/// Every option can also be set with an environment variable: PERE_ and the
/// option's name in capitals with underscores (PERE_PORT, PERE_MAX_AGE, …).
/// Durations are seconds, or a number with ms, s, m, h or d (90s, 15m, 24h).
#[derive(FromArgs, Debug, Default)]
pub struct Args {
    /// address to listen on (default 127.0.0.1; use 0.0.0.0 for every interface)
    #[argh(option)]
    pub host: Option<String>,
    /// port to listen on (default 4567, PERE's; 0 picks a free one)
    #[argh(option)]
    pub port: Option<u16>,
    /// reconnection delay sent to clients, in milliseconds (default 3000)
    #[argh(option)]
    pub retry: Option<String>,
    /// quiet time after which a stream gets a keepalive comment (default 15s)
    #[argh(option)]
    pub keepalive: Option<String>,
    /// events kept per channel for replay and receipts (default 1000)
    #[argh(option)]
    pub history: Option<String>,
    /// events older than this are dropped; 0 keeps them until --history does (default 24h)
    #[argh(option)]
    pub max_age: Option<String>,
    /// largest event payload accepted, in bytes (default 65536)
    #[argh(option)]
    pub max_payload: Option<String>,
    /// origins allowed to call from a browser: * (default), none, or a comma-separated list
    #[argh(option)]
    pub cors_origin: Option<String>,
    /// how long a device stays a member after its last stream closed (default 24h)
    #[argh(option)]
    pub member_ttl: Option<String>,
    /// replay every retained event to a device that connects for the first time, as PERE did
    #[argh(switch)]
    pub replay_all: bool,
    /// events a stream may have queued before the device counts as too slow and is disconnected (default 4096)
    #[argh(option)]
    pub queue_capacity: Option<String>,
    /// encoded bytes (payload plus what SSE adds) a stream may have queued before the device counts as too slow and is disconnected (default 4MiB; accepts KiB, MiB, GiB suffixes)
    #[argh(option)]
    pub queue_bytes: Option<String>,
    /// directory of the durable store (default ./pere-data)
    #[argh(option)]
    pub data_dir: Option<String>,
    /// keep everything in memory instead: nothing survives a restart (for tests and demos)
    #[argh(switch)]
    pub memory: bool,
    /// run as one node of a cluster sharing this Redis: redis://[user:pass@]HOST:PORT[/DB], or redis+sentinel://HOST:PORT,HOST:PORT/MASTER to follow Sentinel failovers; the cluster's state lives in Redis (no --data-dir)
    #[argh(option)]
    pub cluster: Option<String>,
    /// this node's name in the cluster, unique among its nodes (default: host name, process id and start time)
    #[argh(option)]
    pub node_id: Option<String>,
    /// with --cluster: how often one node snapshots the cluster's state into Redis, after which the log is trimmed (default 60s)
    #[argh(option)]
    pub snapshot_every: Option<String>,
    /// with --cluster: how long log entries are kept beyond the snapshot, so a node away for less catches up from the log (default 10m)
    #[argh(option)]
    pub log_keep: Option<String>,
    /// with --cluster: answer a write (publish, receipt, new stream, ...) only once this many Redis replicas have it (WAIT, up to 1 s, else 503), so a Sentinel failover cannot take back a 2xx (default 0: once the primary has it)
    #[argh(option)]
    pub replicas: Option<String>,
    /// when to force writes to disk: always (default; an acknowledged publish or receipt survives power loss) or never (survives a crash of the process, not of the machine)
    #[argh(option)]
    pub fsync: Option<String>,
    /// after this long, every device that has not acknowledged an event gets an overdue notice (on the receipts stream, and POSTed to --webhook); off by default
    #[argh(option)]
    pub ack_deadline: Option<String>,
    /// http:// URL of the publisher's backend that receives overdue notices as JSON POSTs
    #[argh(option)]
    pub webhook: Option<String>,
    /// JSON file of bearer tokens; turns auth on (off by default): {"tokens":{"<token>":{"subject":"device","subscribe":["pattern"],"publish":["pattern"],"admin":false}}}
    #[argh(option)]
    pub auth: Option<String>,
    /// most open streams server-wide; more get 429 (default 10000)
    #[argh(option)]
    pub max_streams: Option<String>,
    /// most open streams of one device; more get 429 (default 16)
    #[argh(option)]
    pub max_streams_per_device: Option<String>,
    /// most channels or patterns one stream may ask for; more get 400 (default 64)
    #[argh(option)]
    pub max_channels_per_stream: Option<String>,
    /// most channels with retained events the server holds; a publish that would open another gets 507 until retention frees some (default 1000000)
    #[argh(option)]
    pub max_channels: Option<String>,
    /// largest request head (request line and headers) in bytes, at least 8192; larger gets 431 (default 8192; more costs memory per open stream)
    #[argh(option)]
    pub max_header_bytes: Option<String>,
    /// time a client has to send a request's headers once it started; slower gets 408 (default 30s)
    #[argh(option)]
    pub header_timeout: Option<String>,
    /// time a client has to send a request's body; slower gets 408 (default 30s)
    #[argh(option)]
    pub body_timeout: Option<String>,
    /// a connection with no request in progress is closed after this long (default 60s; streams are never idle)
    #[argh(option)]
    pub idle_timeout: Option<String>,
    /// a client that accepts no data for this long while the server has some to send it (a frozen or hostile device) is disconnected (default 60s)
    #[argh(option)]
    pub send_timeout: Option<String>,
    /// PEM certificate chain (leaf first): serve HTTPS, with HTTP/2 (ALPN h2) and HTTP/1.1; reloaded on SIGHUP; needs --tls-key
    #[argh(option)]
    pub tls_cert: Option<String>,
    /// PEM private key of --tls-cert
    #[argh(option)]
    pub tls_key: Option<String>,
    /// accept JWTs signed with this HS256 secret (at least 32 bytes); turns auth on. Prefer --jwt-secret-file or PERE_JWT_SECRET: a flag shows in `ps`
    #[argh(option)]
    pub jwt_secret: Option<String>,
    /// file holding the HS256 secret (a trailing newline is ignored)
    #[argh(option)]
    pub jwt_secret_file: Option<String>,
    /// accept JWTs signed by this PEM public key: RSA for RS256, P-256 for ES256; turns auth on
    #[argh(option)]
    pub jwt_public_key: Option<String>,
    /// audience JWTs must name in `aud` (a JWT naming one is refused without it)
    #[argh(option)]
    pub jwt_audience: Option<String>,
    /// issuer JWTs must name in `iss`
    #[argh(option)]
    pub jwt_issuer: Option<String>,
    /// log only warnings, errors and the `listening` line (RUST_LOG overrides)
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// log format: text (default) or json
    #[argh(option)]
    pub log_format: Option<String>,
    /// while the server is busy, one INFO line this often with the publishes, deliveries and receipts per second since the last (default 10s; 0 turns it off; each publish and receipt is logged at DEBUG: RUST_LOG=debug)
    #[argh(option)]
    pub log_summary: Option<String>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where events live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// In memory only.
    Memory,
    /// The durable file store in this directory.
    File {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Sync policy.
        fsync: Fsync,
    },
    /// One node of a cluster: the shared log in Redis is the journal.
    Cluster {
        /// The `--cluster` URL.
        url: String,
        /// This node's id.
        node: String,
        /// `--snapshot-every`.
        snapshot_every: Duration,
        /// `--log-keep`.
        log_keep: Duration,
        /// `--replicas`.
        replicas: u32,
    },
}

/// Everything the server needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The hub's settings.
    pub hub: HubConfig,
    /// The store's retention.
    pub retention: Retention,
    /// Which store.
    pub store: StoreKind,
    /// The HTTP server's settings.
    pub server: ServerConfig,
    /// The `--auth` file and its tokens, when auth is on from the start.
    pub auth: Option<(std::path::PathBuf, Vec<(Token, Grants)>)>,
    /// How JWTs are checked, when they are accepted (auth is then on).
    pub jwt: Option<pere_core::jwt::JwtConfig>,
    /// Only warnings and errors.
    pub quiet: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Period of the activity line (zero: none).
    pub log_summary: Duration,
}

/// A size in bytes: a whole number, optionally with `KiB`/`MiB`/`GiB`
/// (or `K`/`M`/`G`, powers of 1024).
fn parse_bytes(name: &str, text: &str) -> Result<usize, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => {
            return Err(format!(
                "--{name} `{text}` is not a size (a number of bytes, or with KiB, MiB, GiB)"
            ));
        }
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| {
            format!("--{name} `{text}` is not a size (a number of bytes, or with KiB, MiB, GiB)")
        })
}

/// Whether `text` is an origin as a browser sends it: `scheme://host`,
/// with an optional `:port`, nothing after.
fn is_origin(text: &str) -> bool {
    let Some((scheme, host)) = text.split_once("://") else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !host.is_empty()
        && !host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/?#@,".contains(c))
}

fn parse_count(name: &str, text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .map_err(|_| format!("--{name} `{text}` is not a whole number"))
}

impl Config {
    /// Resolves flags, then `PERE_*` variables from `env`, then defaults.
    pub fn resolve(args: Args, env: &HashMap<String, String>) -> Result<Self, String> {
        let pick = |flag: Option<String>, name: &str| -> Option<String> {
            flag.or_else(|| {
                let key = format!("PERE_{}", name.to_ascii_uppercase().replace('-', "_"));
                env.get(&key).cloned().filter(|v| !v.trim().is_empty())
            })
        };
        // A switch's variable is on or off; anything else is a mistake to
        // say, not to read as off (PERE_MEMORY=maybe would use the disk).
        let switch = |flag: bool, name: &str| -> Result<bool, String> {
            if flag {
                return Ok(true);
            }
            match pick(None, name)
                .as_deref()
                .map(|v| v.trim().to_ascii_lowercase())
            {
                None => Ok(false),
                Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
                Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
                Some(v) => Err(format!(
                    "PERE_{} `{}` is not on or off: use 1, true, yes, on or 0, false, no, off",
                    name.to_ascii_uppercase().replace('-', "_"),
                    v
                )),
            }
        };
        let duration = |flag: Option<String>, name: &str, default: Duration| {
            pick(flag, name).map_or(Ok(default), |v| {
                parse_duration(&v).map_err(|e| format!("--{name}: {e}"))
            })
        };

        let host = pick(args.host, "host").unwrap_or_else(|| "127.0.0.1".into());
        let ip: IpAddr = host
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                format!("--host `{host}` is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)")
            })?;
        let port = match args.port {
            Some(p) => p,
            None => match pick(None, "port") {
                Some(p) => p
                    .trim()
                    .parse()
                    .map_err(|_| format!("PERE_PORT `{p}` is not a port number"))?,
                None => 4567,
            },
        };
        let retry = match pick(args.retry, "retry") {
            None => pere_http::server::DEFAULT_RETRY,
            Some(v) => Duration::from_millis(
                v.trim()
                    .trim_end_matches("ms")
                    .parse()
                    .map_err(|_| format!("--retry `{v}` is not a number of milliseconds"))?,
            ),
        };
        let keepalive = duration(
            args.keepalive,
            "keepalive",
            pere_http::server::DEFAULT_KEEPALIVE,
        )?;
        if keepalive.is_zero() {
            return Err("--keepalive must be at least 1s".into());
        }
        let history = match pick(args.history, "history") {
            None => pere_core::DEFAULT_HISTORY,
            // Receipts live as long as their event: with nothing kept, no
            // event could be acknowledged.
            Some(v) => match parse_count("history", &v)? {
                0 => return Err("--history must be at least 1: an event's receipts are kept while it is (use --max-age to keep events a short time)".into()),
                n => n,
            },
        };
        let max_age = duration(args.max_age, "max-age", pere_core::DEFAULT_MAX_AGE)?;
        let max_payload = match pick(args.max_payload, "max-payload") {
            None => pere_core::DEFAULT_MAX_PAYLOAD,
            Some(v) => parse_count("max-payload", &v)?,
        };
        if max_payload == 0 {
            return Err("--max-payload must be at least 1 byte".into());
        }
        let queue_capacity = match pick(args.queue_capacity, "queue-capacity") {
            None => pere_core::DEFAULT_QUEUE_CAPACITY,
            Some(v) => match parse_count("queue-capacity", &v)? {
                0 => return Err("--queue-capacity must be at least 1 event".into()),
                n => n,
            },
        };
        let queue_bytes = match pick(args.queue_bytes, "queue-bytes") {
            None => pere_core::DEFAULT_QUEUE_BYTES,
            Some(v) => match parse_bytes("queue-bytes", &v)? {
                0 => return Err("--queue-bytes must be at least 1 byte".into()),
                n => n,
            },
        };
        let member_ttl = duration(args.member_ttl, "member-ttl", pere_core::DEFAULT_MEMBER_TTL)?;
        let cors =
            Cors::parse(&pick(args.cors_origin, "cors-origin").unwrap_or_else(|| "*".into()));
        if let Cors::List(origins) = &cors
            && let Some(bad) = origins.iter().find(|o| !is_origin(o))
        {
            // Taken as it was, it matched no browser's Origin: every
            // cross-origin call failed, and nothing said why.
            return Err(format!(
                "--cors-origin: `{bad}` is not an origin: scheme://host[:port], e.g. https://app.example.com (or `*`, or `none`)"
            ));
        }
        let log_format = match pick(args.log_format, "log-format")
            .as_deref()
            .map(str::trim)
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(format!("--log-format `{other}` is not text or json")),
        };
        let ack_deadline = match pick(args.ack_deadline, "ack-deadline") {
            None => None,
            Some(v) => Some(parse_duration(&v).map_err(|e| format!("--ack-deadline: {e}"))?)
                .filter(|d| !d.is_zero()),
        };
        let webhook = match pick(args.webhook, "webhook") {
            None => None,
            Some(url) => Some(
                pere_http::server::webhook::Webhook::parse(&url)
                    .map_err(|e| format!("--webhook: {e}"))?,
            ),
        };
        if webhook.is_some() && ack_deadline.is_none() {
            return Err(
                "--webhook needs --ack-deadline: notices are sent when a deadline passes".into(),
            );
        }
        let count = |flag: Option<String>, name: &str, default: usize| -> Result<usize, String> {
            match pick(flag, name) {
                None => Ok(default),
                Some(v) => match parse_count(name, &v)? {
                    0 => Err(format!("--{name} must be at least 1")),
                    n => Ok(n),
                },
            }
        };
        let max_streams = count(
            args.max_streams,
            "max-streams",
            pere_http::server::limits::DEFAULT_MAX_STREAMS,
        )?;
        let max_streams_per_device = count(
            args.max_streams_per_device,
            "max-streams-per-device",
            pere_http::server::limits::DEFAULT_MAX_STREAMS_PER_DEVICE,
        )?;
        let max_channels_per_stream = count(
            args.max_channels_per_stream,
            "max-channels-per-stream",
            pere_core::DEFAULT_MAX_CHANNELS_PER_STREAM,
        )?;
        let max_channels = count(
            args.max_channels,
            "max-channels",
            pere_core::DEFAULT_MAX_CHANNELS,
        )?;
        let max_header_bytes = count(
            args.max_header_bytes,
            "max-header-bytes",
            pere_http::server::DEFAULT_MAX_HEADER_BYTES,
        )?;
        if max_header_bytes < pere_http::server::MIN_MAX_HEADER_BYTES {
            return Err(format!(
                "--max-header-bytes {max_header_bytes} is below the minimum of {}",
                pere_http::server::MIN_MAX_HEADER_BYTES
            ));
        }
        let nonzero = |d: Duration, name: &str| {
            if d.is_zero() {
                Err(format!("--{name} must be more than 0"))
            } else {
                Ok(d)
            }
        };
        let header_read_timeout = nonzero(
            duration(
                args.header_timeout,
                "header-timeout",
                pere_http::server::DEFAULT_HEADER_READ_TIMEOUT,
            )?,
            "header-timeout",
        )?;
        let body_read_timeout = nonzero(
            duration(
                args.body_timeout,
                "body-timeout",
                pere_http::server::DEFAULT_BODY_READ_TIMEOUT,
            )?,
            "body-timeout",
        )?;
        let idle_timeout = nonzero(
            duration(
                args.idle_timeout,
                "idle-timeout",
                pere_http::server::DEFAULT_IDLE_TIMEOUT,
            )?,
            "idle-timeout",
        )?;
        let send_timeout = nonzero(
            duration(
                args.send_timeout,
                "send-timeout",
                pere_http::server::DEFAULT_SEND_TIMEOUT,
            )?,
            "send-timeout",
        )?;
        let auth = match pick(args.auth, "auth") {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--auth: cannot read `{path}`: {e}"))?;
                let tokens = pere_core::auth::parse_auth_file(&text)
                    .map_err(|e| format!("--auth `{path}`: {e}"))?;
                Some((path.into(), tokens))
            }
        };
        let tls = crate::secure::tls(
            pick(args.tls_cert, "tls-cert"),
            pick(args.tls_key, "tls-key"),
        )?;
        let jwt = crate::secure::jwt(crate::secure::JwtArgs {
            secret: pick(args.jwt_secret, "jwt-secret"),
            secret_file: pick(args.jwt_secret_file, "jwt-secret-file"),
            public_key: pick(args.jwt_public_key, "jwt-public-key"),
            audience: pick(args.jwt_audience, "jwt-audience"),
            issuer: pick(args.jwt_issuer, "jwt-issuer"),
        })?;
        let memory = switch(args.memory, "memory")?;
        let fsync = match pick(args.fsync, "fsync") {
            None => Fsync::Always,
            Some(v) => v.parse::<Fsync>().map_err(|e| format!("--fsync: {e}"))?,
        };
        let data_dir = pick(args.data_dir, "data-dir");
        if data_dir.as_deref().is_some_and(str::is_empty) {
            // Read as a path, "" failed deep in the store ("store error on
            // : No such file or directory", exit 1) and left a LOCK file in
            // the current directory.
            return Err(
                "--data-dir is empty: name a directory (leave it out for ./pere-data)".into(),
            );
        }
        let cluster = pick(args.cluster, "cluster");
        let node_id = pick(args.node_id, "node-id");
        let tuning = crate::cluster::Tuning {
            snapshot_every: pick(args.snapshot_every, "snapshot-every"),
            log_keep: pick(args.log_keep, "log-keep"),
            replicas: pick(args.replicas, "replicas"),
        };
        let store = match (cluster, memory, data_dir) {
            (Some(_), _, Some(dir)) => {
                return Err(format!(
                    "--cluster and --data-dir `{dir}` contradict each other: a cluster node keeps its state in Redis"
                ));
            }
            (Some(url), _, None) => crate::cluster::store(&url, node_id.as_deref(), &tuning)?,
            (None, memory, dir) => match (memory, dir) {
                (true, Some(dir)) => {
                    return Err(format!(
                        "--memory and --data-dir `{dir}` contradict each other: choose one"
                    ));
                }
                (true, None) => StoreKind::Memory,
                (false, dir) => StoreKind::File {
                    dir: dir.unwrap_or_else(|| "pere-data".into()).into(),
                    fsync,
                },
            },
        };
        if !matches!(store, StoreKind::Cluster { .. }) {
            if node_id.is_some() {
                return Err("--node-id names a node of a cluster: it needs --cluster".into());
            }
            if let Some(flag) = tuning.given() {
                return Err(format!("--{flag} tunes a cluster: it needs --cluster"));
            }
        }
        Ok(Config {
            store,
            addr: SocketAddr::new(ip, port),
            hub: HubConfig {
                member_ttl,
                max_payload,
                queue_capacity,
                queue_bytes,
                replay_all: switch(args.replay_all, "replay-all")?,
                ack_deadline,
                max_channels_per_stream,
                max_channels,
                ..HubConfig::default()
            },
            retention: Retention {
                history,
                max_age: (!max_age.is_zero()).then_some(max_age),
            },
            server: ServerConfig {
                retry,
                keepalive,
                cors,
                webhook,
                header_read_timeout,
                body_read_timeout,
                idle_timeout,
                send_timeout,
                max_header_bytes,
                max_streams,
                max_streams_per_device,
                tls,
                ..ServerConfig::default()
            },
            auth,
            jwt,
            quiet: switch(args.quiet, "quiet")?,
            log_format,
            log_summary: duration(
                args.log_summary,
                "log-summary",
                pere_http::server::activity::DEFAULT_ACTIVITY_PERIOD,
            )?,
        })
    }
}

/// Renders a duration the way the flags take it (`90s`, `15m`, `24h`).
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests;
