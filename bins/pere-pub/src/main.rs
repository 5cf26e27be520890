//! `pere-pub`: flags → [`Config`] → publish with [`pere_http::client`].
//!
//! stdout carries one line per published event whose first word is the event
//! id (docs/PROTOCOL.md §9); everything else goes to stderr. Exit status: 0 when
//! every event was published, 1 when one could not be, 2 for a bad command
//! line, 3 when every event was published but a `--wait` timed out, 4 when
//! the answer to a publish was lost and whether it was stored is unknown.

mod config;
mod load;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use config::{Args, Config, Pace, Source};
use pere_http::Error;
use pere_http::client::{Backoff, Client, Published, random_key};
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut args: Args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if let Err(err) = pere_http::tls::ClientTls::install_ca_option(args.ca.as_deref()) {
        eprintln!("pere-pub: --ca: {err}");
        return ExitCode::from(2);
    }
    if args.token.is_none() {
        args.token = std::env::var("PERE_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
    }
    if load::wanted(&args) {
        return load::main(args);
    }
    let config = match Config::resolve(args, !stdin_gives_lines()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("pere-pub: {err}");
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
            eprintln!("pere-pub: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut outcome = Outcome::default();
    let result = runtime.block_on(run(&config, &mut outcome));
    let timed_out = outcome.timed_out;
    // A read of stdin cannot be cancelled; do not wait for one at exit.
    runtime.shutdown_background();
    match result {
        Err(Stop::Failed(err)) => {
            eprintln!("pere-pub: {err}");
            ExitCode::FAILURE
        }
        Err(Stop::Unconfirmed(err)) => {
            eprintln!("pere-pub: {err}");
            ExitCode::from(4)
        }
        // Proof came back, and it says the processing failed.
        Ok(()) | Err(Stop::OutputClosed) if outcome.refused > 0 => {
            if !config.quiet {
                eprintln!(
                    "pere-pub: published, but {} event(s) were acknowledged with a status --require-status does not accept (see bad_status= on their lines)",
                    outcome.refused
                );
            }
            ExitCode::from(5)
        }
        Ok(()) | Err(Stop::OutputClosed) if timed_out == 0 => ExitCode::SUCCESS,
        // Published, so not a failure to retry; but a script that waits
        // wants proof, and `&&` must not read a timeout as one (also when
        // stdout was closed early, as by `| head -1`).
        Ok(()) | Err(Stop::OutputClosed) => {
            if !config.quiet {
                eprintln!(
                    "pere-pub: published, but the wait timed out for {timed_out} event(s): not every recipient was {} in time (see unacked= and pending= on their lines)",
                    config
                        .options
                        .wait
                        .map_or("reached", |(state, _)| state.as_str())
                );
            }
            ExitCode::from(3)
        }
    }
}

/// Whether stdin is a source of lines to publish: a pipe, a file or a
/// socket. A terminal is not, and neither is `/dev/null` (what cron, nohup
/// and `</dev/null` give: issue 18.10, `--rate 2 --count 70 </dev/null`
/// published nothing and exited 0) nor a closed stdin: those get generated
/// events, as the README says ("when stdin is a pipe or a file").
fn stdin_gives_lines() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return false;
    }
    let Ok(fd) = stdin.as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => {
            let kind = meta.file_type();
            kind.is_fifo() || kind.is_file() || kind.is_socket()
        }
        Err(_) => false,
    }
}

/// Parses the command line (usage errors exit with 2, see
/// [`pere_http::cli::command_line`]).
fn parse_args() -> Result<Args, ExitCode> {
    pere_http::cli::command_line("pere-pub", |rest| {
        <Args as argh::FromArgs>::from_args(&["pere-pub"], rest)
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

/// Why publishing stopped early.
enum Stop {
    /// stdout was closed (e.g. piped into `head`): stop quietly.
    OutputClosed,
    /// An event could not be published, or the input could not be read.
    Failed(String),
    /// The answer to a publish was lost: it may or may not be stored.
    Unconfirmed(String),
}

/// Retries before the server was ever reached in this run: a wrong port or
/// a server not started yet is told within seconds, not half a minute
/// (issue 18.10), while a server still starting gets a few seconds. Once it
/// answered, [`Config::backoff`] rides out its restarts.
const FIRST_CONTACT: Backoff = Backoff {
    retries: 5,
    initial: Duration::from_millis(250),
    max: Duration::from_secs(2),
};

/// How long a publish may go unanswered before the server ever answered
/// in this run (see [`run`]).
const FIRST_ANSWER: Duration = Duration::from_secs(5);

/// What the waits of a run found, for the exit status.
#[derive(Default)]
struct Outcome {
    /// Events whose `--wait` timed out.
    timed_out: u64,
    /// Events acknowledged by some device with a status `--require-status`
    /// does not accept.
    refused: u64,
}

/// Publishes every event of the configured source, paced, and prints a line
/// for each, counting in `outcome` what its waits found.
async fn run(config: &Config, outcome: &mut Outcome) -> Result<(), Stop> {
    // Until the server answers once, an attempt it does not answer fails
    // after FIRST_ANSWER, not the usual 30 s: what accepts connections and
    // never answers (a stopped server, another program) is told within
    // half a minute, as a closed port is within seconds.
    let mut client = Client::new(&config.addr)
        .map_err(|e| Stop::Failed(e.to_string()))?
        .request_timeout(FIRST_ANSWER);
    if let Some(token) = &config.token {
        client = client
            .with_token(token)
            .map_err(|e| Stop::Failed(e.to_string()))?;
    }
    let mut rng = Rng::new();
    // Per-run part of the generated idempotency keys: keys of two runs of
    // the same device never collide.
    let run_key = &random_key()[..12];
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let start = Instant::now();
    let mut sent: u64 = 0;
    // Whether the server answered (or may have received) anything yet.
    let mut reached = false;
    while config.count.is_none_or(|count| sent < count) {
        // A generated event is made after the pause, so its `time` is the
        // time it is published.
        let given = match &config.source {
            Source::Data(data) => Some(data.clone()),
            Source::Generated => None,
            Source::Stdin => match stdin.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) => Some(line),
                Ok(None) => break,
                Err(err) => return Err(Stop::Failed(format!("cannot read stdin: {err}"))),
            },
        };
        if sent > 0 {
            match config.pace {
                Pace::Asap => {}
                Pace::Every(period) => {
                    let due =
                        u32::try_from(sent).map_or(Duration::MAX, |n| period.saturating_mul(n));
                    // `sleep` takes a duration past what an Instant holds
                    // (as a wait for ever); `start + due` would panic.
                    tokio::time::sleep(due.saturating_sub(start.elapsed())).await;
                }
                Pace::Random(min, max) => tokio::time::sleep(rng.between(min, max)).await,
            }
        }
        let payload = given.unwrap_or_else(|| generated_payload(config, sent + 1, &mut rng));
        let mut options = config.options.clone();
        options.idempotency_key = Some(match &config.idempotency_key {
            Some(key) => key.clone(),
            None => format!("{}-{run_key}-{}", config.device, sent + 1),
        });
        let backoff = if reached || config.retries_given {
            config.backoff
        } else {
            FIRST_CONTACT
        };
        let mut hinted = false;
        let published = client
            .publish_retrying(
                &config.channel,
                payload,
                &options,
                &backoff,
                |retry, delay, err| {
                    if config.quiet {
                        return;
                    }
                    let hint = if !reached
                        && !hinted
                        && matches!(err, Error::Io { .. } | Error::Timeout(_))
                    {
                        hinted = true;
                        format!(" ({})", unreachable_hint(&config.addr))
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "pere-pub: {err}; retry {retry}/{} in {} ms{hint}",
                        backoff.retries,
                        delay.as_millis()
                    );
                },
            )
            .await
            .map_err(|err| {
                failure(
                    config,
                    sent + 1,
                    options.idempotency_key.as_deref(),
                    reached,
                    err,
                )
            })?;
        if !reached {
            client = client.request_timeout(pere_http::client::DEFAULT_REQUEST_TIMEOUT);
        }
        reached = true;
        sent += 1;
        if published.shutting_down && !config.quiet {
            eprintln!(
                "pere-pub: event {} was published, but the server shut down while the wait for its receipts ran; do not publish it again (its receipts: GET /receipts/{}/{})",
                published.id, published.channel, published.id
            );
        }
        if published.timed_out == Some(true) {
            outcome.timed_out += 1;
        }
        let (line, refused) = report(&client, config, &published).await;
        if refused {
            outcome.refused += 1;
        }
        match print_line(&line) {
            // Closing stdout ends an endless run (`| head -3`); a run with
            // more to publish must not pass for a whole one.
            Err(Stop::OutputClosed) => {
                let rest = match config.count {
                    Some(count) if sent >= count => None,
                    _ if config.source == Source::Stdin => more_lines(&mut stdin)
                        .await
                        .then(|| "the lines of stdin after it".to_owned()),
                    Some(count) => Some(format!("the other {} event(s) of --count", count - sent)),
                    None => None,
                };
                return Err(match rest {
                    Some(rest) => Stop::Failed(format!(
                        "stdout was closed after event {sent} was published: stopped, and {rest} were not published"
                    )),
                    None => Stop::OutputClosed,
                });
            }
            printed => printed?,
        }
    }
    // Asked to publish and published nothing: a failure, even with -q,
    // or "no lines" and "nothing to do" look the same to a script.
    if sent == 0 && config.source == Source::Stdin {
        return Err(Stop::Failed(
            "stdin ended without a line: nothing was published \
             (for generated events like publisher.rb, give --interval or run it with stdin from /dev/null)"
                .into(),
        ));
    }
    Ok(())
}

/// What to suggest when nothing answers at `addr`.
fn unreachable_hint(addr: &str) -> String {
    format!(
        "is pere-server running at {addr}? start it, or check HOST:PORT (the server prints its address at start)"
    )
}

/// Why event number `n` failed, as the run's final word: not published (1),
/// or unknown (4) when an answer was lost, with how to retry safely.
fn failure(config: &Config, n: u64, key: Option<&str>, reached: bool, err: Error) -> Stop {
    match err {
        Error::Unconfirmed {
            source,
            idempotency_key,
        } => {
            let key = if idempotency_key.is_empty() {
                key.unwrap_or_default().to_string()
            } else {
                idempotency_key
            };
            // Keys are the publisher's own: a retry must name the same
            // one (a token names it itself).
            let retry = match &config.options.device {
                Some(device) => format!("--idempotency-key {key} --device {device}"),
                None => format!("--idempotency-key {key}"),
            };
            // Nothing ever answered: the port may not be a PERE server.
            let hint = if reached {
                String::new()
            } else {
                format!(
                    " No answer came in this run: {}.",
                    unreachable_hint(&config.addr)
                )
            };
            Stop::Unconfirmed(format!(
                "event {n} on {}: the outcome is unknown: the server may have published it, \
                 but its answer was lost ({source}). Publishing it again is safe with the same \
                 Idempotency-Key and publisher, `{retry}`: the server then answers with the \
                 first result if it stored the event, and stores it once if it did not. Without \
                 them, publishing again may make a duplicate.{hint}",
                config.channel
            ))
        }
        err @ Error::Io { .. } if !reached => Stop::Failed(format!(
            "event {n} was not published on {}: {err}; {}",
            config.channel,
            unreachable_hint(&config.addr)
        )),
        err => Stop::Failed(format!(
            "event {n} was not published on {}: {err}",
            config.channel
        )),
    }
}

/// The output line of a published event: the id first (docs/PROTOCOL.md §9), then
/// `key=value` words; with `--wait`, who acked, who acked with a status
/// that is not accepted (`bad_status=`, issue 18.3: an `--exec` failure
/// looked like any other receipt), who has not acked and who was not even
/// sent the event yet. The flag says whether `--require-status` refused
/// the event.
async fn report(client: &Client, config: &Config, p: &Published) -> (String, bool) {
    let mut line = format!(
        "{}  channel={} recipients={}",
        p.id, p.channel, p.recipients
    );
    if p.duplicate {
        line.push_str(" duplicate=true");
    }
    if p.shutting_down {
        line.push_str(" shutting_down=true");
    }
    if config.options.wait.is_none() {
        return (line, false);
    }
    line.push_str(&format!(
        " delivered={} acked={} timed_out={}",
        p.delivered.unwrap_or(0),
        p.acked.unwrap_or(0),
        p.timed_out.unwrap_or(false)
    ));
    // The publish answer counts acks; the receipts name the devices.
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // A server that answered while shutting down is going away: the
    // answer's lists are all there is.
    let summary = if p.shutting_down {
        None
    } else {
        Some(client.receipts(&config.channel, &p.id).await)
    };
    let (acked_by, bad, pending, unacked) = match summary {
        Some(Ok(summary)) => {
            let mut acked = Vec::new();
            let mut bad = Vec::new();
            for (device, r) in summary["devices"].as_object().into_iter().flatten() {
                if r["state"] != "acked" {
                    continue;
                }
                acked.push(device.clone());
                let status = r["status"].as_str().unwrap_or_default();
                if !config.accepted.accepts(status) {
                    bad.push((device.clone(), status.to_string()));
                }
            }
            (
                Some(acked),
                Some(bad),
                names(&summary["pending"]),
                names(&summary["unacked"]),
            )
        }
        failed => {
            if let Some(Err(err)) = failed
                && !config.quiet
            {
                eprintln!(
                    "pere-pub: event {}: its receipts could not be read ({err}); its line names who had not acknowledged it from the publish answer",
                    p.id
                );
            }
            (
                None,
                None,
                p.pending.clone().unwrap_or_default(),
                p.unacked.clone().unwrap_or_default(),
            )
        }
    };
    if let Some(acked_by) = acked_by {
        line.push_str(&format!(" acked_by={}", list(&acked_by)));
    }
    let refused = match &bad {
        Some(bad) => {
            let devices: Vec<String> = bad.iter().map(|(d, _)| d.clone()).collect();
            line.push_str(&format!(" bad_status={}", list(&devices)));
            if !config.quiet {
                for (device, status) in bad {
                    eprintln!(
                        "pere-pub: event {}: {device} acknowledged it with status {status:?} ({})",
                        p.id,
                        config.accepted.describe()
                    );
                }
            }
            config.accepted.required && !bad.is_empty()
        }
        None if config.accepted.required => {
            eprintln!(
                "pere-pub: event {}: its receipts could not be read, so their statuses cannot be checked against --require-status",
                p.id
            );
            true
        }
        None => false,
    };
    // docs/PROTOCOL.md §5: `unacked` have not acknowledged; `pending` were
    // not even written to yet.
    line.push_str(&format!(
        " unacked={} pending={}",
        list(&unacked),
        list(&pending)
    ));
    (line, refused)
}

/// A comma-separated list, `-` when empty.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

/// Whether stdin has another event to publish: a line comes, or it is
/// still open a moment later (what follows would not be published).
async fn more_lines(stdin: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_millis(200), stdin.next_line()).await {
            Ok(Ok(Some(line))) if line.trim().is_empty() => continue,
            // A line that cannot be read is one not published either.
            Ok(Ok(Some(_)) | Err(_)) | Err(_) => return true,
            Ok(Ok(None)) => return false,
        }
    }
}

/// Writes one line to stdout; a closed stdout stops the run quietly.
fn print_line(line: &str) -> Result<(), Stop> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Err(Stop::OutputClosed),
        Err(err) => Err(Stop::Failed(format!("cannot write to stdout: {err}"))),
    }
}

/// A generated event, as PERE's publisher.rb made them: the channel, the
/// device, an application message counter, the time (ISO 8601, UTC) and a
/// random base-36 chunk of 15 to 128 characters.
fn generated_payload(config: &Config, counter: u64, rng: &mut Rng) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let now = time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default();
    let len = 15 + rng.below(128 - 15 + 1);
    let data: String = (0..len)
        .map(|_| {
            let d = rng.below(36) as u32;
            char::from_digit(d, 36).unwrap_or('0')
        })
        .collect();
    serde_json::json!({
        "channel": config.channel,
        "device": config.device,
        "id": counter,
        "time": now,
        "data": data,
    })
    .to_string()
}

/// A small non-cryptographic generator (splitmix64) for generated data and
/// pauses, seeded from the standard library's random hasher keys.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Self(h.finish())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration between `min` and `max`, to the millisecond.
    fn between(&mut self, min: Duration, max: Duration) -> Duration {
        let span = max.saturating_sub(min).as_millis() as u64;
        min + Duration::from_millis(self.below(span + 1))
    }
}
