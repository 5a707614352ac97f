//! The organisation root on the admin's disk: `ward admin init` seals a new
//! root under a passphrase (`ward_core::root_store`, SECURITY.md §10.7.1),
//! `ward admin encrypt-root` seals `ward up`'s plain dev key, and `invite` /
//! `revoke` unlock it for one signature.
//!
//! The passphrase is never an argument (argv is visible to every user of the
//! machine in `ps`); as for PINs (`pin.rs`), in this order:
//!
//! 1. `--passphrase-stdin`: the first line of standard input;
//! 2. `WARD_ROOT_PASSPHRASE`, when set (automation);
//! 3. the terminal, without echo, when standard input is one.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use ward_core::keys::{OrgRootKey, SigningPublicKey};
use ward_core::root_store::{self, KdfParams, Passphrase, RootStoreError};
use zeroize::Zeroizing;

use crate::{CliError, ROOT_KEY_FILE, hex, io};

/// The encrypted root's default file name, in `--data`.
pub const ROOT_FILE: &str = "org-root.enc";
/// The environment variable the passphrase may come from.
pub const PASSPHRASE_ENV: &str = "WARD_ROOT_PASSPHRASE";

/// Where the root is and how its passphrase is read (flattened into the
/// admin commands that sign).
#[derive(clap::Args, Debug, Clone)]
pub struct RootArgs {
    /// The encrypted organisation root. Default: <data>/org-root.enc.
    #[arg(long, env = "WARD_ROOT_FILE")]
    pub root_file: Option<PathBuf>,
    /// Read the root passphrase from the first line of standard input (else
    /// WARD_ROOT_PASSPHRASE, else the terminal, without echo). Never pass it
    /// as an argument.
    #[arg(long)]
    pub passphrase_stdin: bool,
}

impl RootArgs {
    /// The encrypted root's path.
    pub fn path(&self, data: &Path) -> PathBuf {
        self.root_file
            .clone()
            .unwrap_or_else(|| data.join(ROOT_FILE))
    }

    fn read_passphrase(&self, prompt: &str, confirm: bool) -> Result<Zeroizing<String>, CliError> {
        if self.passphrase_stdin {
            return read_line_stdin().and_then(|l| {
                l.ok_or_else(|| {
                    CliError::Msg(
                        "--passphrase-stdin: standard input held no passphrase (write it as the \
                         first line)"
                            .into(),
                    )
                })
            });
        }
        if let Some(env) = std::env::var_os(PASSPHRASE_ENV) {
            return env
                .into_string()
                .map(Zeroizing::new)
                .map_err(|_| CliError::Msg(format!("{PASSPHRASE_ENV} is not valid UTF-8")));
        }
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Msg(format!(
                "no root passphrase: standard input is not a terminal. Set {PASSPHRASE_ENV}, or \
                 pass --passphrase-stdin and write it on standard input (never on the command \
                 line)"
            )));
        }
        let first = prompt_hidden(prompt)?;
        if confirm {
            let again = prompt_hidden("Repeat the passphrase: ")?;
            if *again != *first {
                return Err(CliError::Msg(
                    "the two passphrases differ; nothing was written, run the command again".into(),
                ));
            }
        }
        Ok(first)
    }
}

/// The organisation's root, unlocked for signing: the encrypted file if it
/// exists, else `ward up`'s plain dev key (said on standard error).
pub fn unlock(data: &Path, args: &RootArgs) -> Result<OrgRootKey, CliError> {
    let path = args.path(data);
    match std::fs::read(&path) {
        Ok(bytes) => {
            // Header first: a file that is not a root file fails before the prompt.
            root_store::read_header(&bytes).map_err(|e| CliError::RootFile(path.clone(), e))?;
            let text = args.read_passphrase(
                &format!("Passphrase of the organisation root {}: ", path.display()),
                false,
            )?;
            root_store::open(&bytes, &Passphrase::unchecked(text))
                .map_err(|e| CliError::RootFile(path, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.root_file.is_none() => {
            let root = crate::load_root(data).map_err(|e| match e {
                CliError::NoOrganisation(_) => CliError::Msg(format!(
                    "no organisation root in {}: run `ward up` first (a dev organisation), or \
                     create a real one with `ward admin init` (root sealed under a passphrase), \
                     or pass --root-file",
                    data.display()
                )),
                e => e,
            })?;
            eprintln!(
                "note: signing with the plain dev root key in {} (dev only; `ward admin \
                 encrypt-root` seals it under a passphrase).",
                data.join(ROOT_KEY_FILE).display()
            );
            Ok(root)
        }
        Err(e) => Err(CliError::Io(path.display().to_string(), e)),
    }
}

/// The root public key from the encrypted file's header (no passphrase):
/// what `ward up` pins when the organisation was made by `ward admin init`.
pub fn public_key(data: &Path) -> Result<Option<SigningPublicKey>, CliError> {
    let path = data.join(ROOT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => root_store::read_header(&bytes)
            .map(|h| Some(h.public_key))
            .map_err(|e| CliError::RootFile(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::Io(path.display().to_string(), e)),
    }
}

/// Seals `root` under a new passphrase (asked twice at a terminal) into a
/// new file at `path`, owner-only, fsynced; then reopens it to prove the
/// passphrase and the file before anything else is changed.
fn write_sealed(path: &Path, root: &OrgRootKey, args: &RootArgs) -> Result<(), CliError> {
    if path.exists() {
        return Err(CliError::Msg(format!(
            "{} already exists: nothing was changed",
            path.display()
        )));
    }
    let text = args.read_passphrase(
        "New passphrase for the organisation root (at least 12 characters): ",
        true,
    )?;
    let passphrase = Passphrase::new(text).map_err(|e| CliError::Msg(e.to_string()))?;
    let file = root_store::seal(&mut rand::rng(), root, &passphrase, KdfParams::DEFAULT)
        .map_err(|e| CliError::RootFile(path.to_owned(), e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir.display().to_string()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(path)?;
        f.write_all(&file)?;
        f.sync_all()
    };
    write().map_err(io(format!("cannot write {}", path.display())))?;
    let back = std::fs::read(path).map_err(io(path.display().to_string()))?;
    root_store::open(&back, &passphrase).map_err(|e| CliError::RootFile(path.to_owned(), e))?;
    Ok(())
}

/// `ward admin init`: a new organisation root, sealed under a passphrase.
pub fn init(data: &Path, args: &RootArgs) -> Result<(), CliError> {
    let path = args.path(data);
    if let Ok(bytes) = std::fs::read(&path) {
        let header =
            root_store::read_header(&bytes).map_err(|e| CliError::RootFile(path.clone(), e))?;
        crate::write_org_public(data, &header.public_key)?;
        println!(
            "The organisation root in {} already exists.",
            path.display()
        );
        println!("  org root   {}", hex(header.public_key.as_bytes()));
        return Ok(());
    }
    if data.join(ROOT_KEY_FILE).exists() {
        return Err(CliError::Msg(format!(
            "{} holds a plain dev root key: seal it with `ward admin encrypt-root` instead \
             (a second root would be another organisation)",
            data.join(ROOT_KEY_FILE).display()
        )));
    }
    std::fs::create_dir_all(data).map_err(io(data.display().to_string()))?;
    let root = OrgRootKey::generate(&mut rand::rng());
    write_sealed(&path, &root, args)?;
    let public = root.public_key();
    drop(root);
    crate::write_org_public(data, &public)?;
    println!(
        "Created the organisation root in {}, encrypted under your passphrase (Argon2id, \
         XChaCha20-Poly1305).",
        path.display()
    );
    println!("  org root   {}", hex(public.as_bytes()));
    println!(
        "Keep that file and its passphrase offline (a backup of each, apart). Servers and \
         devices need only the public key, in {}.",
        data.join(crate::ROOT_PUB_FILE).display()
    );
    println!(
        "Next: `{} admin invite --user-id dr.martin --name \"Dr Claire Martin\" --out \
         martin.invite`.",
        crate::ward_cmd()
    );
    Ok(())
}

/// `ward admin encrypt-root`: seals `ward up`'s plain dev key, then
/// overwrites and deletes the plain file.
pub fn encrypt_root(data: &Path, args: &RootArgs) -> Result<(), CliError> {
    let plain = data.join(ROOT_KEY_FILE);
    let root = crate::load_root(data).map_err(|e| match e {
        CliError::NoOrganisation(_) => CliError::Msg(format!(
            "no plain root key at {}: nothing to encrypt",
            plain.display()
        )),
        e => e,
    })?;
    let path = args.path(data);
    write_sealed(&path, &root, args)?;
    crate::write_org_public(data, &root.public_key())?;
    // The sealed copy opened with this passphrase: only now drop the clear one.
    // Overwriting first is best effort (SSDs and copy-on-write filesystems
    // may keep the old blocks; SECURITY.md §10.7.1).
    let wipe = || -> std::io::Result<()> {
        let len = std::fs::metadata(&plain)?.len();
        let mut f = std::fs::OpenOptions::new().write(true).open(&plain)?;
        f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])?;
        f.sync_all()?;
        drop(f);
        std::fs::remove_file(&plain)
    };
    wipe().map_err(io(format!(
        "sealed into {}, but could not delete {}: delete it yourself",
        path.display(),
        plain.display()
    )))?;
    println!(
        "Sealed the organisation root {} into {} under your passphrase, and deleted {}.",
        hex(root.public_key().as_bytes()),
        path.display(),
        plain.display()
    );
    println!(
        "`ward up` keeps working (it needs only the public key); `ward admin invite` and \
         `revoke` now ask for the passphrase."
    );
    Ok(())
}

/// One line of standard input without its line ending; `None` if empty.
fn read_line_stdin() -> Result<Option<Zeroizing<String>>, CliError> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(io("cannot read the passphrase from standard input"))?;
    let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    Ok((!trimmed.is_empty()).then_some(trimmed))
}

/// Turns echo off, then prompts on standard error and reads one line (so a
/// prompt on screen means echo is already off); echo is restored before
/// returning.
#[cfg(unix)]
fn prompt_hidden(prompt: &str) -> Result<Zeroizing<String>, CliError> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)
        .map_err(|e| CliError::Io("cannot read the terminal settings".into(), e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)
        .map_err(|e| CliError::Io("cannot turn the terminal echo off".into(), e.into()))?;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let result = read_line_stdin().and_then(|l| {
        l.ok_or_else(|| CliError::Msg("no passphrase typed: nothing was done".into()))
    });
    let restored = tcsetattr(&stdin, OptionalActions::Flush, &saved);
    let line = result?;
    restored.map_err(|e| CliError::Io("cannot restore the terminal echo".into(), e.into()))?;
    Ok(line)
}

#[cfg(not(unix))]
fn prompt_hidden(_prompt: &str) -> Result<Zeroizing<String>, CliError> {
    Err(CliError::Msg(format!(
        "reading a passphrase without echo is not supported on this platform: set \
         {PASSPHRASE_ENV} or use --passphrase-stdin"
    )))
}

/// The message for a root file that would not open.
pub fn explain(path: &Path, e: &RootStoreError) -> String {
    match e {
        RootStoreError::WrongPassphrase => format!(
            "wrong passphrase for the organisation root in {} (or the file was altered); \
             nothing was signed",
            path.display()
        ),
        e => format!("{}: {e}", path.display()),
    }
}
