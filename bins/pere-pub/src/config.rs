//! Command-line flags ([`Args`], the "low" form) resolved into a validated
//! [`Config`]: which payloads, how many, how fast, with which options.
//! [`Config::resolve`] takes whether stdin is a terminal as a parameter, so
//! tests never depend on how they were started.

use std::time::Duration;

use argh::FromArgs;
pub use pere_core::duration::parse_duration;
use pere_core::{ChannelName, DeviceId, EventType};
use pere_http::client::{Backoff, PublishOptions, WaitFor, random_device};

/// Publish events to a PERE channel and print one line per event, starting
/// with the event id.
///
/// Without --data, with stdin a terminal (or with --interval), it publishes
/// like PERE's publisher.rb: a JSON event with channel, device, a counter id,
/// time and random data, every 10 to 20 seconds. With stdin a pipe or file, each line is an event.
/// Durations are seconds, or a number with ms, s, m, h or d (0.5, 500ms, 90s, 15m).
#[derive(FromArgs, Debug, Default)]
#[argh(
    example = "pere-pub 127.0.0.1:4567 CHANNEL_1",
    example = "pere-pub 127.0.0.1:4567 orders.eu --data '{{\"order\":42}}' --wait acked --timeout 5s",
    example = "seq 100 | pere-pub 127.0.0.1:4567 numbers --rate 20",
    note = "Each event is sent with an Idempotency-Key (generated unless --idempotency-key is given), and a publish that fails because the server is unreachable, closed the connection or answered 503 is retried with the same key, so it is stored once.",
    error_code(1, "an event could not be published."),
    error_code(2, "the command line is invalid."),
    error_code(
        3,
        "with --wait: every event was published, but for at least one the wait timed out before every recipient reached the state (its line says timed_out=true, who has not acked (unacked=) and who was not sent it yet (pending=)); do not publish it again."
    ),
    error_code(
        4,
        "the answer to a publish was lost (the connection broke after the request was sent): the event may or may not be stored. Publish it again with the --idempotency-key (and --device, when one is printed) shown on stderr (keys are scoped by publisher): that is safe, without them the event may be stored twice."
    ),
    error_code(
        5,
        "with --require-status: every event was published and acknowledged, but some device acknowledged one with a status not accepted (bad_status= on its line names them; stderr shows each status)."
    )
)]
pub struct Args {
    /// the server, as HOST:PORT, http://HOST:PORT or https://HOST:PORT
    #[argh(positional)]
    pub addr: String,
    /// the channel to publish on
    #[argh(positional)]
    pub channel: String,
    /// publish this payload (once, or --count times) instead of generated events or stdin lines
    #[argh(option)]
    pub data: Option<String>,
    /// stop after this many events (default: 1 with --data, else until stdin ends or forever)
    #[argh(option)]
    pub count: Option<u64>,
    /// events per second, e.g. 20 or 0.5, on a fixed schedule: events held up by a slow or restarting server go out at once afterwards, to keep the average (default: as fast as the server answers, or every 10 to 20 s for generated events)
    #[argh(option)]
    pub rate: Option<f64>,
    /// time between events, e.g. 5s (default: random 10 to 20 s for generated events, none otherwise)
    #[argh(option)]
    pub interval: Option<String>,
    /// the SSE event type (default message)
    #[argh(option)]
    pub event: Option<String>,
    /// the publisher's device id (default a random PERE-style id, P0039…; none with --idempotency-key, so that running the same command again is a retry)
    #[argh(option)]
    pub device: Option<String>,
    /// bearer token for a server with auth on (or set PERE_TOKEN, which ps does not show); without --device, the device is the token's subject
    #[argh(option)]
    pub token: Option<String>,
    /// PEM file of the CA (or self-signed certificate) to trust for an https:// server, instead of the system's (or set PERE_CA)
    #[argh(option)]
    pub ca: Option<String>,
    /// the Idempotency-Key of a single event (default: one generated per event)
    #[argh(option)]
    pub idempotency_key: Option<String>,
    /// retries of a publish that failed because the server was unreachable or busy, with the same Idempotency-Key (default 10, backing off from 250 ms to 4 s; 5 within about 6 s while the server has not answered yet)
    #[argh(option)]
    pub retries: Option<u32>,
    /// wait until every recipient reached this state, delivered or acked, and print who acked, who has not (unacked=) and who was not sent it yet (pending=)
    #[argh(option)]
    pub wait: Option<String>,
    /// how long --wait waits for receipts (default 5s, at most 60s)
    #[argh(option)]
    pub timeout: Option<String>,
    /// with --wait acked: the receipt statuses that mean success, comma-separated, a trailing * matching any ending (e.g. ok or 'ok,done*'); an event acknowledged with another status makes the exit status 5 (default: ok is success, any other status is shown as bad_status= without failing)
    #[argh(option)]
    pub require_status: Option<String>,
    /// print only errors on stderr (no retry notices)
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// load mode: K publishers, each on its own keep-alive connection, publishing --count events in all (--rate is then the total rate) with the send time in each payload; reports publishes/s and latency percentiles (one JSON object on stdout)
    #[argh(option)]
    pub concurrency: Option<u32>,
    /// load mode: payload size in bytes (default 128)
    #[argh(option)]
    pub size: Option<usize>,
    /// load mode: spread the events over N channels named CHANNEL.0 … CHANNEL.<N-1> (default 1: CHANNEL itself)
    #[argh(option)]
    pub channels: Option<u32>,
    /// load mode: stop after this long
    #[argh(option)]
    pub duration: Option<String>,
    /// load mode against nginx + nchan: publish with POST /pub/CHANNEL
    #[argh(switch)]
    pub nchan: bool,
}

/// The receipt statuses that count as success (`--require-status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Exact statuses, or prefixes for items written with a trailing `*`.
    items: Vec<(String, bool)>,
    /// Given with `--require-status`: another status fails the run.
    pub required: bool,
}

impl Default for Accepted {
    /// `ok`, as `pere-sub` and PERE's web page send by default; not
    /// required (other statuses are shown, not failed).
    fn default() -> Self {
        Self {
            items: vec![("ok".into(), false)],
            required: false,
        }
    }
}

impl Accepted {
    /// Parses `--require-status`: comma-separated, `*` at the end of an
    /// item matches any ending.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut items = Vec::new();
        for item in text.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!(
                    "--require-status `{text}` has an empty item: give statuses separated by commas, e.g. ok or 'ok,done*'"
                ));
            }
            match item.strip_suffix('*') {
                Some(prefix) => items.push((prefix.to_string(), true)),
                None => items.push((item.to_string(), false)),
            }
        }
        Ok(Self {
            items,
            required: true,
        })
    }

    /// Whether `status` is accepted.
    pub fn accepts(&self, status: &str) -> bool {
        self.items.iter().any(|(item, prefix)| {
            if *prefix {
                status.starts_with(item.as_str())
            } else {
                status == item
            }
        })
    }

    /// What is accepted, for messages.
    pub fn describe(&self) -> String {
        let list: Vec<String> = self
            .items
            .iter()
            .map(|(item, prefix)| format!("{item}{}", if *prefix { "*" } else { "" }))
            .collect();
        if self.required {
            format!("--require-status accepts {}", list.join(", "))
        } else {
            "not ok; --require-status ok would fail the run".to_string()
        }
    }
}

/// Where payloads come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The same `--data` payload each time.
    Data(String),
    /// One event per line of stdin (empty lines are skipped).
    Stdin,
    /// Generated JSON events, as PERE's publisher.rb.
    Generated,
}

/// How events are spaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As fast as the server answers.
    Asap,
    /// A fixed period, kept on schedule from the start.
    Every(Duration),
    /// A random pause between the two bounds after each event (PERE's).
    Random(Duration, Duration),
}

/// Everything the publisher needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server.
    pub addr: String,
    /// The channel.
    pub channel: String,
    /// The publisher's device id.
    pub device: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// Where payloads come from.
    pub source: Source,
    /// How many events at most (`None`: until the source ends).
    pub count: Option<u64>,
    /// How events are spaced.
    pub pace: Pace,
    /// Options of every publish (the idempotency key is per event).
    pub options: PublishOptions,
    /// The key of the single event, when given.
    pub idempotency_key: Option<String>,
    /// Retry policy.
    pub backoff: Backoff,
    /// `--retries` was given: it applies from the first attempt on.
    pub retries_given: bool,
    /// No retry notices.
    pub quiet: bool,
    /// Which receipt statuses mean success.
    pub accepted: Accepted,
}

/// PERE's publisher.rb pauses a random 10 to 20 seconds between events.
const PERE_PAUSE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(20));
/// Default `--timeout` of `--wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// The server caps waits at 60 s (docs/PROTOCOL.md §2).
const MAX_WAIT: Duration = Duration::from_secs(60);

impl Config {
    /// Validates `args`; `stdin_has_no_lines` (stdin is a terminal, or
    /// neither a pipe nor a file: `/dev/null` from cron or nohup, closed)
    /// decides between generating events and reading stdin when there is no
    /// `--data`.
    pub fn resolve(args: Args, stdin_has_no_lines: bool) -> Result<Self, String> {
        pere_http::client::Address::parse(&args.addr).map_err(|_| {
            format!(
                "`{}` is not HOST:PORT, http://HOST:PORT or https://HOST:PORT",
                args.addr
            )
        })?;
        ChannelName::new(&args.channel).map_err(|e| e.to_string())?;
        if let Some(kind) = &args.event {
            EventType::new(kind).map_err(|e| format!("--event: {e}"))?;
        }
        let device_given = args.device.is_some();
        let device = match args.device {
            Some(d) => {
                DeviceId::new(&d).map_err(|e| format!("--device: {e}"))?;
                d
            }
            None => random_device("P"),
        };
        if let Some(token) = &args.token {
            // A static token or a JWT.
            pere_http::client::bearer(token).map_err(|e| format!("--token: {e}"))?;
        }
        let device_from_token = args.token.is_some() && !device_given;
        if args.rate.is_some() && args.interval.is_some() {
            return Err("--rate and --interval both set the pace; give one".into());
        }
        let every = match (args.rate, &args.interval) {
            (Some(rate), _) => {
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(format!("--rate `{rate}` must be a positive number"));
                }
                Some(Duration::try_from_secs_f64(1.0 / rate).map_err(|_| {
                    format!(
                        "--rate `{rate}` is too small: one event in more time than can be counted"
                    )
                })?)
            }
            (None, Some(text)) => {
                Some(parse_duration(text).map_err(|e| format!("--interval: {e}"))?)
            }
            (None, None) => None,
        };
        if args.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        let source = match args.data {
            Some(data) if data.is_empty() => {
                return Err("--data is empty; the server refuses empty events".into());
            }
            Some(data) => Source::Data(data),
            None if args.interval.is_some() || stdin_has_no_lines => Source::Generated,
            None => Source::Stdin,
        };
        let count = match (&source, args.count) {
            (_, Some(n)) => Some(n),
            (Source::Data(_), None) => Some(1),
            _ => None,
        };
        let pace = match (every, &source) {
            (Some(d), _) => Pace::Every(d),
            (None, Source::Generated) => Pace::Random(PERE_PAUSE.0, PERE_PAUSE.1),
            (None, _) => Pace::Asap,
        };
        if args.idempotency_key.is_some() && count != Some(1) {
            return Err(
                "--idempotency-key names one event: use it with --data and --count 1 (every event gets its own generated key otherwise)"
                    .into(),
            );
        }
        if let Some(key) = &args.idempotency_key
            && (key.is_empty()
                || key.len() > pere_core::MAX_IDEMPOTENCY_KEY_LEN
                || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        {
            return Err(format!(
                "--idempotency-key `{key}` must be 1 to {} bytes of printable ASCII",
                pere_core::MAX_IDEMPOTENCY_KEY_LEN
            ));
        }
        let wait = match (&args.wait, &args.timeout) {
            (None, Some(_)) => return Err("--timeout is how long --wait waits; add --wait".into()),
            (None, None) => None,
            (Some(what), timeout) => {
                let what: WaitFor = what.parse().map_err(|e| format!("--wait: {e}"))?;
                let within = match timeout {
                    Some(t) => parse_duration(t).map_err(|e| format!("--timeout: {e}"))?,
                    None => DEFAULT_WAIT,
                };
                if within > MAX_WAIT {
                    return Err(format!(
                        "--timeout `{}` is longer than the server's limit of 60s",
                        timeout.as_deref().unwrap_or_default()
                    ));
                }
                Some((what, within))
            }
        };
        let accepted = match &args.require_status {
            None => Accepted::default(),
            Some(_) if !matches!(wait, Some((WaitFor::Acked, _))) => {
                return Err(
                    "--require-status checks the statuses of receipts: add --wait acked".into(),
                );
            }
            Some(text) => Accepted::parse(text)?,
        };
        Ok(Config {
            accepted,
            token: args.token,
            addr: args.addr,
            channel: args.channel,
            options: PublishOptions {
                // With a token the server takes the device from its subject;
                // a random id would not match it. Nor is one sent with a
                // key of the user's own: keys are scoped by publisher, and
                // running the same command again must be the same one.
                device: (!device_from_token && (device_given || args.idempotency_key.is_none()))
                    .then(|| device.clone()),
                event_type: args.event,
                idempotency_key: None,
                wait,
            },
            device,
            source,
            count,
            pace,
            idempotency_key: args.idempotency_key,
            backoff: Backoff {
                retries: args.retries.unwrap_or(Backoff::default().retries),
                ..Backoff::default()
            },
            retries_given: args.retries.is_some(),
            quiet: args.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, String> {
        let mut all = vec!["127.0.0.1:4567", "CHANNEL_1"];
        all.extend_from_slice(extra);
        Args::from_args(&["pere-pub"], &all).map_err(|e| e.output)
    }

    #[test]
    fn data_publishes_once_unless_counted() {
        let c = Config::resolve(args(&["--data", "x"]).unwrap(), true).unwrap();
        assert_eq!(c.source, Source::Data("x".into()));
        assert_eq!(c.count, Some(1));
        assert_eq!(c.pace, Pace::Asap);
        let c = Config::resolve(
            args(&["--data", "x", "--count", "3", "--rate", "4"]).unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(c.count, Some(3));
        assert_eq!(c.pace, Pace::Every(Duration::from_millis(250)));
    }

    #[test]
    fn a_terminal_gets_generated_events_and_a_pipe_gets_its_lines_published() {
        let c = Config::resolve(args(&[]).unwrap(), true).unwrap();
        assert_eq!(c.source, Source::Generated);
        assert_eq!(c.pace, Pace::Random(PERE_PAUSE.0, PERE_PAUSE.1));
        assert_eq!(c.count, None);
        assert!(c.device.starts_with("P0039"), "{}", c.device);
        let c = Config::resolve(args(&[]).unwrap(), false).unwrap();
        assert_eq!(c.source, Source::Stdin);
        assert_eq!(c.pace, Pace::Asap);
        let c = Config::resolve(args(&["--interval", "2s"]).unwrap(), false).unwrap();
        assert_eq!(c.source, Source::Generated);
        assert_eq!(c.pace, Pace::Every(Duration::from_secs(2)));
    }

    #[test]
    fn wait_takes_a_state_and_a_timeout() {
        let c = Config::resolve(args(&["--data", "x", "--wait", "acked"]).unwrap(), true).unwrap();
        assert_eq!(c.options.wait, Some((WaitFor::Acked, DEFAULT_WAIT)));
        let c = Config::resolve(
            args(&["--data", "x", "--wait", "delivered", "--timeout", "1500ms"]).unwrap(),
            true,
        )
        .unwrap();
        assert_eq!(
            c.options.wait,
            Some((WaitFor::Delivered, Duration::from_millis(1500)))
        );
    }

    #[test]
    fn contradictions_and_bad_values_are_usage_errors() {
        for bad in [
            &["--rate", "1", "--interval", "1"][..],
            &["--rate", "0"],
            &["--rate", "-2"],
            &["--rate", "1e-20"],
            &["--interval", "soon"],
            &["--count", "0"],
            &["--data", ""],
            &["--idempotency-key", "k"],
            &["--data", "x", "--count", "2", "--idempotency-key", "k"],
            &["--data", "x", "--idempotency-key", "é"],
            &["--data", "x", "--wait", "read"],
            &["--data", "x", "--timeout", "5s"],
            &["--data", "x", "--wait", "acked", "--timeout", "2m"],
            &["--data", "x", "--require-status", "ok"],
            &[
                "--data",
                "x",
                "--wait",
                "delivered",
                "--require-status",
                "ok",
            ],
            &[
                "--data",
                "x",
                "--wait",
                "acked",
                "--require-status",
                "ok,,done",
            ],
            &["--event", "pere.hello"],
            &["--device", "a b"],
        ] {
            let result = Config::resolve(args(bad).unwrap(), true);
            assert!(result.is_err(), "{bad:?} must be refused");
        }
        assert!(
            Config::resolve(
                Args::from_args(&["pere-pub"], &["nowhere", "c"]).unwrap(),
                true
            )
            .is_err()
        );
        assert!(
            Config::resolve(
                Args::from_args(&["pere-pub"], &["127.0.0.1:1", "a b"]).unwrap(),
                true
            )
            .is_err()
        );
        let c = Config::resolve(
            args(&["--data", "x", "--idempotency-key", "order-42"]).unwrap(),
            true,
        )
        .unwrap();
        assert_eq!(c.idempotency_key.as_deref(), Some("order-42"));
    }

    #[test]
    fn require_status_takes_exact_statuses_and_prefixes() {
        let a = Accepted::parse("ok, done*").unwrap();
        assert!(a.required);
        for good in ["ok", "done", "done: 3 files"] {
            assert!(a.accepts(good), "{good}");
        }
        for bad in ["", "OK", "error: exit 4: boom", "rx ok"] {
            assert!(!a.accepts(bad), "{bad}");
        }
        let default = Accepted::default();
        assert!(!default.required && default.accepts("ok") && !default.accepts("rx ok"));
        let c = Config::resolve(
            args(&["--data", "x", "--wait", "acked", "--require-status", "ok"]).unwrap(),
            true,
        )
        .unwrap();
        assert!(c.accepted.required);
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("").is_err());
    }
}
