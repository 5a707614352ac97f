//! `ward send --file` and `ward download`: attachments (SECURITY.md §16)
//! with a progress line on standard error (bytes, rate, time left; redrawn
//! in place on a terminal, a plain line every 10% otherwise).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ward_sdk::store::Message;
use ward_sdk::{AttachmentInfo, Client, ClientError, Event, Phase, Progress};

use crate::CliError;
use crate::device::{DeviceArgs, clean, explain, short};
use crate::history::{Selection, select};

/// `[attachment name, type, size(, thumbnail); ward download <id>]`.
pub fn attachment_line(m: &Message, a: &AttachmentInfo) -> String {
    let thumb = match &a.thumbnail {
        Some(t) => format!(", {} thumbnail", clean(&t.media_type)),
        None => String::new(),
    };
    format!(
        "[attachment {}, {}, {}{thumb}; {} download {}]",
        clean(&a.file_name),
        clean(&a.media_type),
        size(a.size),
        crate::ward_cmd(),
        short(m.resource_id.as_bytes())
    )
}

/// `12.3 MiB`.
fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The progress line of one transfer.
struct Bar {
    tty: bool,
    phase: Option<Phase>,
    started: Instant,
    drawn: Instant,
    tenth: u64,
}

impl Bar {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            tty: std::io::stderr().is_terminal(),
            phase: None,
            started: now,
            drawn: now,
            tenth: 0,
        }
    }

    fn update(&mut self, p: Progress) {
        if self.phase != Some(p.phase) {
            if self.phase.is_some() && self.tty {
                eprintln!();
            }
            self.phase = Some(p.phase);
            self.started = Instant::now();
            self.tenth = 0;
        }
        let label = match p.phase {
            Phase::Encrypting => "encrypting ",
            Phase::Uploading => "uploading  ",
            Phase::Downloading => "downloading",
            _ => "working    ",
        };
        let total = p.total.max(1);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = p.done as f64 / secs;
        let left = if rate > 0.0 {
            format!("{:.0}s left", (total.saturating_sub(p.done)) as f64 / rate)
        } else {
            "-".into()
        };
        let line = format!(
            "{label} {:>3}%  {} / {}  {}/s  {left}",
            p.done.saturating_mul(100) / total,
            size(p.done),
            size(p.total),
            size(rate as u64)
        );
        let mut err = std::io::stderr();
        if self.tty {
            if p.done < p.total && self.drawn.elapsed() < Duration::from_millis(100) {
                return;
            }
            self.drawn = Instant::now();
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        } else {
            let tenth = p.done.saturating_mul(10) / total;
            if tenth > self.tenth || (p.done == 0 && self.tenth == 0 && tenth == 0) {
                self.tenth = tenth.max(1);
                let _ = writeln!(err, "{line}");
            }
        }
    }

    fn done(&self) {
        if self.tty && self.phase.is_some() {
            eprintln!();
        }
    }
}

/// A media type from the file name's extension; the receiver sniffs the
/// content anyway (SECURITY.md §16.5).
fn guess_media_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("pdf") => "application/pdf",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("heic") => "image/heic",
        Some("gif") => "image/gif",
        Some("txt") => "text/plain",
        Some("dcm") => "application/dicom",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

/// What `ward send --file` needs.
pub struct SendFile {
    /// `--to`: the conversation with exactly these users.
    pub to: Vec<String>,
    /// `--conversation`: an existing conversation (id or prefix).
    pub conversation: Option<String>,
    /// `--room`: a room (id or prefix).
    pub room: Option<String>,
    /// `--thumbnail`: an image file sent inline as the preview.
    pub thumbnail: Option<PathBuf>,
    /// The file.
    pub path: PathBuf,
    /// `--media-type`, else guessed from the extension.
    pub media_type: Option<String>,
    /// How long to wait for the relay's confirmation of the message.
    pub wait: Duration,
}

/// `ward send --file`: encrypts and uploads the file, then sends its
/// message and waits until the relay stored it.
pub async fn send_file(args: DeviceArgs, me: Option<String>, f: SendFile) -> Result<(), CliError> {
    let mut client = args.unlock(me.as_deref()).await?;
    let result = send_file_inner(&args, &mut client, &f).await;
    client.lock().await;
    result
}

async fn send_file_inner(
    args: &DeviceArgs,
    client: &mut Client,
    f: &SendFile,
) -> Result<(), CliError> {
    let mut events = client
        .events()
        .ok_or_else(|| CliError::Msg("internal: no event stream".into()))?;
    let conversation = match (&f.room, &f.conversation) {
        (Some(room), _) => {
            ward_sdk::core::envelope::room_conversation_id(&crate::room::find(client, room).await?)
        }
        (None, Some(prefix)) => {
            let sel = Selection {
                conversation: Some(prefix.clone()),
                with: Vec::new(),
                limit: None,
            };
            select(client, &sel)
                .await?
                .pop()
                .ok_or_else(|| CliError::Msg("no such conversation".into()))?
        }
        (None, None) => {
            crate::device::conversation_with(args, client, &f.to)
                .await?
                .0
        }
    };
    // The preview: an image of at most 64 KiB (SECURITY.md §16.5 D9),
    // typed from its extension; checked again by the SDK before any work.
    let thumbnail = match &f.thumbnail {
        Some(p) => {
            let media = guess_media_type(p);
            if !media.starts_with("image/") {
                return Err(CliError::Msg(format!(
                    "--thumbnail {}: not an image (.jpg, .png, .heic or .gif)",
                    p.display()
                )));
            }
            let bytes = std::fs::read(p)
                .map_err(|e| CliError::Msg(format!("--thumbnail {}: {e}", p.display())))?;
            if bytes.len() > ward_sdk::core::attachment::MAX_THUMBNAIL_BYTES {
                return Err(CliError::Msg(format!(
                    "--thumbnail {}: {} bytes, at most 64 KiB",
                    p.display(),
                    bytes.len()
                )));
            }
            Some((media, zeroize::Zeroizing::new(bytes)))
        }
        None => None,
    };
    let name = f
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::Msg(format!("{}: not a file name", f.path.display())))?
        .to_owned();
    let media = f
        .media_type
        .clone()
        .unwrap_or_else(|| guess_media_type(&f.path).to_owned());
    let mut bar = Bar::new();
    let sent = match &thumbnail {
        Some((tm, tb)) => {
            client
                .send_file_with_thumbnail(conversation, &f.path, &name, &media, (tm, tb), |p| {
                    bar.update(p)
                })
                .await
        }
        None => {
            client
                .send_file(conversation, &f.path, &name, &media, |p| bar.update(p))
                .await
        }
    };
    bar.done();
    let mut rid = sent.map_err(|e| file_error(e, args))?;
    let deadline = tokio::time::Instant::now() + f.wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Sent { resource_id })) if resource_id == rid => {
                println!(
                    "Sent {} ({}, conversation {}, message {}).",
                    clean(&name),
                    media,
                    short(conversation.as_bytes()),
                    short(rid.as_bytes())
                );
                return Ok(());
            }
            Ok(Some(Event::Resealed { old, new })) if old == rid => rid = new,
            Ok(Some(Event::SendFailed {
                resource_id,
                reason,
            })) if resource_id == rid => {
                return Err(CliError::Msg(format!("the message was refused: {reason}")));
            }
            Ok(Some(other)) => crate::device::print_event(&other),
            Ok(None) => return Err(CliError::Msg("the client stopped".into())),
            Err(_) => {
                return Err(CliError::Msg(format!(
                    "the file is uploaded but its message was not confirmed within {}s; it stays \
                     queued and goes out the next time `{} send` or `{} listen` runs",
                    f.wait.as_secs(),
                    crate::ward_cmd(),
                    crate::ward_cmd()
                )));
            }
        }
    }
}

/// Attachment failures in the words a clinician can act on.
fn file_error(e: ClientError, args: &DeviceArgs) -> CliError {
    use ward_proto::v1::ErrorCode as C;
    match &e {
        ClientError::Relay {
            code: C::QuotaExceeded,
            ..
        } => CliError::Msg(
            "the relay's attachment quota for your account is full: files you sent are deleted \
             once every recipient downloaded them; try again later"
                .into(),
        ),
        ClientError::Relay {
            code: C::TooLarge, ..
        } => CliError::Msg("the file is larger than the relay accepts".into()),
        ClientError::Relay {
            code: C::BlobRefused,
            ..
        } => CliError::Msg(
            "the relay does not hold this attachment for this device (not a recipient, or \
             already deleted after its retention period)"
                .into(),
        ),
        ClientError::Attachment(a) => CliError::Msg(format!(
            "the attachment was refused and nothing of it was kept: {a} (a relay or sender \
             serving altered data)"
        )),
        ClientError::File(io) => CliError::Msg(format!("file: {io}")),
        _ => explain(e, args),
    }
}

/// `ward download <message id> [--out dir]`.
pub async fn download(
    args: DeviceArgs,
    me: Option<String>,
    message_id: String,
    out_dir: PathBuf,
) -> Result<(), CliError> {
    let client = args.unlock(me.as_deref()).await?;
    let result = download_inner(&args, &client, &message_id, &out_dir).await;
    client.lock().await;
    result
}

async fn download_inner(
    args: &DeviceArgs,
    client: &Client,
    message_id: &str,
    out_dir: &Path,
) -> Result<(), CliError> {
    let prefix = message_id.trim().to_ascii_lowercase();
    let mut found = Vec::new();
    for c in client.conversations().await.map_err(|e| explain(e, args))? {
        for m in client.history(c.id).await.map_err(|e| explain(e, args))? {
            if crate::hex(m.resource_id.as_bytes()).starts_with(&prefix) && m.attachment().is_some()
            {
                found.push(m);
            }
        }
    }
    let m = match found.len() {
        1 => found.remove(0),
        0 => {
            return Err(CliError::Msg(format!(
                "no attachment message {prefix}: `{} history` lists them",
                crate::ward_cmd()
            )));
        }
        _ => {
            return Err(CliError::Msg(format!(
                "several attachments start with {prefix}: give more of the id"
            )));
        }
    };
    let info = m
        .attachment()
        .ok_or_else(|| CliError::Msg("not an attachment".into()))?;
    // The sender's name passed D8 (no separator, not . or ..): it stays in
    // the folder chosen here, and an existing file is never overwritten.
    let out = out_dir.join(&info.file_name);
    let mut bar = Bar::new();
    let r = client.download(&m, &out, |p| bar.update(p)).await;
    bar.done();
    match r {
        Ok(path) => {
            println!(
                "Saved {} ({}, {}) from {}.",
                path.display(),
                clean(&info.media_type),
                size(info.size),
                clean(&m.sender_user_id)
            );
            Ok(())
        }
        Err(ClientError::FileExists(p)) => Err(CliError::Msg(format!(
            "{} exists; not overwritten (choose another folder with --out)",
            p.display()
        ))),
        Err(e) => Err(file_error(e, args)),
    }
}
