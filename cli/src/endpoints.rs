//! `<data>/endpoints`: the URLs `ward up` is serving, written when it starts
//! and removed when it stops, so that the other commands find non-default
//! ports without flags. Two `key = "value"` lines (TOML).

use std::path::{Path, PathBuf};

const FILE: &str = "endpoints";

/// The servers' URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The relay's URL.
    pub relay: String,
    /// The keyserver's URL.
    pub keyserver: String,
}

/// The file under `data`.
pub fn path(data: &Path) -> PathBuf {
    data.join(FILE)
}

/// Writes the file.
pub fn write(data: &Path, e: &Endpoints) -> std::io::Result<()> {
    let text = format!(
        "# Written by `ward up` while it runs; removed when it stops.\nrelay = {:?}\nkeyserver = {:?}\n",
        e.relay, e.keyserver
    );
    std::fs::write(path(data), text)
}

/// Reads the file, if `ward up` is serving from `data`.
pub fn read(data: &Path) -> Option<Endpoints> {
    let table: toml::Table = std::fs::read_to_string(path(data)).ok()?.parse().ok()?;
    let get = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Some(Endpoints {
        relay: get("relay")?,
        keyserver: get("keyserver")?,
    })
}

/// Removes the file (at shutdown).
pub fn remove(data: &Path) {
    let _ = std::fs::remove_file(path(data));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips() {
        let dir = std::env::temp_dir().join(format!("ward-endpoints-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Endpoints {
            relay: "wss://127.0.0.1:1".into(),
            keyserver: "ws://[::1]:2".into(),
        };
        write(&dir, &e).unwrap();
        assert_eq!(read(&dir), Some(e));
        remove(&dir);
        assert_eq!(read(&dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
