"""The real servers for the suite: `ward up` on free ports in a temp folder
(TLS with the dev CA it mints), and `ward admin invite` for invites, as the
CLI tests do it. `WARD_BIN` is the built `ward` binary (run-python-tests.sh)."""

import os
import pathlib
import subprocess
import tempfile

import pytest

import ward_ffi

PIN = "ward-pin-493817"


class Servers:
    def __init__(self, data: pathlib.Path):
        self.data = data
        self.bin = os.environ["WARD_BIN"]
        self.proc = subprocess.Popen(
            [self.bin, "up", "--relay-listen", "127.0.0.1:0",
             "--keyserver-listen", "127.0.0.1:0", "--data", str(data)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        fields = {}
        for line in self.proc.stdout:
            words = line.split()
            if len(words) == 2 and words[0] in ("relay", "keyserver"):
                fields[words[0]] = words[1]
            if line.strip().startswith("org root"):
                fields["root"] = words[-1]
            if line.startswith("Stop with"):
                break
        assert {"relay", "keyserver", "root"} <= fields.keys(), fields
        self.relay, self.keyserver, self.org_root = (
            fields["relay"], fields["keyserver"], fields["root"])
        assert self.relay.startswith("wss://"), "ward up serves TLS"
        self.ca = str(data / "tls" / "ca.pem")

    def invite(self, user_id: str, name: str, profession: str = "physician",
               registry_number: str = "") -> pathlib.Path:
        """Mints an invite with `ward admin invite --out FILE`."""
        path = self.data / f"{user_id}.invite"
        subprocess.run(
            [self.bin, "admin", "invite", "--user-id", user_id, "--name", name,
             "--profession", profession, "--registry-number", registry_number,
             "--data", str(self.data), "--out", str(path)],
            check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        return path

    def config(self, store: pathlib.Path) -> "ward_ffi.WardConfig":
        return ward_ffi.WardConfig(
            store_path=str(store), relay_url=self.relay,
            keyserver_url=self.keyserver, org_root=self.org_root,
            ca_file=self.ca, relay_instance=None, keyserver_instance=None,
            connection_events=False,
            # The lowest Argon2id cost the store accepts: the suite tests the
            # API, not the KDF (whose default is 64 MiB, 3 passes).
            kdf_memory_kib=8 * 1024, kdf_passes=1, max_pin_attempts=None)

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=60) == 0, "ward up stops cleanly"


@pytest.fixture(scope="session")
def servers():
    with tempfile.TemporaryDirectory(prefix="ward-pytest-") as tmp:
        s = Servers(pathlib.Path(tmp) / "data")
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture
def tmp(tmp_path):
    return tmp_path
