//! `pere-pub --concurrency K`: the load mode, over
//! [`pere_load::publish`]. People's summary on stderr, one JSON report
//! on stdout.

use std::process::ExitCode;

use pere_core::{ChannelName, DeviceId};
use pere_http::client::Address;
use pere_load::{Flavor, publish::Config};

use crate::config::{Args, parse_duration};

/// Default payload size of the load mode, in bytes.
const DEFAULT_SIZE: usize = 128;

/// Whether the command line asks for the load mode.
pub fn wanted(args: &Args) -> bool {
    args.concurrency.is_some()
        || args.size.is_some()
        || args.channels.is_some()
        || args.duration.is_some()
        || args.nchan
}

/// Validates the load flags.
fn resolve(args: Args) -> Result<Config, String> {
    let addr = Address::parse(&args.addr).map_err(|_| {
        format!(
            "`{}` is not HOST:PORT, http://HOST:PORT or https://HOST:PORT",
            args.addr
        )
    })?;
    ChannelName::new(&args.channel).map_err(|e| e.to_string())?;
    let concurrency = args.concurrency.unwrap_or(1);
    if concurrency == 0 || concurrency > 10_000 {
        return Err("--concurrency must be between 1 and 10000".into());
    }
    let channels = args.channels.unwrap_or(1);
    if channels == 0 {
        return Err("--channels must be at least 1".into());
    }
    let size = args.size.unwrap_or(DEFAULT_SIZE);
    if !(pere_load::MIN_PAYLOAD..=16 * 1024 * 1024).contains(&size) {
        return Err(format!(
            "--size must be between {} and 16777216 bytes",
            pere_load::MIN_PAYLOAD
        ));
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(format!("--rate `{rate}` must be a positive number"));
    }
    if args.count == Some(0) {
        return Err("--count must be at least 1".into());
    }
    let duration = args
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| format!("--duration: {e}"))?;
    if args.count.is_none() && duration.is_none() {
        return Err("the load mode needs a bound: --count or --duration".into());
    }
    for (flag, given) in [
        ("--data", args.data.is_some()),
        ("--interval", args.interval.is_some()),
        ("--event", args.event.is_some()),
        ("--idempotency-key", args.idempotency_key.is_some()),
        ("--wait", args.wait.is_some()),
        ("--timeout", args.timeout.is_some()),
    ] {
        if given {
            return Err(format!(
                "{flag} has no meaning in the load mode (--concurrency)"
            ));
        }
    }
    if let Some(token) = &args.token {
        pere_core::Token::new(token).map_err(|e| format!("--token: {e}"))?;
    }
    if let Some(d) = &args.device {
        DeviceId::new(d).map_err(|e| format!("--device: {e}"))?;
    }
    Ok(Config {
        addr,
        channel: args.channel,
        channels,
        flavor: if args.nchan {
            Flavor::Nchan
        } else {
            Flavor::Pere
        },
        count: args.count,
        rate: args.rate,
        concurrency,
        size,
        duration,
        device: args.device,
        token: args.token,
    })
}

/// Runs the load mode and prints its report.
pub fn main(args: Args) -> ExitCode {
    let quiet = args.quiet;
    let config = match resolve(args) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("pere-pub: {err}");
            return ExitCode::from(2);
        }
    };
    pere_load::raise_nofile_limit();
    let run = pere_load::publish::run(config, |text| {
        if !quiet {
            eprintln!("pere-pub: {text}");
        }
    });
    let Some(report) = pere_load::block_on("pere-pub", run) else {
        return ExitCode::FAILURE;
    };
    match report {
        Ok(report) => {
            pere_load::print_report(
                "pere-pub",
                &report.text,
                report.first_error.as_deref(),
                &report.to_json(),
            );
            if let Some(sig) = report.interrupted {
                // As a shell reports a process the signal ended: the run
                // did not finish, whatever its figures say.
                ExitCode::from(128 + sig)
            } else if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("pere-pub: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use argh::FromArgs;

    fn resolve_args(extra: &[&str]) -> Result<Config, String> {
        let mut all = vec!["127.0.0.1:4567", "load"];
        all.extend_from_slice(extra);
        resolve(Args::from_args(&["pere-pub"], &all).map_err(|e| e.output)?)
    }

    #[test]
    fn load_flags_are_checked() {
        let c = resolve_args(&["--concurrency", "4", "--count", "100"]).unwrap();
        assert_eq!(
            (c.concurrency, c.count, c.size),
            (4, Some(100), DEFAULT_SIZE)
        );
        let c = resolve_args(&["--nchan", "--duration", "3s", "--rate", "10"]).unwrap();
        assert_eq!(c.flavor, Flavor::Nchan);
        assert_eq!(c.rate, Some(10.0));
        for bad in [
            &["--concurrency", "0", "--count", "1"][..],
            &["--concurrency", "4"],
            &["--concurrency", "4", "--count", "1", "--size", "10"],
            &["--concurrency", "4", "--count", "1", "--data", "x"],
            &["--concurrency", "4", "--count", "1", "--rate", "0"],
        ] {
            assert!(resolve_args(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
