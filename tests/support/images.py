"""The container images scripts/build-image.sh builds on this machine (no registry can be
reached): routed's image from the Dockerfile, a pod sandbox (pause) image and a busybox
image for test pods, each also exported as a docker-archive for `ctr images import`.

The script is idempotent and skips images whose inputs did not change, so every caller
simply runs it: the first run of a session builds, the next ones take about a second.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-image.sh"


@dataclass(frozen=True)
class Image:
    name: str      # routed | pause | testpod
    ref: str       # the image's name in podman's store and in the archive
    archive: Path  # docker-archive (podman save), what `ctr images import` takes


def build() -> dict[str, Image]:
    """Build (or find up to date) every image; name -> Image."""
    if os.geteuid() != 0:
        pytest.fail("missing test dependency: root (debootstrap, podman) (run scripts/setup.sh)", pytrace=False)
    # A first build is a few minutes on 2 cores (debootstrap, apt, pip).
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"scripts/build-image.sh failed (exit {proc.returncode}):\n{proc.stderr}"
    images = {}
    for line in proc.stdout.splitlines():
        name, ref, archive = line.split()
        images[name] = Image(name, ref, Path(archive))
    assert set(images) == {"routed", "pause", "testpod"}, proc.stdout
    return images


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """podman on the images' own store (the one the script builds into)."""
    proc = subprocess.run(["bash", str(SCRIPT), "podman", *args], capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc
