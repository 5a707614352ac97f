//! Reading the PIN that locks a device store. Never from the command line
//! (argv is visible to every user of the machine in `ps`), in this order:
//!
//! 1. `--pin-stdin`: the first line of standard input (scripts, pipes);
//! 2. the `WARD_PIN` environment variable, when set (tests, automation);
//! 3. the terminal, without echo, when standard input is one.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use ward_sdk::store::Pin;
use zeroize::Zeroizing;

use crate::CliError;

/// Where the PIN comes from.
#[derive(Debug, Clone, Copy)]
pub struct PinSource {
    /// `--pin-stdin` was given.
    pub stdin: bool,
}

impl PinSource {
    /// Reads the PIN. `confirm` asks twice at a terminal (a new store).
    pub fn read(self, prompt: &str, confirm: bool) -> Result<Pin, CliError> {
        let text = if self.stdin {
            read_line_stdin()?
        } else if let Some(env) = std::env::var_os("WARD_PIN") {
            Zeroizing::new(
                env.into_string()
                    .map_err(|_| CliError::Msg("WARD_PIN is not valid UTF-8".into()))?,
            )
        } else if std::io::stdin().is_terminal() {
            let first = prompt_hidden(prompt)?;
            if confirm {
                let again = prompt_hidden("Repeat the PIN: ")?;
                if *again != *first {
                    return Err(CliError::Msg(
                        "the two PINs differ; nothing was created, run the command again".into(),
                    ));
                }
            }
            first
        } else {
            return Err(CliError::Msg(
                "no PIN: standard input is not a terminal. Set WARD_PIN, or pass --pin-stdin \
                 and write the PIN on standard input (never on the command line)"
                    .into(),
            ));
        };
        Pin::new(String::clone(&text)).map_err(|e| CliError::Msg(format!("PIN refused: {e}")))
    }
}

fn read_line_stdin() -> Result<Zeroizing<String>, CliError> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(crate::io("cannot read the PIN from standard input"))?;
    let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    if trimmed.is_empty() {
        return Err(CliError::Msg(
            "--pin-stdin: standard input held no PIN (write it as the first line)".into(),
        ));
    }
    Ok(trimmed)
}

/// Prompts on standard error and reads one line from the terminal with
/// echo off; echo is restored before returning.
#[cfg(unix)]
fn prompt_hidden(prompt: &str) -> Result<Zeroizing<String>, CliError> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)
        .map_err(|e| CliError::Io("cannot read the terminal settings".into(), e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)
        .map_err(|e| CliError::Io("cannot turn the terminal echo off".into(), e.into()))?;
    let result = read_line_stdin();
    let restored = tcsetattr(&stdin, OptionalActions::Flush, &saved);
    let line = result?;
    restored.map_err(|e| CliError::Io("cannot restore the terminal echo".into(), e.into()))?;
    Ok(line)
}

#[cfg(not(unix))]
fn prompt_hidden(_prompt: &str) -> Result<Zeroizing<String>, CliError> {
    Err(CliError::Msg(
        "reading a PIN without echo is not supported on this platform: set WARD_PIN or use \
         --pin-stdin"
            .into(),
    ))
}
