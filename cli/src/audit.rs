//! `ward audit`: the key-transparency auditor (SECURITY.md §18.5). Anyone
//! who can reach the keyserver runs it, no account needed: over the public
//! path `/v2/kt` it follows every epoch from where it last stopped, checks
//! each one's signature (by the directory key the organisation root
//! certified), its consistency proof from the previous one, and recomputes
//! every root from the leaves served ([`ward_core::kt_audit::Audit`]). A
//! keyserver that forks its history, rewrites an old epoch, goes backwards
//! or serves leaves its roots do not commit to is reported, and the command
//! fails. What it verified is kept in a state file, so the next run checks
//! that the directory only ever grew from there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use ward_core::keys::SigningPublicKey;
use ward_core::kt_audit::{Audit, ServedLeaf};
use ward_core::transparency::{
    DirectoryCertificate, EpochView, Hash, KtError, SignedEpoch, proof_nodes,
};
use ward_net::{Conn, Limits};
use ward_proto::v1::{
    EpochProof, GetEpoch, GetLeaves, KtRequest, KtResponse, Leaves, kt_request, kt_response,
};

use crate::{CliError, hex, unhex};

/// Leaves asked for per request (the keyserver's page limit).
const PAGE: u32 = 1024;
/// The first line of a state file.
const STATE_MAGIC: &str = "ward-audit-state 1";

/// `ward audit`'s arguments.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The dev organisation's folder (`ward up`'s): its root public key, its
    /// endpoints and its dev CA.
    #[arg(long, env = "WARD_DATA", default_value = "ward-data")]
    pub data: PathBuf,
    /// The keyserver's URL (wss://; plain ws:// to loopback only). Default:
    /// the one `ward up` is serving, else wss://127.0.0.1:7071.
    #[arg(long = "keyserver", env = "WARD_KEYSERVER_URL")]
    pub keyserver_url: Option<String>,
    /// The organisation root public key (64 hex digits) the directory key
    /// must be certified by. Default: read from <data>.
    #[arg(long, env = "WARD_ORG_ROOT")]
    pub org_root: Option<String>,
    /// The CA (PEM) of the keyserver's certificate. Default: `ward up`'s dev
    /// CA when it exists, else the public web roots.
    #[arg(long, env = "WARD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// What this auditor verified so far (created on the first run).
    /// Default: <data>/audit.state.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Keep following: check the new epochs every --interval seconds until
    /// interrupted or until something fails.
    #[arg(long)]
    pub follow: bool,
    /// Seconds between two rounds with --follow.
    #[arg(long, default_value_t = 10)]
    pub interval: u64,
}

/// Runs `ward audit`.
pub async fn run(args: AuditArgs) -> Result<(), CliError> {
    let org_root = match &args.org_root {
        Some(h) => unhex(h)
            .and_then(|b| SigningPublicKey::from_bytes(&b).ok())
            .ok_or_else(|| CliError::Msg("--org-root: expected 64 hex digits".into()))?,
        None => crate::load_org_public(&args.data)?,
    };
    let url = args.keyserver_url.clone().unwrap_or_else(|| {
        crate::endpoints::read(&args.data)
            .map(|e| e.keyserver)
            .unwrap_or_else(|| "wss://127.0.0.1:7071".into())
    });
    let tls = {
        let dev = crate::dev_ca_path(&args.data);
        match &args.ca_file {
            Some(f) => ward_net::tls::ClientTls::pinned_ca_file(f),
            None if dev.exists() => ward_net::tls::ClientTls::pinned_ca_file(&dev),
            None => Ok(ward_net::tls::ClientTls::web_roots()),
        }
        .map_err(|e| CliError::Msg(format!("CA file: {e}")))?
    };
    let state_path = args
        .state
        .clone()
        .unwrap_or_else(|| args.data.join("audit.state"));
    loop {
        round(&url, &tls, &org_root, &state_path).await?;
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
    }
}

/// One round: resume, follow every epoch, save.
async fn round(
    url: &str,
    tls: &ward_net::tls::ClientTls,
    org_root: &SigningPublicKey,
    state_path: &Path,
) -> Result<(), CliError> {
    let kt_url = format!("{}/v2/kt", url.trim_end_matches('/'));
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        ward_net::tls::connect(&kt_url, &Limits::default(), tls),
    )
    .await
    .map_err(|_| CliError::Msg(format!("{kt_url}: no answer in time")))?
    .map_err(|e| CliError::Msg(format!("{kt_url}: {e}")))?;
    let mut ks = Public { conn, next_id: 1 };
    let latest = ks.epoch(0, 0).await?;
    let certificate = latest
        .certificate
        .as_ref()
        .ok_or_else(|| alert("the keyserver serves no directory key certificate"))
        .and_then(|c| DirectoryCertificate::from_proto(c).map_err(kt_alert))?;
    let saved = load_state(state_path)?;
    let mut audit = match saved {
        None => Audit::new(EpochView::new(org_root, &certificate).map_err(kt_alert)?),
        Some(saved) => {
            if saved.certificate.directory_key != certificate.directory_key {
                return Err(alert(
                    "the directory key changed since the last audit (the saved state names \
                     another one)",
                ));
            }
            let view = EpochView::resume(org_root, &saved.certificate, saved.epoch.head)
                .map_err(kt_alert)?;
            Audit::resume(view, &saved.leaves).map_err(|e| {
                CliError::Msg(format!(
                    "{}: the saved state does not hold together ({e}); move it aside to start over",
                    state_path.display()
                ))
            })?
        }
    };
    let latest = signed(&latest)?;
    let mut checked = 0u64;
    let mut last_signed = None;
    // The epoch held, asked again: an old epoch rewritten shows here.
    if let Some(held) = audit.latest().copied() {
        let again = ks.epoch(held.epoch, 0).await?;
        let again = signed(&again)?;
        audit
            .advance(&again, &[])
            .map_err(|e| kt_alert_at(e, held.epoch, "asked again, epoch"))?;
        last_signed = Some(again);
    }
    let from = audit.latest().map_or(1, |e| e.epoch + 1);
    for n in from..=latest.head.epoch {
        let known = audit.latest().map_or(0, |e| e.tree_size);
        let proof = ks.epoch(n, known).await?;
        let s = signed(&proof)?;
        while audit.leaves_held() < s.head.tree_size {
            let page = ks.leaves(audit.leaves_held()).await?;
            if page.leaves.is_empty() {
                return Err(alert(&format!(
                    "epoch {n} has {} leaves but the keyserver serves only {}",
                    s.head.tree_size,
                    audit.leaves_held()
                )));
            }
            let leaves = served(&page)?;
            audit.add_leaves(page.from, &leaves).map_err(kt_alert)?;
        }
        let consistency = proof_nodes(&proof.consistency).map_err(kt_alert)?;
        audit
            .advance(&s, &consistency)
            .map_err(|e| kt_alert_at(e, n, "epoch"))?;
        checked += 1;
        last_signed = Some(s);
    }
    let Some(last) = last_signed else {
        return Err(alert("the keyserver has published no epoch yet"));
    };
    save_state(state_path, &certificate, &last, &audit.leaf_hashes())?;
    println!(
        "ok: epoch {} ({} leaves, root {}) extends everything this auditor verified; {checked} \
         new epochs checked, every root recomputed from the leaves",
        last.head.epoch,
        last.head.tree_size,
        &hex(&last.head.root)[..16]
    );
    Ok(())
}

fn alert(what: &str) -> CliError {
    CliError::Msg(format!("ALERT: {what}"))
}

fn kt_alert(e: KtError) -> CliError {
    alert(&e.to_string())
}

fn kt_alert_at(e: KtError, epoch: u64, what: &str) -> CliError {
    alert(&format!("{what} {epoch}: {e}"))
}

fn signed(p: &EpochProof) -> Result<SignedEpoch, CliError> {
    let e = p
        .epoch
        .as_ref()
        .ok_or_else(|| alert("an epoch proof without its epoch"))?;
    SignedEpoch::from_proto(e).map_err(kt_alert)
}

fn served(page: &Leaves) -> Result<Vec<ServedLeaf>, CliError> {
    page.leaves
        .iter()
        .map(|l| {
            Ok(ServedLeaf {
                user_id: l.user_id.clone(),
                log_len: l.log_len,
                head_hash: l
                    .head_hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| alert("a leaf's head hash is not 32 bytes"))?,
            })
        })
        .collect()
}

/// The keyserver's public path.
struct Public {
    conn: Conn<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Public {
    async fn ask(&mut self, body: kt_request::Body) -> Result<kt_response::Body, CliError> {
        let id = self.next_id;
        self.next_id += 1;
        let net = |e: ward_net::NetError| CliError::Msg(format!("keyserver /v2/kt: {e}"));
        self.conn
            .send_msg(&KtRequest {
                request_id: id,
                body: Some(body),
            })
            .await
            .map_err(net)?;
        let r = tokio::time::timeout(Duration::from_secs(10), self.conn.recv_msg::<KtResponse>())
            .await
            .map_err(|_| CliError::Msg("keyserver /v2/kt: no answer in time".into()))?
            .map_err(net)?
            .ok_or_else(|| CliError::Msg("keyserver /v2/kt: closed".into()))?;
        if r.request_id != id {
            return Err(CliError::Msg(
                "keyserver /v2/kt: answer to another request".into(),
            ));
        }
        match r.body {
            Some(kt_response::Body::Error(e)) => Err(CliError::Msg(format!(
                "keyserver refused: {:?} ({})",
                ward_proto::v1::ErrorCode::try_from(e.code)
                    .unwrap_or(ward_proto::v1::ErrorCode::Unspecified),
                e.detail
            ))),
            Some(b) => Ok(b),
            None => Err(CliError::Msg("keyserver /v2/kt: empty answer".into())),
        }
    }

    async fn epoch(&mut self, epoch: u64, known_size: u64) -> Result<EpochProof, CliError> {
        match self
            .ask(kt_request::Body::GetEpoch(GetEpoch { epoch, known_size }))
            .await?
        {
            kt_response::Body::EpochProof(p) => Ok(p),
            _ => Err(CliError::Msg("keyserver /v2/kt: expected an epoch".into())),
        }
    }

    async fn leaves(&mut self, from: u64) -> Result<Leaves, CliError> {
        match self
            .ask(kt_request::Body::GetLeaves(GetLeaves { from, max: PAGE }))
            .await?
        {
            kt_response::Body::Leaves(l) if l.from == from => Ok(l),
            _ => Err(CliError::Msg("keyserver /v2/kt: expected leaves".into())),
        }
    }
}

/// What a state file holds.
struct Saved {
    certificate: DirectoryCertificate,
    epoch: SignedEpoch,
    leaves: Vec<Hash>,
}

/// The state file: `ward-audit-state 1`, then the certificate and the
/// latest verified signed epoch (each an encoded message, in hex), then one
/// leaf hash per line (hex). The auditor's own file, not a protocol format.
fn load_state(path: &Path) -> Result<Option<Saved>, CliError> {
    use ward_proto::Message as _;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::Msg(format!("{}: {e}", path.display()))),
    };
    let bad = || {
        CliError::Msg(format!(
            "{}: not a ward audit state (move it aside to start over)",
            path.display()
        ))
    };
    let mut lines = text.lines();
    if lines.next() != Some(STATE_MAGIC) {
        return Err(bad());
    }
    let mut field = || lines.next().and_then(unhex).ok_or_else(bad);
    let cert = ward_proto::v1::DirectoryKeyCertificate::decode(&field()?[..]).map_err(|_| bad())?;
    let epoch = ward_proto::v1::SignedEpoch::decode(&field()?[..]).map_err(|_| bad())?;
    let leaves = lines
        .map(|l| {
            unhex(l)
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Saved {
        certificate: DirectoryCertificate::from_proto(&cert).map_err(|_| bad())?,
        epoch: SignedEpoch::from_proto(&epoch).map_err(|_| bad())?,
        leaves,
    }))
}

/// Writes the state atomically (a temporary file renamed over the old one).
fn save_state(
    path: &Path,
    certificate: &DirectoryCertificate,
    epoch: &SignedEpoch,
    leaves: &[Hash],
) -> Result<(), CliError> {
    use ward_proto::Message as _;
    let mut text = String::with_capacity(64 + leaves.len() * 65);
    text.push_str(STATE_MAGIC);
    text.push('\n');
    text.push_str(&hex(&certificate.to_proto().encode_to_vec()));
    text.push('\n');
    text.push_str(&hex(&epoch.to_proto().encode_to_vec()));
    text.push('\n');
    for l in leaves {
        text.push_str(&hex(l));
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| CliError::Msg(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
