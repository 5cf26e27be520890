//! Command-line flags ([`Args`], the "low" form) resolved into a validated
//! [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use argh::FromArgs;
pub use pere_core::duration::parse_duration;
use pere_core::{DeviceId, EventId, MAX_STATUS_LEN, Pattern};
use pere_http::client::{Address, random_device};

/// Follow a PERE channel over Server-Sent Events, print each event, and send
/// a receipt for each, as PERE's subscriber.rb did.
///
/// It reconnects whenever the stream ends, after the server's retry delay,
/// resuming with Last-Event-ID, so nothing still retained is lost. Connection
/// notices go to stderr. Durations are seconds, or a number with ms, s, m, h
/// or d (0.5, 500ms, 90s, 15m).
#[derive(FromArgs, Debug, Default)]
#[argh(
    example = "pere-sub 127.0.0.1:4567 CHANNEL_1",
    example = "pere-sub 127.0.0.1:4567 'orders.*' --json --count 10 --device terminal-7",
    note = "With --json, each line is a JSON object with id (the stream's last event id after the event, empty before any), event, data, and channel (the channel the event was published on, which a pattern CHANNEL names only in part; null for pere.* control events such as pere.hello and pere.gap).",
    error_code(
        1,
        "the subscription failed or --timeout passed before --count events."
    ),
    error_code(2, "the command line is invalid.")
)]
pub struct Args {
    /// the server, as HOST:PORT, http://HOST:PORT or https://HOST:PORT
    #[argh(positional)]
    pub addr: String,
    /// the channel, or a pattern such as orders.* or orders.**
    #[argh(positional)]
    pub channel: String,
    /// this subscriber's device id (default: this user's device on this machine, a PERE-style id H0039… made once and kept in $XDG_STATE_HOME/pere/device, or ~/.local/state/pere/device, so every run is the same device)
    #[argh(option)]
    pub device: Option<String>,
    /// bearer token for a server with auth on (or set PERE_TOKEN, which ps does not show); without --device, the device is the token's subject
    #[argh(option)]
    pub token: Option<String>,
    /// PEM file of the CA (or self-signed certificate) to trust for an https:// server, instead of the system's (or set PERE_CA)
    #[argh(option)]
    pub ca: Option<String>,
    /// print one JSON object per line for every event, control events included
    #[argh(switch)]
    pub json: bool,
    /// exit with status 0 after this many events, not counting pere.* control events (default: run until interrupted)
    #[argh(option)]
    pub count: Option<u64>,
    /// send no receipts
    #[argh(switch)]
    pub no_ack: bool,
    /// the status text of each receipt (default ok)
    #[argh(option)]
    pub status: Option<String>,
    /// start after this event id (sent as Last-Event-ID on the first connection)
    #[argh(option)]
    pub last_event_id: Option<String>,
    /// on the first connection, replay every event the server retains
    #[argh(switch)]
    pub replay_all: bool,
    /// give up with status 1 after this many consecutive failed connection attempts (default: never give up)
    #[argh(option)]
    pub max_reconnects: Option<u32>,
    /// stop after this long: status 0, or 1 when --count events have not all arrived (default: no limit)
    #[argh(option)]
    pub timeout: Option<String>,
    /// print no connection notices on stderr, only errors
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// run this shell command for each event, one at a time, with the payload on stdin as a line (a newline is added unless it ends with one; and PERE_EVENT_ID, PERE_EVENT, PERE_CHANNEL, PERE_DEVICE in its environment); the receipt's status is ok when it exits with 0, else "error: exit N: <first line of its stderr>"
    #[argh(option)]
    pub exec: Option<String>,
    /// how long one --exec command may run before it (with every process it started) is killed and its receipt says "error: timed out after …" (default 60s)
    #[argh(option)]
    pub exec_timeout: Option<String>,
    /// load mode: simulate N devices, each on its own connection, and report deliveries/s, latency percentiles, loss, duplicates and reorder (one JSON object on stdout); --count is then per device
    #[argh(option)]
    pub devices: Option<u32>,
    /// load mode: spread the devices over N channels named CHANNEL.0 … CHANNEL.<N-1> (default 1: CHANNEL itself)
    #[argh(option)]
    pub channels: Option<u32>,
    /// load mode: every device acknowledges every event, as JSON arrays of what arrived while its previous receipt was in flight, on its own keep-alive connection
    #[argh(switch)]
    pub ack: bool,
    /// load mode: like --ack, but one receipt request per event
    #[argh(switch)]
    pub ack_each: bool,
    /// load mode: receipts go over this many keep-alive connections, shared by the devices (default: one per device; fewer saves open files with many devices)
    #[argh(option)]
    pub ack_connections: Option<u32>,
    /// load mode, with --ack-each: write up to N receipt requests at once on each receipt connection before reading their answers (HTTP/1.1 pipelining, as a gateway forwarding many devices' receipts would; default 1, one at a time)
    #[argh(option)]
    pub ack_pipeline: Option<u32>,
    /// load mode: stop after this long (default: once every device got --count events)
    #[argh(option)]
    pub duration: Option<String>,
    /// load mode against nginx + nchan: subscribe with GET /sub/CHANNEL, no receipts
    #[argh(switch)]
    pub nchan: bool,
    /// load mode: a device whose stream ends before it is done reconnects with Last-Event-ID, as an EventSource would (counted as reconnects); without it, the device stops at its first disconnect
    #[argh(switch)]
    pub resume: bool,
}

/// How long one `--exec` command may run unless `--exec-timeout` says.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// How events are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `RX EVT> id: …, event: …, data: …`.
    Human,
    /// One JSON object per line (docs/PROTOCOL.md §9).
    Json,
}

/// Everything the subscriber needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server.
    pub addr: String,
    /// The channel or pattern (also where receipts go).
    pub channel: String,
    /// The device id.
    pub device: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// The device comes from the token's subject (a token and no
    /// `--device`): no `device` header is sent.
    pub device_from_token: bool,
    /// Output format.
    pub output: Output,
    /// Stop after this many non-control events.
    pub count: Option<u64>,
    /// Receipt status, or `None` for no receipts.
    pub status: Option<String>,
    /// Resume point of the first connection.
    pub last_event_id: Option<String>,
    /// Replay everything retained on the first connection.
    pub replay_all: bool,
    /// Bound on consecutive failed connection attempts.
    pub max_reconnects: Option<u32>,
    /// Bound on the whole run.
    pub timeout: Option<Duration>,
    /// No connection notices.
    pub quiet: bool,
    /// The command run for each event (`--exec`), whose outcome is the
    /// receipt's status.
    pub exec: Option<String>,
    /// How long one `--exec` command may run.
    pub exec_timeout: Duration,
}

/// Where pere-sub keeps its device id: `$XDG_STATE_HOME/pere`, else
/// `~/.local/state/pere` (the XDG base directory spec's state directory:
/// data that should persist between runs but is not worth a backup).
pub fn state_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let absolute = |v: String| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    match env("XDG_STATE_HOME").and_then(absolute) {
        Some(dir) => Some(dir.join("pere")),
        None => env("HOME")
            .and_then(absolute)
            .map(|home| home.join(".local/state/pere")),
    }
}

/// This user's device id on this machine (issue 18.7: a random id per run
/// left a new 24 h member behind each time, and events waited for all of
/// them). Read from `state/device`, or made and kept there; when that
/// cannot be written, derived from the host and user names, which is
/// stable too.
pub fn stable_device(state: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> String {
    let Some(dir) = state else {
        return derived_device(&env);
    };
    let file = dir.join("device");
    if let Ok(text) = std::fs::read_to_string(&file)
        && DeviceId::new(text.trim()).is_ok()
    {
        return text.trim().to_string();
    }
    let device = random_device("H");
    let written =
        std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, format!("{device}\n")));
    match written {
        Ok(()) => device,
        Err(err) => {
            // Logging is not set up yet: say it plainly.
            eprintln!(
                "pere-sub: cannot keep the device id in {} ({err}); using one derived from the host and user names",
                file.display()
            );
            derived_device(&env)
        }
    }
}

/// A PERE-style id (`H0039` and nine digits) from the host and user names:
/// the same on every run, different for another user or machine.
fn derived_device(env: &impl Fn(&str) -> Option<String>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_default();
    let user = env("USER").or_else(|| env("LOGNAME")).unwrap_or_default();
    // FNV-1a: stable across builds and runs, unlike std's keyed hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.trim().bytes().chain([0]).chain(user.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("H0039{}{:08}", hash % 9 + 1, (hash / 9) % 100_000_000)
}

impl Config {
    /// Validates `args`; without `--device`, the device is
    /// [`stable_device`] with its file in `state` (none: derived only).
    pub fn resolve(args: Args, state: Option<&Path>) -> Result<Self, String> {
        Address::parse(&args.addr).map_err(|_| {
            format!(
                "`{}` is not HOST:PORT, http://HOST:PORT or https://HOST:PORT",
                args.addr
            )
        })?;
        Pattern::new(&args.channel).map_err(|e| e.to_string())?;
        let device_given = args.device.is_some();
        let device = match args.device {
            Some(d) => {
                DeviceId::new(&d).map_err(|e| format!("--device: {e}"))?;
                d
            }
            // With a token the device is its subject: nothing to keep.
            None if args.token.is_some() => random_device("H"),
            None => stable_device(state, |k| std::env::var(k).ok()),
        };
        if let Some(token) = &args.token {
            // A static token or a JWT.
            pere_http::client::bearer(token).map_err(|e| format!("--token: {e}"))?;
        }
        let device_from_token = args.token.is_some() && !device_given;
        if args.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if args.no_ack && args.status.is_some() {
            return Err("--status is the receipts' status; it makes no sense with --no-ack".into());
        }
        if args.exec.is_some() && args.status.is_some() {
            return Err(
                "--status is a fixed receipt status; with --exec the command's outcome is the status"
                    .into(),
            );
        }
        if args.exec.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err("--exec needs a command".into());
        }
        if args.exec.is_none() && args.exec_timeout.is_some() {
            return Err("--exec-timeout bounds the --exec command; add --exec".into());
        }
        let exec_timeout = match args.exec_timeout.as_deref() {
            None => DEFAULT_EXEC_TIMEOUT,
            Some(t) => match parse_duration(t).map_err(|e| format!("--exec-timeout: {e}"))? {
                d if d.is_zero() => return Err("--exec-timeout must be more than 0".into()),
                d => d,
            },
        };
        let status = args.status.unwrap_or_else(|| "ok".into());
        if status.len() > MAX_STATUS_LEN {
            return Err(format!(
                "--status is {} bytes long, the limit is {MAX_STATUS_LEN}",
                status.len()
            ));
        }
        if let Some(id) = &args.last_event_id {
            EventId::parse(id).map_err(|e| format!("--last-event-id: {e}"))?;
            if args.replay_all {
                return Err(
                    "--last-event-id and --replay-all both set where to start; give one".into(),
                );
            }
        }
        let timeout = args
            .timeout
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| format!("--timeout: {e}"))?;
        // Zero would end the run before it began, and give up before the
        // first attempt failed: neither is what anyone means.
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err("--timeout must be more than 0 (leave it out for no limit)".into());
        }
        if args.max_reconnects == Some(0) {
            return Err(
                "--max-reconnects must be at least 1 (leave it out to never give up)".into(),
            );
        }
        Ok(Config {
            token: args.token,
            device_from_token,
            addr: args.addr,
            channel: args.channel,
            device,
            output: if args.json {
                Output::Json
            } else {
                Output::Human
            },
            count: args.count,
            status: (!args.no_ack).then_some(status),
            last_event_id: args.last_event_id,
            replay_all: args.replay_all,
            max_reconnects: args.max_reconnects,
            timeout,
            quiet: args.quiet,
            exec: args.exec,
            exec_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn resolve(extra: &[&str]) -> Result<Config, String> {
        let mut all = vec!["127.0.0.1:4567", "CHANNEL_1"];
        all.extend_from_slice(extra);
        Config::resolve(
            Args::from_args(&["pere-sub"], &all).map_err(|e| e.output)?,
            None,
        )
    }

    #[test]
    fn defaults_are_pere_s_subscriber() {
        let c = resolve(&[]).unwrap();
        assert!(c.device.starts_with("H0039"), "{}", c.device);
        assert_eq!(c.status.as_deref(), Some("ok"));
        assert_eq!(c.output, Output::Human);
        assert_eq!((c.count, c.timeout, c.max_reconnects), (None, None, None));
    }

    #[test]
    fn flags_are_checked() {
        let c = resolve(&["--json", "--count", "3", "--no-ack", "--timeout", "2s"]).unwrap();
        assert_eq!(c.output, Output::Json);
        assert_eq!(c.count, Some(3));
        assert_eq!(c.status, None);
        assert_eq!(c.timeout, Some(Duration::from_secs(2)));
        for bad in [
            &["--count", "0"][..],
            &["--device", "a b"],
            &["--last-event-id", "abc"],
            &["--last-event-id", "5", "--replay-all"],
            &["--no-ack", "--status", "read"],
            &["--timeout", "soon"],
            &["--exec", "true", "--status", "done"],
            &["--exec", " "],
            &["--exec-timeout", "5s"],
            &["--exec", "true", "--exec-timeout", "0"],
        ] {
            assert!(resolve(bad).is_err(), "{bad:?} must be refused");
        }
        let long = "x".repeat(MAX_STATUS_LEN + 1);
        assert!(resolve(&["--status", &long]).is_err());
        assert!(
            Config::resolve(
                Args::from_args(&["pere-sub"], &["127.0.0.1:1", "a b"]).unwrap(),
                None
            )
            .is_err()
        );
        assert!(resolve(&["--last-event-id", "42"]).is_ok());
        let c = resolve(&["--exec", "cat", "--exec-timeout", "2s"]).unwrap();
        assert_eq!(c.exec.as_deref(), Some("cat"));
        assert_eq!(c.exec_timeout, Duration::from_secs(2));
    }

    #[test]
    fn the_device_is_kept_per_user_and_machine() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            state_dir(env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")])),
            Some(PathBuf::from("/s/pere"))
        );
        assert_eq!(
            state_dir(env(&[("XDG_STATE_HOME", "relative"), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.local/state/pere")),
            "the spec ignores a relative XDG path"
        );
        assert_eq!(state_dir(env(&[])), None);

        let dir = std::env::temp_dir().join(format!("pere-sub-state-{}", std::process::id()));
        let first = stable_device(Some(&dir), env(&[]));
        assert!(first.starts_with("H0039") && first.len() == 14, "{first}");
        assert_eq!(stable_device(Some(&dir), env(&[])), first, "kept");
        std::fs::write(dir.join("device"), "not a device\n").unwrap();
        let replaced = stable_device(Some(&dir), env(&[]));
        assert!(DeviceId::new(&replaced).is_ok(), "a bad file is replaced");
        std::fs::remove_dir_all(&dir).unwrap();

        let a = derived_device(&env(&[("USER", "alice")]));
        assert_eq!(a, derived_device(&env(&[("USER", "alice")])));
        assert_ne!(a, derived_device(&env(&[("USER", "bob")])));
        assert!(DeviceId::new(&a).is_ok() && a.starts_with("H0039"), "{a}");
    }

    #[test]
    fn zero_timeouts_and_reconnects_are_refused() {
        for args in [&["--timeout", "0"][..], &["--max-reconnects", "0"]] {
            let mut all = vec!["127.0.0.1:1", "c"];
            all.extend_from_slice(args);
            let args = Args::from_args(&["pere-sub"], &all).unwrap();
            let err = Config::resolve(args, None).unwrap_err();
            assert!(err.contains("must be"), "{err}");
        }
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert!(parse_duration("2 days").is_err());
    }
}
