//! Behaviour tests of wsguard-config: loading.
#![cfg(feature = "load")]
// figment::Jail closures return figment::Error, which is large; fine in tests.
#![allow(clippy::result_large_err)]
use std::time::Duration;

use figment::Jail;
use wsguard_config::{
    ConfigLoader, DedupScope, KeySource, LoadError, Preset, SessionBackend, StabilityConfig,
    TripMode,
};

#[test]
fn toml_round_trips_every_preset() {
    for preset in [Preset::Production, Preset::Development, Preset::Testing] {
        let config = preset.config();
        let text = config.to_toml_string().unwrap();
        assert_eq!(
            StabilityConfig::from_toml_str(&text).unwrap(),
            config,
            "{text}"
        );
    }
}

#[test]
fn json_round_trips_every_preset() {
    for preset in [Preset::Production, Preset::Development, Preset::Testing] {
        let mut config = preset.config();
        config.dedup.fingerprint_key = Some("000102030405060708090a0b0c0d0e0f".to_owned());
        let text = config.to_json_string().unwrap();
        assert_eq!(
            StabilityConfig::from_json_str(&text).unwrap(),
            config,
            "{text}"
        );
    }
}

#[test]
fn durations_are_human_readable_and_written_back_that_way() {
    let config = StabilityConfig::from_toml_str(
        r#"
        [dedup]
        ttl = "2m 30s"
        [circuit_breaker]
        timeout = "250ms"
        backoff = { strategy = "fixed" }
        "#,
    )
    .unwrap();
    assert_eq!(config.dedup.ttl, Duration::from_secs(150));
    assert_eq!(config.circuit_breaker.timeout, Duration::from_millis(250));
    let text = config.to_toml_string().unwrap();
    assert!(text.contains("ttl = \"2m 30s\""), "{text}");
    assert!(text.contains("timeout = \"250ms\""), "{text}");
}

#[test]
fn original_design_names_load() {
    let config = StabilityConfig::from_toml_str(
        r#"
        [circuit_breaker]
        timeout_seconds = 30
        backoff = { strategy = "fixed" }
        [dedup]
        ttl_seconds = 300
        "#,
    )
    .unwrap();
    assert_eq!(config.circuit_breaker.timeout, Duration::from_secs(30));
    assert_eq!(config.dedup.ttl, Duration::from_secs(300));
}

#[test]
fn a_file_overrides_only_the_fields_it_names() {
    let config = StabilityConfig::from_toml_str(
        r#"
        [dedup]
        key = "json_field"
        scope = "client"
        "#,
    )
    .unwrap();
    assert_eq!(config.dedup.key, KeySource::JsonField);
    assert_eq!(config.dedup.scope, DedupScope::Client);
    assert_eq!(config.dedup.ttl, StabilityConfig::default().dedup.ttl);
    assert_eq!(config.metrics, StabilityConfig::default().metrics);
}

fn parse_paths(err: &LoadError) -> Vec<String> {
    match err {
        LoadError::Parse { errors, .. } => errors.iter().map(|e| e.path.clone()).collect(),
        other => panic!("expected a parse error, got {other}"),
    }
}

#[test]
fn unknown_field_in_toml_names_its_path() {
    let err =
        StabilityConfig::from_toml_str("[dedup.store.redis]\nurll = \"redis://x\"\n").unwrap_err();
    assert_eq!(parse_paths(&err), ["dedup.store.redis.urll"]);
    assert!(
        err.to_string()
            .contains("dedup.store.redis.urll: unknown field"),
        "{err}"
    );
}

#[test]
fn unknown_field_in_json_names_its_path() {
    let err = StabilityConfig::from_json_str(r#"{"metrics": {"sample_rat": 0.5}}"#).unwrap_err();
    assert_eq!(parse_paths(&err), ["metrics.sample_rat"]);
}

#[test]
fn unknown_section_names_its_path() {
    let err = StabilityConfig::from_toml_str("[dedupe]\nttl = \"1s\"\n").unwrap_err();
    assert_eq!(parse_paths(&err), ["dedupe"]);
}

#[test]
fn wrong_type_names_its_path() {
    let err = StabilityConfig::from_toml_str("[dedup]\nttl = \"soon\"\n").unwrap_err();
    assert_eq!(parse_paths(&err), ["dedup.ttl"]);
    let err =
        StabilityConfig::from_toml_str("[circuit_breaker]\nmode = \"sometimes\"\n").unwrap_err();
    assert_eq!(parse_paths(&err), ["circuit_breaker.mode"]);
}

#[test]
fn parsed_but_invalid_file_lists_validation_errors() {
    let err =
        StabilityConfig::from_toml_str("[dedup]\nttl = \"0s\"\nmax_entries = 0\n").unwrap_err();
    let LoadError::Invalid(v) = &err else {
        panic!("expected Invalid, got {err}")
    };
    assert!(v.has("dedup.ttl") && v.has("dedup.max_entries"), "{v}");
}

#[test]
fn missing_file_is_an_io_error_naming_the_file() {
    let err = ConfigLoader::new()
        .without_env()
        .file("/nonexistent/wsguard.toml")
        .load()
        .unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }));
    assert!(
        err.to_string().contains("/nonexistent/wsguard.toml"),
        "{err}"
    );
}

#[test]
fn env_overrides_the_file_which_overrides_the_base() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "wsguard.toml",
            r#"
            [dedup]
            ttl = "2m"
            max_entries = 500
            [circuit_breaker]
            mode = "time_window"
            "#,
        )?;
        jail.set_env("WSGUARD_DEDUP__TTL", "60s");
        jail.set_env("WSGUARD_CIRCUIT_BREAKER__BACKOFF__MULTIPLIER", "2.5");
        jail.set_env("WSGUARD_METRICS__SAMPLE_RATE", "0.5");
        let config = ConfigLoader::new()
            .preset(Preset::Development)
            .file("wsguard.toml")
            .load()
            .map_err(|e| e.to_string())?;
        assert_eq!(config.dedup.ttl, Duration::from_secs(60), "env beats file");
        assert_eq!(config.dedup.max_entries, 500, "file beats base");
        assert_eq!(config.circuit_breaker.mode, TripMode::TimeWindow);
        assert_eq!(config.circuit_breaker.backoff.multiplier, 2.5);
        assert_eq!(config.metrics.sample_rate, 0.5);
        let dev = StabilityConfig::development();
        assert_eq!(
            config.connection, dev.connection,
            "base kept where nothing overrides"
        );
        Ok(())
    });
}

#[test]
fn session_section_loads_from_the_file_and_the_environment() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "wsguard.toml",
            r#"
            [session]
            ttl = "2m"
            max_messages = 500
            ack_interval = "20ms"
            [session.store]
            backend = "redis"
            [session.store.redis]
            url = "rediss://cache:6380"
            operation_timeout = "100ms"
            "#,
        )?;
        jail.set_env("WSGUARD_SESSION__TTL", "10s");
        jail.set_env("WSGUARD_SESSION__STORE__REDIS__KEY_PREFIX", "chat:session:");
        let config = ConfigLoader::new()
            .preset(Preset::Development)
            .file("wsguard.toml")
            .load()
            .map_err(|e| e.to_string())?;
        let s = &config.session;
        assert_eq!(s.ttl, Duration::from_secs(10), "env beats file");
        assert_eq!(s.max_messages, 500, "file beats base");
        assert_eq!(s.ack_interval, Duration::from_millis(20));
        assert_eq!(s.store.backend, SessionBackend::Redis);
        assert_eq!(s.store.redis.url, "rediss://cache:6380");
        assert_eq!(s.store.redis.operation_timeout, Duration::from_millis(100));
        assert_eq!(s.store.redis.key_prefix, "chat:session:");
        let dev = StabilityConfig::development().session;
        assert_eq!(
            s.max_sessions, dev.max_sessions,
            "base kept where nothing overrides"
        );
        assert_eq!(s.max_total_bytes, dev.max_total_bytes);
        Ok(())
    });
}

#[test]
fn session_fields_are_checked_by_name_and_by_rule() {
    let err = StabilityConfig::from_toml_str("[session.store.redis]\non_error = \"fail_open\"\n")
        .unwrap_err();
    assert_eq!(parse_paths(&err), ["session.store.redis.on_error"]);
    let err =
        StabilityConfig::from_toml_str("[session]\nttl = \"0s\"\nmax_sessions = 0\n").unwrap_err();
    let LoadError::Invalid(v) = &err else {
        panic!("expected Invalid, got {err}")
    };
    assert!(v.has("session.ttl") && v.has("session.max_sessions"), "{v}");
}

#[test]
fn from_file_reads_json_by_extension_and_the_environment() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "wsguard.json",
            r#"{"dedup": {"ttl": "90s"}, "retry": {"max_attempts": 5}}"#,
        )?;
        jail.set_env("WSGUARD_RETRY__MAX_ATTEMPTS", "7");
        let config = StabilityConfig::from_file("wsguard.json").map_err(|e| e.to_string())?;
        assert_eq!(config.dedup.ttl, Duration::from_secs(90));
        assert_eq!(config.retry.max_attempts, 7);
        Ok(())
    });
}

#[test]
fn env_without_a_path_separator_is_not_configuration() {
    Jail::expect_with(|jail| {
        jail.set_env("WSGUARD_ADDR", "127.0.0.1:9000");
        jail.set_env("WSGUARD_LOG", "debug");
        assert_eq!(
            StabilityConfig::from_env().map_err(|e| e.to_string())?,
            StabilityConfig::default()
        );
        Ok(())
    });
}

#[test]
fn unknown_env_field_names_its_path() {
    Jail::expect_with(|jail| {
        jail.set_env("WSGUARD_DEDUP__TLL", "5s");
        let err = StabilityConfig::from_env().unwrap_err();
        assert_eq!(parse_paths(&err), ["dedup.tll"]);
        Ok(())
    });
}

#[test]
fn invalid_env_value_is_refused_by_validation() {
    Jail::expect_with(|jail| {
        jail.set_env("WSGUARD_METRICS__SAMPLE_RATE", "3");
        let err = StabilityConfig::from_env().unwrap_err();
        assert!(
            err.field_errors()
                .iter()
                .any(|e| e.path == "metrics.sample_rate"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn old_and_new_name_together_are_refused() {
    let err =
        StabilityConfig::from_toml_str("[dedup]\nttl = \"1m\"\nttl_seconds = 60\n").unwrap_err();
    assert_eq!(parse_paths(&err), ["dedup.ttl_seconds"]);
    assert!(err.to_string().contains("keep one"), "{err}");
}

fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            keys(v, &path, out);
            out.push(path);
        }
    }
}

#[test]
fn annotated_example_file_shows_every_field_with_its_default() {
    let text = include_str!("../../../examples/wsguard.toml");
    assert_eq!(
        StabilityConfig::from_toml_str(text).unwrap(),
        StabilityConfig::default()
    );

    let mut shown = Vec::new();
    keys(
        &toml::Value::Table(toml::from_str(text).unwrap()),
        "",
        &mut shown,
    );
    let mut all = Vec::new();
    let defaults = toml::Value::try_from(StabilityConfig::default()).unwrap();
    keys(&defaults, "", &mut all);
    let missing: Vec<_> = all.iter().filter(|k| !shown.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "examples/wsguard.toml lacks {missing:?}"
    );
    assert!(
        text.contains("# fingerprint_key = "),
        "the optional key is shown commented out"
    );
}
