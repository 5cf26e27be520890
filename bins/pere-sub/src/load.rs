//! `pere-sub --devices N`: the load mode, over [`pere_load::devices`].
//! People's summary on stderr, one JSON report on stdout.

use std::process::ExitCode;

use pere_core::Pattern;
use pere_http::client::Address;
use pere_load::{
    Flavor,
    devices::{AckMode, Config},
};

use crate::config::{Args, parse_duration};

/// Whether the command line asks for the load mode: `--devices`. A load
/// flag without it is a usage error ([`without_devices`]), not a switch to
/// a one-device benchmark: `--ack` reads as "acknowledge", which pere-sub
/// does anyway, and `--duration` alone was ignored (the run never ended).
pub fn wanted(args: &Args) -> bool {
    args.devices.is_some()
}

/// The first load-mode flag given without `--devices`, if any.
pub fn without_devices(args: &Args) -> Option<&'static str> {
    if args.devices.is_some() {
        return None;
    }
    [
        (args.channels.is_some(), "--channels"),
        (args.ack, "--ack"),
        (args.ack_each, "--ack-each"),
        (args.ack_connections.is_some(), "--ack-connections"),
        (args.ack_pipeline.is_some(), "--ack-pipeline"),
        (args.duration.is_some(), "--duration"),
        (args.nchan, "--nchan"),
        (args.resume, "--resume"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

/// Validates the load flags.
fn resolve(args: Args) -> Result<Config, String> {
    let addr = Address::parse(&args.addr).map_err(|_| {
        format!(
            "`{}` is not HOST:PORT, http://HOST:PORT or https://HOST:PORT",
            args.addr
        )
    })?;
    Pattern::new(&args.channel).map_err(|e| e.to_string())?;
    let devices = args.devices.unwrap_or(1);
    if devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    let channels = args.channels.unwrap_or(1);
    if channels == 0 || channels > devices {
        return Err(format!(
            "--channels must be between 1 and --devices ({devices})"
        ));
    }
    if args.count == Some(0) {
        return Err("--count must be at least 1".into());
    }
    if args.ack && args.ack_each {
        return Err("--ack and --ack-each are two ways of acknowledging; give one".into());
    }
    let ack = match (args.ack, args.ack_each) {
        (true, _) => Some(AckMode::Batch),
        (_, true) => Some(AckMode::Each),
        _ => None,
    };
    if args.ack_connections == Some(0) || (args.ack_connections.is_some() && ack.is_none()) {
        return Err("--ack-connections needs --ack or --ack-each, and at least 1".into());
    }
    if args.ack_pipeline == Some(0) || (args.ack_pipeline.is_some() && ack != Some(AckMode::Each)) {
        return Err("--ack-pipeline needs --ack-each, and at least 1".into());
    }
    if args.nchan && ack.is_some() {
        return Err("nchan has no receipts: --ack and --ack-each need PERE".into());
    }
    for (flag, given) in [
        ("--json", args.json),
        ("--replay-all", args.replay_all),
        ("--last-event-id", args.last_event_id.is_some()),
        ("--device", args.device.is_some()),
        ("--exec", args.exec.is_some()),
        ("--exec-timeout", args.exec_timeout.is_some()),
    ] {
        if given {
            return Err(format!(
                "{flag} has no meaning in the load mode (--devices)"
            ));
        }
    }
    if args.token.is_some() {
        return Err(
            "--token: a token speaks for one device and the load mode simulates many; \
             load-test a server without --auth"
                .into(),
        );
    }
    let duration = match (&args.duration, &args.timeout) {
        (Some(_), Some(_)) => {
            return Err("--duration and --timeout both bound the run; give one".into());
        }
        (Some(d), None) | (None, Some(d)) => {
            Some(parse_duration(d).map_err(|e| format!("--duration: {e}"))?)
        }
        (None, None) => None,
    };
    if args.count.is_none() && duration.is_none() {
        return Err(
            "the load mode needs a bound: --count (events per device) or --duration".into(),
        );
    }
    Ok(Config {
        addr,
        channel: args.channel,
        channels,
        devices,
        flavor: if args.nchan {
            Flavor::Nchan
        } else {
            Flavor::Pere
        },
        count: args.count,
        duration,
        ack,
        ack_connections: args.ack_connections,
        ack_pipeline: args.ack_pipeline.unwrap_or(1),
        status: args.status.unwrap_or_else(|| "ok".into()),
        device_prefix: format!("load{}", std::process::id()),
        connect_concurrency: 256,
        resume: args.resume,
    })
}

/// Runs the load mode and prints its report.
pub fn main(args: Args) -> ExitCode {
    let quiet = args.quiet;
    let config = match resolve(args) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("pere-sub: {err}");
            return ExitCode::from(2);
        }
    };
    let limit = pere_load::raise_nofile_limit();
    let needed = pere_load::devices::connections_needed(&config) + 64;
    if needed > limit {
        eprintln!(
            "pere-sub: {} devices need about {needed} open files; the limit is {limit} (raise the hard limit, or use fewer devices)",
            config.devices
        );
        return ExitCode::from(2);
    }
    let run = pere_load::devices::run(config, |text| {
        // "devices ready" is always printed: scripts wait for it.
        if !quiet || text.contains("devices ready (") {
            eprintln!("pere-sub: {text}");
        }
    });
    let Some(report) = pere_load::block_on("pere-sub", run) else {
        return ExitCode::FAILURE;
    };
    match report {
        Ok(report) => {
            pere_load::print_report(
                "pere-sub",
                &report.text,
                report.first_error.as_deref(),
                &report.to_json(),
            );
            let complete = report.expected.is_none_or(|e| report.deliveries >= e);
            if let Some(sig) = report.interrupted {
                // As a shell reports a process the signal ended: the run
                // did not finish, whatever its figures say.
                ExitCode::from(128 + sig)
            } else if report.failed == 0
                && report.missing() == 0
                && report.duplicates == 0
                && report.unreported == 0
                && complete
            {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("pere-sub: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use argh::FromArgs;
    use std::time::Duration;

    fn resolve_args(extra: &[&str]) -> Result<Config, String> {
        let mut all = vec!["127.0.0.1:4567", "load"];
        all.extend_from_slice(extra);
        resolve(Args::from_args(&["pere-sub"], &all).map_err(|e| e.output)?)
    }

    #[test]
    fn load_flags_are_checked() {
        let c = resolve_args(&["--devices", "10", "--count", "5", "--ack"]).unwrap();
        assert_eq!(
            (c.devices, c.count, c.ack),
            (10, Some(5), Some(AckMode::Batch))
        );
        let c = resolve_args(&["--devices", "10", "--duration", "2s", "--nchan"]).unwrap();
        assert_eq!(c.flavor, Flavor::Nchan);
        assert_eq!(c.duration, Some(Duration::from_secs(2)));
        let c = resolve_args(&[
            "--devices",
            "10",
            "--count",
            "5",
            "--ack-each",
            "--ack-pipeline",
            "16",
        ])
        .unwrap();
        assert_eq!((c.ack, c.ack_pipeline), (Some(AckMode::Each), 16));
        for bad in [
            &["--devices", "0", "--count", "1"][..],
            &["--devices", "10"],
            &["--devices", "10", "--count", "1", "--ack", "--ack-each"],
            &["--devices", "10", "--count", "1", "--nchan", "--ack"],
            &["--devices", "10", "--count", "1", "--channels", "11"],
            &["--devices", "10", "--count", "1", "--json"],
            &[
                "--devices",
                "10",
                "--count",
                "1",
                "--ack",
                "--ack-pipeline",
                "4",
            ],
            &[
                "--devices",
                "10",
                "--count",
                "1",
                "--ack-each",
                "--ack-pipeline",
                "0",
            ],
        ] {
            assert!(resolve_args(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
