//! Checks a wsguard configuration file, or prints a preset.
//!
//! ```text
//! cargo run --example config -- check examples/wsguard.toml   # "ok", or every error with its field path
//! cargo run --example config -- preset development            # that preset as TOML
//! ```
//!
//! `check` applies the `WSGUARD_<SECTION>__<FIELD>` environment overrides too, as a server would,
//! and exits with status 1 when the configuration is refused.

use std::io::Write;
use std::process::ExitCode;

use wsguard_config::{ConfigLoader, LoadError, Preset};

const USAGE: &str = "usage: config check FILE | config preset production|development|testing";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    ExitCode::from(run(&args, &mut out, &mut err))
}

fn run(args: &[String], out: &mut impl Write, err: &mut impl Write) -> u8 {
    let result = match args {
        [cmd, file] if cmd == "check" => check(file, out),
        [cmd, name] if cmd == "preset" => preset(name, out, err),
        _ => writeln!(err, "{USAGE}").map(|()| 2),
    };
    result.unwrap_or(1)
}

fn check(file: &str, out: &mut impl Write) -> std::io::Result<u8> {
    match ConfigLoader::new().file(file).load() {
        Ok(_) => writeln!(out, "ok").map(|()| 0),
        Err(LoadError::Io { path, source }) => {
            writeln!(out, "{}: cannot read: {source}", path.display()).map(|()| 1)
        }
        Err(e) => {
            for problem in e.field_errors() {
                writeln!(out, "{problem}")?;
            }
            Ok(1)
        }
    }
}

fn preset(name: &str, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<u8> {
    match Preset::from_name(name) {
        Some(preset) => match preset.config().to_toml_string() {
            Ok(text) => write!(out, "{text}").map(|()| 0),
            Err(e) => writeln!(err, "{e}").map(|()| 1),
        },
        None => writeln!(err, "unknown preset {name:?}\n{USAGE}").map(|()| 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(args: &[&str]) -> (u8, String, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(&args, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn check_accepts_the_annotated_file() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/wsguard.toml");
        assert_eq!(
            run_with(&["check", file]),
            (0, "ok\n".into(), String::new())
        );
    }

    #[test]
    fn check_lists_every_error_with_its_path_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            "[dedup]\nttl = \"0s\"\n[metrics]\nsample_rate = 2.0\n",
        )
        .unwrap();
        let (code, out, _) = run_with(&["check", file.to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(
            out.contains("metrics.sample_rate: must be between 0.0 and 1.0"),
            "{out}"
        );
        assert!(out.contains("dedup.ttl: must be > 0"), "{out}");
    }

    #[test]
    fn check_names_an_unknown_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("typo.toml");
        std::fs::write(&file, "[connection]\nmax_conections = 5\n").unwrap();
        let (code, out, _) = run_with(&["check", file.to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(
            out.starts_with("connection.max_conections: unknown field"),
            "{out}"
        );
    }

    #[test]
    fn preset_prints_loadable_toml() {
        let (code, out, _) = run_with(&["preset", "testing"]);
        assert_eq!(code, 0);
        assert_eq!(
            wsguard_config::StabilityConfig::from_toml_str(&out).unwrap(),
            wsguard_config::StabilityConfig::testing()
        );
    }

    #[test]
    fn bad_usage_exits_2() {
        assert_eq!(run_with(&["preset", "staging"]).0, 2);
        assert_eq!(run_with(&["frobnicate"]).0, 2);
    }
}
