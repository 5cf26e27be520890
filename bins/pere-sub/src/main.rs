//! `pere-sub`: flags → [`Config`] → follow a channel with
//! [`pere_http::client::Subscriber`], printing events and acknowledging them
//! with [`pere_http::client::Client`], in batches when they come in bursts
//! ([`receipts`]).
//!
//! stdout carries the events (human lines, or docs/PROTOCOL.md §9's JSON lines with
//! `--json`); connection notices and errors go to stderr. Piped into `head`,
//! it stops quietly when stdout closes.

mod config;
mod exec;
mod load;
mod receipts;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use config::{Args, Config, Output};
use pere_core::text::OneLine;
use pere_http::client::{
    Client, Feed, SubscribeOptions, Subscriber, SubscriberItem, unwrap_envelope,
};
use pere_http::sse::SseEvent;
use receipts::Receipts;
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut args: Args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if let Err(err) = pere_http::tls::ClientTls::install_ca_option(args.ca.as_deref()) {
        eprintln!("pere-sub: --ca: {err}");
        return ExitCode::from(2);
    }
    // Before PERE_TOKEN is read: the load mode takes no token, and one in
    // the environment must not stop it.
    if load::wanted(&args) {
        return load::main(args);
    }
    if let Some(flag) = load::without_devices(&args) {
        eprintln!(
            "pere-sub: {flag} is a load-mode flag: add --devices N (a plain run acknowledges every event already; --no-ack turns that off)"
        );
        return ExitCode::from(2);
    }
    if args.token.is_none() {
        args.token = std::env::var("PERE_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
    }
    let state = config::state_dir(|k| std::env::var(k).ok());
    let config = match Config::resolve(args, state.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("pere-sub: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("pere-sub: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let followed = runtime.block_on(follow(&config));
    match followed {
        Ok(()) | Err(Stop::OutputClosed) => ExitCode::SUCCESS,
        Err(Stop::Failed(err)) => {
            eprintln!("pere-sub: {err}");
            ExitCode::FAILURE
        }
        // As a shell reports a process the signal ended.
        Err(Stop::Signal(sig)) => ExitCode::from(128 + sig),
    }
}

/// SIGINT or SIGTERM, as the number a shell adds to 128, once either came.
fn stop_signals() -> tokio::sync::watch::Receiver<Option<u8>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            // Left to their default action: the run ends at once.
            return rx;
        };
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => 2,
                    _ = term.recv() => 15,
                };
                if tx.borrow().is_some() {
                    // A second signal: no more waiting.
                    std::process::exit(128 + i32::from(sig));
                }
                tx.send_replace(Some(sig));
            }
        });
    }
    rx
}

/// Parses the command line (usage errors exit with 2, see
/// [`pere_http::cli::command_line`]).
fn parse_args() -> Result<Args, ExitCode> {
    pere_http::cli::command_line("pere-sub", |rest| {
        <Args as argh::FromArgs>::from_args(&["pere-sub"], rest)
            .map_err(|early| (early.output, early.status.is_ok()))
    })
}

fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Why following stopped other than by reaching `--count`.
enum Stop {
    /// stdout was closed (e.g. piped into `head`): stop quietly.
    OutputClosed,
    /// The subscription failed, or `--timeout` passed before `--count`.
    Failed(String),
    /// SIGINT (2) or SIGTERM (15): the event in hand was finished and the
    /// receipts sent.
    Signal(u8),
}

/// Follows the channel until `--count` events, `--timeout`, or a failure,
/// then waits for the answers to the receipts still queued or in flight.
async fn follow(config: &Config) -> Result<(), Stop> {
    let options = SubscribeOptions {
        last_event_id: config.last_event_id.clone(),
        replay_all: config.replay_all,
        max_reconnects: config.max_reconnects,
        token: config.token.clone(),
        // Each event's data comes wrapped with its channel
        // (docs/PROTOCOL.md §3.8), so `--json` reports the channel an event
        // was published on, not the pattern (§9).
        envelope: true,
        ..SubscribeOptions::default()
    };
    // With a token and no --device, the device is the token's subject: the
    // server names it in `pere.hello`, and receipts are sent as it.
    let device = (!config.device_from_token).then(|| config.device.clone());
    let mut sub = Subscriber::with_options(
        &config.addr,
        Feed::Channels(vec![config.channel.clone()]),
        device.clone(),
        options,
    )
    .map_err(|e| Stop::Failed(e.to_string()))?;
    // Receipts go over their own keep-alive connection.
    let mut client = Client::new(&config.addr).map_err(|e| Stop::Failed(e.to_string()))?;
    if let Some(token) = &config.token {
        client = client
            .with_token(token)
            .map_err(|e| Stop::Failed(e.to_string()))?;
    }
    notice(
        config,
        format_args!(
            "device {}, channel {}, server {}",
            device.as_deref().unwrap_or("(the token's subject)"),
            config.channel,
            sub.address()
        ),
    );
    let receipts = Receipts::start(client, config.channel.clone());
    let mut stop = stop_signals();
    let outcome = follow_events(config, &mut sub, device, &receipts, &mut stop).await;
    // Whatever ended the run, the receipts of the events it processed are
    // sent (`--count N` exits once they are recorded, as it always did;
    // lost, their events would be delivered, and run, again).
    if let Err(Stop::Signal(_)) = outcome {
        notice(
            config,
            format_args!(
                "stopping: sending the receipts of the events processed (a second Ctrl-C ends at once)"
            ),
        );
        // Bounded: a server that hangs would hold each batch for its
        // retries (a minute and more), past a service manager's patience.
        if tokio::time::timeout(STOP_RECEIPTS, receipts.finish())
            .await
            .is_err()
        {
            eprintln!(
                "pere-sub: stopped with receipts unanswered after {} s: their events will come again",
                STOP_RECEIPTS.as_secs()
            );
        }
        return outcome;
    }
    receipts.finish().await;
    outcome
}

/// How long a stop waits for the last receipts' answers.
const STOP_RECEIPTS: Duration = Duration::from_secs(10);

/// The loop of [`follow`]: prints and acknowledges each event of `sub`.
async fn follow_events(
    config: &Config,
    sub: &mut Subscriber,
    mut device: Option<String>,
    receipts: &Receipts,
    stop: &mut tokio::sync::watch::Receiver<Option<u8>>,
) -> Result<(), Stop> {
    let deadline = config.timeout.map(|t| Instant::now() + t);
    let mut received: u64 = 0;
    let mut seen = Seen::default();
    // Whether a stream ever opened: until then a failure is more likely a
    // wrong address or a server not started than a restart (issue 18.10).
    let mut connected_once = false;
    let mut hinted = false;
    // A server that answered, but whose TLS failed: asking whether it runs
    // would point the wrong way.
    let mut tls_failed = false;
    // A server answered an attempt (a 429, a 503): it runs.
    let mut server_answered = false;
    // A stream opened and not yet said to be connected.
    let mut announce = false;
    loop {
        if let Some(sig) = *stop.borrow() {
            return Err(Stop::Signal(sig));
        }
        let next = tokio::select! {
            next = sub.next() => next,
            () = until(deadline) => {
                return match config.count {
                    Some(count) => Err(Stop::Failed(format!(
                        "--timeout passed after {received} of {count} events"
                    ))),
                    None => Ok(()),
                };
            }
            () = stopped(stop) => continue,
        };
        let item = match next {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(()),
            Err(err) => return Err(Stop::Failed(err.to_string())),
        };
        let event = match item {
            SubscriberItem::Event(event) => {
                if announce {
                    // Said once the stream is live (its first event, PERE's
                    // hello): a `200` that ends at once is a server asking
                    // to come back later, not a connection.
                    announce = false;
                    notice(
                        config,
                        format_args!("connected to {}", sub.address().url(sub.path())),
                    );
                }
                event
            }
            SubscriberItem::Connected => {
                connected_once = true;
                announce = true;
                continue;
            }
            SubscriberItem::Disconnected { reason, answered } => {
                tls_failed = reason.contains("TLS");
                // A server that answered (a 429, a 503) is running: asking
                // whether it is would mislead.
                server_answered |= answered;
                notice(config, format_args!("disconnected: {reason}"));
                continue;
            }
            SubscriberItem::Reconnecting { after, attempt } => {
                let from = match sub.last_event_id() {
                    "" => String::new(),
                    id => format!(", resuming after event {id}"),
                };
                let hint = if !connected_once && !server_answered && !hinted && !tls_failed {
                    hinted = true;
                    format!(
                        "; is pere-server running at {}? start it, or check HOST:PORT (each failed attempt doubles the wait, up to a minute)",
                        config.addr
                    )
                } else {
                    String::new()
                };
                notice(
                    config,
                    format_args!(
                        "reconnecting in {} ms (attempt {attempt}{from}){hint}",
                        after.as_millis()
                    ),
                );
                continue;
            }
        };
        let mut event = event;
        let control = event.event.starts_with("pere.");
        let channel = match unwrap_envelope(&event.data) {
            Some((channel, payload)) if !control => {
                event.data = payload;
                Some(channel)
            }
            _ => None,
        };
        if !control && let Some(status) = seen.processed(&event.id) {
            // Sent again (docs/PROTOCOL.md §5: unacknowledged events are
            // redelivered on resume): processed once already in this run,
            // so it is not printed, run or counted again — only its
            // receipt goes out again, in case the first one was lost.
            let status = status.map(str::to_string);
            notice(
                config,
                format_args!("event {} again: already processed, not repeated", event.id),
            );
            if let (Some(status), Some(device)) = (status, &device) {
                ack(receipts, device, &event, &status).await;
            }
            continue;
        }
        print_event(config, &event, control, channel.as_deref())?;
        if event.event == "pere.hello"
            && device.is_none()
            && let Ok(hello) = serde_json::from_str::<serde_json::Value>(&event.data)
            && let Some(subject) = hello["device"].as_str()
        {
            device = Some(subject.to_string());
        }
        if control {
            if event.event == "pere.gap" {
                eprintln!(
                    "pere-sub: events were lost to this device (older than the server retains): {}",
                    event.data
                );
            }
            continue;
        }
        // `--exec`: the command's outcome is the receipt's status, so the
        // receipt is only sent once the command has ended.
        let outcome = match &config.exec {
            Some(command) => {
                let ctx = exec::Context {
                    channel: channel.as_deref().unwrap_or(&config.channel),
                    device: device.as_deref().unwrap_or(&config.device),
                };
                let status = exec::run(command, &event, &ctx, config.exec_timeout).await;
                if status != "ok" {
                    notice(config, format_args!("event {}: {status}", event.id));
                }
                if stopped_with_us(&status, stop).await {
                    // Ctrl-C (or systemd's stop) reached the command too:
                    // it was cut short, not failed. Unacknowledged, it is
                    // delivered, and run, again.
                    notice(
                        config,
                        format_args!(
                            "event {}: its command was stopped with pere-sub; not acknowledged, it comes again",
                            event.id
                        ),
                    );
                    return Err(Stop::Signal(stop.borrow().unwrap_or(15)));
                }
                Some(status)
            }
            None => None,
        };
        let sent_status = config
            .status
            .as_ref()
            .map(|status| outcome.as_ref().unwrap_or(status).clone());
        seen.record(&event.id, sent_status.clone());
        if let Some(status) = &sent_status {
            match &device {
                Some(device) => ack(receipts, device, &event, status).await,
                None => eprintln!(
                    "pere-sub: the server did not name this device in pere.hello: no receipt for event {}",
                    event.id
                ),
            }
        }
        received += 1;
        if config.count.is_some_and(|count| received >= count) {
            return Ok(());
        }
    }
}

/// Whether a command that ended with `status` was stopped by the signal
/// that stops this run: the command dies of SIGINT or SIGTERM (or exits
/// 130 or 143 for it), and this process hears of its own copy a moment
/// later, or already has.
async fn stopped_with_us(
    status: &str,
    stop: &mut tokio::sync::watch::Receiver<Option<u8>>,
) -> bool {
    let number = |prefix: &str| {
        status.strip_prefix(prefix).map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or("")
        })
    };
    // Killed by the signal, or a script that trapped it and exited as a
    // shell reports it (`trap 'exit 143' TERM`).
    let by_signal = matches!(number(exec::SIGNALLED), Some("2" | "15"));
    let trapped = matches!(number("error: exit "), Some("130" | "143"));
    if !by_signal && !trapped {
        return false;
    }
    if stop.borrow().is_some() {
        return true;
    }
    tokio::time::timeout(Duration::from_millis(200), stopped(stop))
        .await
        .is_ok()
}

/// Returns once a stop signal came (never, when they cannot be caught).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<Option<u8>>) {
    if stop.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Most event ids remembered as processed; a redelivery comes within a
/// reconnect of the first delivery, so the newest ones are what matter.
const SEEN_CAPACITY: usize = 100_000;

/// The events this run processed, with the status of their receipt (none
/// when `--no-ack`), oldest forgotten first past [`SEEN_CAPACITY`].
#[derive(Default)]
struct Seen {
    status: HashMap<String, Option<String>>,
    order: VecDeque<String>,
}

impl Seen {
    /// `Some(status)` when `id` was processed already.
    fn processed(&self, id: &str) -> Option<Option<&str>> {
        if id.is_empty() {
            return None;
        }
        self.status.get(id).map(Option::as_deref)
    }

    fn record(&mut self, id: &str, status: Option<String>) {
        if id.is_empty() || self.status.insert(id.to_string(), status).is_some() {
            return;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.status.remove(&old);
        }
    }
}

/// Queues the receipt of `event` (sent in the background, retried briefly
/// when the server is unreachable; a failure is reported, not fatal: the
/// event was received).
async fn ack(receipts: &Receipts, device: &str, event: &SseEvent, status: &str) {
    if event.id.is_empty() {
        eprintln!(
            "pere-sub: event without an id (type {}): no receipt can name it",
            event.event
        );
        return;
    }
    receipts.send(device, &event.id, status).await;
}

/// The data as an EventSource dispatches it (PROTOCOL.md §3): SSE cannot
/// carry a CR, so every CRLF and CR of the payload reads as LF. (The
/// envelope `pere-sub` asks for carries the payload's own bytes; `--exec`
/// gets those.)
fn as_dispatched(data: &str) -> std::borrow::Cow<'_, str> {
    if data.contains('\r') {
        std::borrow::Cow::Owned(data.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        std::borrow::Cow::Borrowed(data)
    }
}

/// Prints one event on stdout in the configured format.
/// `channel` is the event's own (from its envelope); the subscribed name
/// stands in when the server sent none.
fn print_event(
    config: &Config,
    event: &SseEvent,
    control: bool,
    channel: Option<&str>,
) -> Result<(), Stop> {
    let data = as_dispatched(&event.data);
    let line = match config.output {
        Output::Json => serde_json::json!({
            "id": event.id,
            "event": event.event,
            "data": data,
            "channel": if control { None } else { Some(channel.unwrap_or(config.channel.as_str())) },
        })
        .to_string(),
        Output::Human if control => {
            format!("RX CTL> event: {}, data: {}", event.event, OneLine(&data))
        }
        Output::Human => format!(
            "RX EVT> id: {}, event: {}, data: {}",
            event.id,
            event.event,
            OneLine(&data)
        ),
    };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Err(Stop::OutputClosed),
        Err(err) => Err(Stop::Failed(format!("cannot write to stdout: {err}"))),
    }
}

/// A connection notice on stderr, unless `--quiet`.
fn notice(config: &Config, text: std::fmt::Arguments<'_>) {
    if !config.quiet {
        eprintln!("pere-sub: {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 13. No path sends one pere-sub process an event twice: every
    // reconnect carries Last-Event-ID, which the server honours (only a
    // proxy that strips the header would make it redeliver what was not
    // acknowledged). So the rule is tested here, on `Seen`.

    #[test]
    fn an_event_sent_again_is_recognised_with_the_status_of_its_receipt() {
        let mut seen = Seen::default();
        assert_eq!(seen.processed("7"), None, "new");
        seen.record("7", Some("error: exit 4: boom".into()));
        seen.record("8", None);
        assert_eq!(
            seen.processed("7"),
            Some(Some("error: exit 4: boom")),
            "acked again with the status it had"
        );
        assert_eq!(
            seen.processed("8"),
            Some(None),
            "--no-ack: dropped, not acked"
        );
        // Recorded again (the receipt sent again): still one entry.
        seen.record("7", Some("error: exit 4: boom".into()));
        assert_eq!(seen.order.len(), 2);
    }

    #[test]
    fn an_event_without_an_id_is_never_taken_for_a_repeat() {
        let mut seen = Seen::default();
        seen.record("", Some("ok".into()));
        assert_eq!(seen.processed(""), None);
        assert!(seen.order.is_empty());
    }

    #[test]
    fn the_oldest_ids_are_forgotten_past_the_capacity() {
        let mut seen = Seen::default();
        for n in 0..=SEEN_CAPACITY {
            seen.record(&n.to_string(), None);
        }
        assert_eq!(seen.processed("0"), None, "the oldest is forgotten");
        assert!(seen.processed("1").is_some());
        assert!(seen.processed(&SEEN_CAPACITY.to_string()).is_some());
        assert_eq!(seen.status.len(), SEEN_CAPACITY);
    }
}
