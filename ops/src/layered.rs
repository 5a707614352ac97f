//! One configuration from three sources, in this order of precedence:
//! command-line flags, then environment variables, then a TOML file, then
//! the built-in defaults.
//!
//! The binaries keep declaring their settings once, as clap arguments. This
//! module then (1) gives every argument without one an environment variable
//! `<PREFIX>_<NAME>`, (2) adds `--config FILE` (`<PREFIX>_CONFIG`), (3) turns
//! each key of that file into the argument's default, so that the
//! environment and flags still win, exactly as clap orders them, and (4)
//! writes the effective configuration back as TOML (`print-config`), each
//! key with its help, its variable and where its value came from.
//!
//! File keys are the flags' long names (`max-connections = 500`); an unknown
//! key is an error, not a silent typo.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The id of the `--config` argument this module adds.
pub const CONFIG_ARG: &str = "config";

/// Why the configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The file could not be read.
    #[error("cannot read the configuration file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not TOML.
    #[error("{0}: not valid TOML: {1}")]
    Toml(PathBuf, String),
    /// A key names no setting.
    #[error("{0}: unknown setting {1:?} (see `--help` or `print-config` for the names)")]
    UnknownKey(PathBuf, String),
    /// A value of a kind no flag takes (a table, a date).
    #[error("{0}: setting {1:?} must be a string, a number or a boolean")]
    BadValue(PathBuf, String),
    /// clap refused the result (also `--help` and `--version`: print and exit).
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

fn skipped(id: &str) -> bool {
    matches!(id, "help" | "version" | "print_config" | CONFIG_ARG)
}

/// Adds `--config` and the environment variables to `cmd`.
pub fn prepare(cmd: Command, env_prefix: &str) -> Command {
    let prefix = env_prefix.to_owned();
    cmd.arg(
        clap::Arg::new(CONFIG_ARG)
            .long(CONFIG_ARG)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .env(format!("{prefix}_CONFIG"))
            .help(
                "TOML file of settings (keys: the long flag names); the environment and flags \
                 override it",
            ),
    )
    .mut_args(move |a| {
        let id = a.get_id().as_str().to_owned();
        if skipped(&id) || a.get_env().is_some() || a.is_positional() {
            return a;
        }
        a.env(format!(
            "{prefix}_{}",
            id.to_ascii_uppercase().replace('-', "_")
        ))
    })
}

/// The `--config` path from the environment or the command line, found
/// before full parsing (the file's values are needed to parse).
fn config_path(args: &[OsString], env_prefix: &str) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
        if s == "--" {
            break;
        }
    }
    std::env::var_os(format!("{env_prefix}_CONFIG")).map(PathBuf::from)
}

/// Makes each key of the TOML file the default of its argument.
pub fn apply_file(mut cmd: Command, path: &Path) -> Result<Command, LayerError> {
    let text = std::fs::read_to_string(path).map_err(|e| LayerError::Read(path.to_owned(), e))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| LayerError::Toml(path.to_owned(), e.to_string()))?;
    for (key, value) in table {
        let id = cmd
            .get_arguments()
            .find(|a| {
                !skipped(a.get_id().as_str())
                    && (a.get_long() == Some(key.as_str())
                        || a.get_id().as_str() == key.replace('-', "_"))
            })
            .map(|a| a.get_id().as_str().to_owned())
            .ok_or_else(|| LayerError::UnknownKey(path.to_owned(), key.clone()))?;
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                let mut parts = Vec::new();
                for v in items {
                    match v {
                        toml::Value::String(s) => parts.push(s),
                        toml::Value::Integer(i) => parts.push(i.to_string()),
                        _ => return Err(LayerError::BadValue(path.to_owned(), key)),
                    }
                }
                parts.join(",")
            }
            _ => return Err(LayerError::BadValue(path.to_owned(), key)),
        };
        cmd = cmd.mut_arg(id, |a| a.default_value(text).required(false));
    }
    Ok(cmd)
}

/// Parses `args` through all layers: the matches, and the file used.
pub fn parse(
    cmd: Command,
    env_prefix: &str,
    args: impl IntoIterator<Item = impl Into<OsString>>,
) -> Result<(ArgMatches, Option<PathBuf>), LayerError> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = prepare(cmd, env_prefix);
    let file = config_path(&args, env_prefix);
    if let Some(path) = &file {
        cmd = apply_file(cmd, path)?;
    }
    Ok((cmd.try_get_matches_from(args)?, file))
}

/// [`parse`] for the settings of one subcommand (`ward up`): `--config`,
/// the variables and the file apply to `sub`'s arguments.
pub fn parse_sub(
    cmd: Command,
    sub: &str,
    env_prefix: &str,
    args: impl IntoIterator<Item = impl Into<OsString>>,
) -> Result<(ArgMatches, Option<PathBuf>), LayerError> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let Some(found) = cmd.find_subcommand(sub).cloned() else {
        return Ok((cmd.try_get_matches_from(args)?, None));
    };
    let mut prepared = prepare(found, env_prefix);
    // Only when the subcommand is the one run: another's --config is its own.
    let runs_sub = args.iter().skip(1).any(|a| a == sub);
    let file = if runs_sub {
        config_path(&args, env_prefix)
    } else {
        None
    };
    if let Some(path) = &file {
        prepared = apply_file(prepared, path)?;
    }
    let cmd = cmd.mut_subcommand(sub, |_| prepared);
    Ok((cmd.try_get_matches_from(args)?, file))
}

/// [`parse`] into a clap-derived type; on a clap error (including `--help`)
/// it prints and exits as clap does.
pub fn parse_into<A: clap::Parser>(env_prefix: &str) -> Result<(A, ArgMatches), LayerError> {
    let (matches, _) = match parse(A::command(), env_prefix, std::env::args_os()) {
        Err(LayerError::Clap(e)) => e.exit(),
        other => other?,
    };
    let a = match A::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    Ok((a, matches))
}

fn toml_value(raw: &str) -> String {
    if raw.parse::<i64>().is_ok() || raw == "true" || raw == "false" {
        return raw.to_owned();
    }
    if raw.parse::<f64>().is_ok_and(f64::is_finite) && !raw.contains(['x', 'X', 'e', 'E']) {
        return raw.to_owned();
    }
    toml::Value::String(raw.to_owned()).to_string()
}

/// The effective configuration as a TOML file `--config` reads back: every
/// top-level setting of `cmd` with its value, its help and its source.
/// Settings with no value are written commented out.
pub fn render(cmd: &Command, matches: &ArgMatches, env_prefix: &str) -> String {
    let cmd = prepare(cmd.clone(), env_prefix);
    let mut out = String::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if skipped(id) || arg.is_positional() {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        if let Some(help) = arg.get_help() {
            out.push_str(&format!("# {help}\n"));
        }
        let env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default or file",
            _ => "unset",
        };
        out.push_str(&format!("# env {env}; from: {source}\n"));
        let raw: Option<Vec<String>> = matches.get_raw(id).map(|vals| {
            vals.map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        });
        let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        match raw {
            Some(v) if !v.is_empty() => {
                let value = if flag {
                    matches.get_flag(id).to_string()
                } else if v.len() == 1 {
                    toml_value(&v[0])
                } else {
                    format!(
                        "[{}]",
                        v.iter()
                            .map(|s| toml_value(s))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                out.push_str(&format!("{long} = {value}\n\n"));
            }
            _ => out.push_str(&format!("# {long} =\n\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::{Arg, value_parser};

    fn cmd() -> Command {
        Command::new("t")
            .arg(
                Arg::new("max_connections")
                    .long("max-connections")
                    .value_parser(value_parser!(u32))
                    .default_value("100")
                    .help("Most connections."),
            )
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .default_value("127.0.0.1:1"),
            )
            .arg(Arg::new("org_root").long("org-root").required(true))
            .arg(
                Arg::new("insecure_loopback")
                    .long("insecure-loopback")
                    .action(ArgAction::SetTrue),
            )
    }

    #[test]
    fn flags_beat_environment_beats_file_beats_defaults_and_print_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "max-connections = 7\nlisten = \"0.0.0.0:9\"\norg-root = \"ab\"\ninsecure-loopback = true\n",
        )
        .unwrap();
        let prefix = "WARD_LAYERED_TEST";
        let f = file.to_str().unwrap();
        // File over defaults; a required setting may come from the file.
        let (m, used) = parse(cmd(), prefix, ["t", "--config", f]).unwrap();
        assert_eq!(used.as_deref(), Some(file.as_path()));
        assert_eq!(*m.get_one::<u32>("max_connections").unwrap(), 7);
        assert_eq!(m.get_one::<String>("listen").unwrap(), "0.0.0.0:9");
        assert!(m.get_flag("insecure_loopback"));
        // The environment over the file: PATH stands in for the variable
        // (setting one is `unsafe` in edition 2024).
        let with_env = cmd().mut_arg("listen", |a| a.env("PATH"));
        let (m, _) = parse(with_env, prefix, ["t", "--config", f]).unwrap();
        assert_eq!(
            m.get_one::<String>("listen").unwrap(),
            &std::env::var("PATH").unwrap()
        );
        // Flags over everything.
        let (m, _) = parse(
            cmd(),
            prefix,
            ["t", "--config", f, "--max-connections", "3"],
        )
        .unwrap();
        assert_eq!(*m.get_one::<u32>("max_connections").unwrap(), 3);

        // print-config's output is a file that gives the same result.
        let printed = render(&cmd(), &m, prefix);
        assert!(printed.contains("max-connections = 3\n"), "{printed}");
        assert!(printed.contains(
            "# Most connections.\n# env WARD_LAYERED_TEST_MAX_CONNECTIONS; from: flag\n"
        ));
        assert!(printed.contains("listen = \"0.0.0.0:9\"\n"));
        let again = dir.path().join("again.toml");
        std::fs::write(&again, &printed).unwrap();
        let (m2, _) = parse(cmd(), prefix, ["t", "--config", again.to_str().unwrap()]).unwrap();
        assert_eq!(*m2.get_one::<u32>("max_connections").unwrap(), 3);
        assert!(m2.get_flag("insecure_loopback"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "max-conections = 7\n").unwrap();
        let err = parse(cmd(), "X", ["t", "--config", file.to_str().unwrap()]).unwrap_err();
        assert!(matches!(err, LayerError::UnknownKey(_, k) if k == "max-conections"));
        std::fs::write(&file, "max-connections = \"many\"\norg-root = \"x\"\n").unwrap();
        assert!(matches!(
            parse(cmd(), "X", ["t", "--config", file.to_str().unwrap()]),
            Err(LayerError::Clap(_))
        ));
        std::fs::write(&file, "[table]\n").unwrap();
        assert!(parse(cmd(), "X", ["t", "--config", file.to_str().unwrap()]).is_err());
    }
}
