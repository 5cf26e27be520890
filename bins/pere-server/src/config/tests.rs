#![allow(clippy::unwrap_used)]
use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_the_protocol() {
    let c = Config::resolve(Args::default(), &HashMap::new()).unwrap();
    assert_eq!(c.addr.to_string(), "127.0.0.1:4567");
    assert_eq!(c.server.retry, Duration::from_millis(3000));
    assert_eq!(c.server.keepalive, Duration::from_secs(15));
    assert_eq!(c.retention.history, 1000);
    assert_eq!(c.retention.max_age, Some(Duration::from_secs(86_400)));
    assert_eq!(c.hub.member_ttl, Duration::from_secs(86_400));
    assert_eq!(c.hub.max_payload, 65_536);
    assert_eq!(c.server.cors, Cors::Any);
    assert!(!c.hub.replay_all);
    assert_eq!(
        c.store,
        StoreKind::File {
            dir: "pere-data".into(),
            fsync: Fsync::Always
        }
    );
}

#[test]
fn queue_bytes_take_binary_suffixes() {
    let c = Config::resolve(Args::default(), &HashMap::new()).unwrap();
    assert_eq!(c.hub.queue_bytes, 4 << 20);
    for (text, want) in [
        ("65536", 65_536),
        ("64KiB", 65_536),
        ("2 MiB", 2 << 20),
        ("1G", 1 << 30),
    ] {
        let e = env(&[("PERE_QUEUE_BYTES", text)]);
        assert_eq!(
            Config::resolve(Args::default(), &e)
                .unwrap()
                .hub
                .queue_bytes,
            want,
            "{text}"
        );
    }
    for bad in ["", "MiB", "4 MB", "-1", "1.5MiB", "99999999999999999999GiB"] {
        let args = Args {
            queue_bytes: Some(bad.into()),
            ..Args::default()
        };
        let err = Config::resolve(args, &HashMap::new()).unwrap_err();
        assert!(err.contains("--queue-bytes"), "{bad:?}: {err}");
    }
}

#[test]
fn memory_and_data_dir_are_exclusive() {
    let args = Args {
        memory: true,
        ..Args::default()
    };
    assert_eq!(
        Config::resolve(args, &HashMap::new()).unwrap().store,
        StoreKind::Memory
    );
    let both = Args {
        memory: true,
        data_dir: Some("/x".into()),
        ..Args::default()
    };
    assert!(
        Config::resolve(both, &HashMap::new())
            .unwrap_err()
            .contains("contradict")
    );
    let e = env(&[("PERE_FSYNC", "sometimes")]);
    assert!(
        Config::resolve(Args::default(), &e)
            .unwrap_err()
            .contains("--fsync")
    );
    let e = env(&[("PERE_DATA_DIR", "/var/lib/pere"), ("PERE_FSYNC", "never")]);
    assert_eq!(
        Config::resolve(Args::default(), &e).unwrap().store,
        StoreKind::File {
            dir: "/var/lib/pere".into(),
            fsync: Fsync::Never
        }
    );
}

#[test]
fn an_empty_data_dir_is_a_usage_error() {
    let args = Args {
        data_dir: Some(String::new()),
        ..Args::default()
    };
    let err = Config::resolve(args, &HashMap::new()).unwrap_err();
    assert!(err.contains("--data-dir is empty"), "{err}");
}

#[test]
fn a_switch_variable_is_on_or_off_or_an_error() {
    let memory = |v: &str| Config::resolve(Args::default(), &env(&[("PERE_MEMORY", v)]));
    assert_eq!(memory("TRUE").unwrap().store, StoreKind::Memory);
    assert_ne!(memory("off").unwrap().store, StoreKind::Memory);
    let err = memory("maybe").unwrap_err();
    assert!(err.contains("PERE_MEMORY `maybe`"), "{err}");
}

#[test]
fn flags_beat_environment_which_beats_defaults() {
    let e = env(&[
        ("PERE_PORT", "9000"),
        ("PERE_HISTORY", "5"),
        ("PERE_REPLAY_ALL", "1"),
    ]);
    let c = Config::resolve(Args::default(), &e).unwrap();
    assert_eq!(c.addr.port(), 9000);
    assert_eq!(c.retention.history, 5);
    assert!(c.hub.replay_all);
    let args = Args {
        port: Some(1234),
        history: Some("7".into()),
        max_age: Some("0".into()),
        ..Args::default()
    };
    let c = Config::resolve(args, &e).unwrap();
    assert_eq!(c.addr.port(), 1234);
    assert_eq!(c.retention.history, 7);
    assert_eq!(c.retention.max_age, None);
}

#[test]
fn tls_and_jwt_options_come_from_the_environment_too() {
    let c = Config::resolve(Args::default(), &HashMap::new()).unwrap();
    assert!(c.server.tls.is_none() && c.jwt.is_none());
    let e = env(&[("PERE_TLS_CERT", "/nonexistent/cert.pem")]);
    let err = Config::resolve(Args::default(), &e).unwrap_err();
    assert!(err.contains("--tls-key"), "{err}");
    let e = env(&[
        ("PERE_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("PERE_JWT_AUDIENCE", "pere"),
    ]);
    let c = Config::resolve(Args::default(), &e).unwrap();
    let jwt = c.jwt.unwrap();
    assert_eq!(jwt.audience.as_deref(), Some("pere"));
    assert_eq!(jwt.secret.unwrap().len(), 32);
    let e = env(&[("PERE_JWT_SECRET", "short")]);
    let err = Config::resolve(Args::default(), &e).unwrap_err();
    assert!(!err.contains("short") && err.contains("32"), "{err}");
}

#[test]
fn durations_take_units() {
    assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
    assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
    assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
    for bad in ["", "x", "10y", "-1"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(show_duration(Duration::from_secs(86_400)), "1d");
    assert_eq!(show_duration(Duration::from_secs(90)), "90s");
}

#[test]
fn bad_values_name_the_option_and_value() {
    let bad = |args: Args| Config::resolve(args, &HashMap::new()).unwrap_err();
    assert!(
        bad(Args {
            host: Some("nope".into()),
            ..Args::default()
        })
        .contains("nope")
    );
    assert!(
        bad(Args {
            history: Some("many".into()),
            ..Args::default()
        })
        .contains("--history")
    );
    // Nothing kept, or queues that hold nothing, serve nobody.
    let zero = |set: fn(&mut Args)| {
        let mut args = Args::default();
        set(&mut args);
        bad(args)
    };
    assert!(zero(|a| a.history = Some("0".into())).contains("--history must be at least 1"));
    assert!(zero(|a| a.queue_capacity = Some("0".into())).contains("--queue-capacity must"));
    assert!(zero(|a| a.queue_bytes = Some("0".into())).contains("--queue-bytes must"));
    assert!(
        bad(Args {
            max_age: Some("3y".into()),
            ..Args::default()
        })
        .contains("--max-age")
    );
    assert!(
        bad(Args {
            log_format: Some("xml".into()),
            ..Args::default()
        })
        .contains("xml")
    );
    let e = env(&[("PERE_PORT", "http")]);
    assert!(
        Config::resolve(Args::default(), &e)
            .unwrap_err()
            .contains("PERE_PORT")
    );
}

#[test]
fn limits_have_defaults_and_take_flags() {
    let c = Config::resolve(Args::default(), &HashMap::new()).unwrap();
    assert_eq!(c.server.max_streams, 10_000);
    assert_eq!(c.server.max_streams_per_device, 16);
    assert_eq!(c.hub.max_channels_per_stream, 64);
    assert_eq!(c.server.max_header_bytes, 8_192);
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.send_timeout, Duration::from_secs(60));
    assert!(c.auth.is_none());
    let e = env(&[
        ("PERE_MAX_STREAMS", "5"),
        ("PERE_IDLE_TIMEOUT", "2s"),
        ("PERE_SEND_TIMEOUT", "1.5s"),
    ]);
    let args = Args {
        max_channels_per_stream: Some("3".into()),
        max_channels: Some("7".into()),
        ..Args::default()
    };
    let c = Config::resolve(args, &e).unwrap();
    assert_eq!(c.server.max_streams, 5);
    assert_eq!(c.hub.max_channels_per_stream, 3);
    assert_eq!(c.hub.max_channels, 7);
    assert_eq!(c.server.idle_timeout, Duration::from_secs(2));
    assert_eq!(c.server.send_timeout, Duration::from_millis(1500));
    let bad = |args: Args| Config::resolve(args, &HashMap::new()).unwrap_err();
    assert!(
        bad(Args {
            max_header_bytes: Some("100".into()),
            ..Args::default()
        })
        .contains("8192")
    );
    assert!(
        bad(Args {
            max_streams: Some("0".into()),
            ..Args::default()
        })
        .contains("--max-streams")
    );
    assert!(
        bad(Args {
            auth: Some("/nonexistent/auth.json".into()),
            ..Args::default()
        })
        .contains("/nonexistent/auth.json")
    );
}

#[test]
fn cors_lists_are_parsed() {
    let args = Args {
        cors_origin: Some("https://a.example, https://b.example/".into()),
        ..Args::default()
    };
    let c = Config::resolve(args, &HashMap::new()).unwrap();
    assert_eq!(
        c.server.cors,
        Cors::List(vec!["https://a.example".into(), "https://b.example".into()])
    );
}

#[test]
fn a_cors_origin_that_is_not_an_origin_is_refused() {
    let cors = |v: &str| {
        Config::resolve(
            Args {
                cors_origin: Some(v.into()),
                ..Args::default()
            },
            &HashMap::new(),
        )
    };
    for bad in [
        "not a url",
        "app.example.com",
        "https://",
        "https://a.example/path",
        "https://a.example, nope",
    ] {
        let err = cors(bad).unwrap_err();
        assert!(err.contains("is not an origin"), "{bad}: {err}");
    }
    for good in [
        "http://127.0.0.1:8080",
        "https://a.example",
        "https://a.example/",
        "app+x://h",
    ] {
        assert!(cors(good).is_ok(), "{good}");
    }
}
