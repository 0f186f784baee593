"""The files BGP passwords pass through: the secrets directory the agent reads them from, and
the ExaBGP configuration it writes them into (no root, no daemons)."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from bgp.speaker import CONFIG, write_config
from routed.agent.bgp import read_secret
from routed.errors import RoutedError

PASSWORD = "s3cret-md5-password"


@pytest.fixture
def secrets(tmp_path):
    base = tmp_path / "secrets"
    # As Kubernetes mounts a Secret: each key a symlink into a timestamped ..data directory.
    data = base / "tor-bgp" / "..2026_11_27_17_00_00.1"
    data.mkdir(parents=True)
    (data / "password").write_text(PASSWORD + "\n")
    (base / "tor-bgp" / "..data").symlink_to(data.name)
    (base / "tor-bgp" / "password").symlink_to("..data/password")
    (tmp_path / "outside").write_text("not a password\n")
    (base / "tor-bgp" / "escape").symlink_to(tmp_path / "outside")
    return base


def test_a_secret_is_read_through_kubernetes_symlinks(secrets):
    assert read_secret(str(secrets), "tor-bgp", "password") == PASSWORD


@pytest.mark.parametrize("name, key, words", [
    ("tor-bgp", "../../outside", "not a Secret name and key"),
    ("..", "outside", "not a Secret name and key"),
    ("tor-bgp", "/etc/passwd", "not a Secret name and key"),
    ("tor-bgp", "escape", "points outside"),  # a symlink out of the secrets directory
    ("tor-bgp", "missing", "not found"),
    ("nosuch", "password", "not found"),
])
def test_a_secret_never_comes_from_outside_the_secrets_directory(secrets, name, key, words):
    with pytest.raises(RoutedError, match=words):
        read_secret(str(secrets), name, key)


def test_the_exabgp_configuration_is_never_readable_by_others(tmp_path):
    """Every file operation while the configuration is written is checked (an audit hook):
    no file under the directory ever holds the password with any group or other bit,
    whatever the umask."""
    directory = tmp_path / "bgp"
    directory.mkdir()
    seen = []

    def check(event, args):
        nonlocal watching
        if not watching or event not in ("open", "os.rename", "os.chmod", "os.replace"):
            return
        watching = False  # our own reads below raise audit events too
        try:
            for entry in os.scandir(directory):
                try:
                    with open(entry.path, "rb") as f:
                        holds = PASSWORD.encode() in f.read()
                    mode = entry.stat().st_mode
                except OSError:
                    continue
                seen.append(entry.name)
                if holds and mode & (stat.S_IRWXG | stat.S_IRWXO):
                    leaks.append(f"{entry.name} {stat.filemode(mode)} at {event}")
        finally:
            watching = True

    leaks: list[str] = []
    watching = False
    sys.addaudithook(check)  # cannot be removed: `watching` turns it off after the test
    old = os.umask(0o022)
    try:
        watching = True
        for i in range(3):  # a first write, and rewrites over an existing file
            assert write_config(directory, f'neighbor x {{ md5-password "{PASSWORD}"; }} # {i}\n', {"i": str(i)})
    finally:
        watching = False
        os.umask(old)
    assert seen, "the audit hook saw no file operation"
    assert leaks == []
    assert stat.S_IMODE((directory / CONFIG).stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["exabgp.conf", "exabgp.env.json"]
