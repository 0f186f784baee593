"""Put the plugin in the CNI bin dir and write the conflist (the command: cni.cli).

Run by the DaemonSet's init container (and by the lab). The plugin is the static Go
executable of cni/goplugin, built for each architecture by scripts/build-cni.sh into
build/cni/routed-linux-<arch>; the image copies those to /opt/routed/cni and names that
directory in ROUTED_CNI_PLUGIN_DIR. Both files are written to a temporary name in the
target directory, synced and renamed, so kubelet never execs half a plugin or reads half
a config.
"""

from __future__ import annotations

import json
import os
import platform
import struct
import tempfile
from pathlib import Path

from routed.errors import RoutedError

CONFLIST_NAME = "10-routed.conflist"
PLUGIN_NAME = "routed"  # the conflist's "type": runtimes look for this file in CNI_PATH
PLUGIN_DIR_ENV = "ROUTED_CNI_PLUGIN_DIR"
BUILD_DIR = Path(__file__).resolve().parents[1] / "build" / "cni"  # a source tree's scripts/build-cni.sh output
GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
ELF_MACHINE = {62: "amd64", 183: "arm64"}  # e_machine: EM_X86_64, EM_AARCH64
PT_INTERP = 3


def render_conflist(*, mtu: int = 0, socket: str = "/var/run/routed/cni.sock",
                    spool_dir: str = "/var/lib/routed/cni-spool", ipv4_pools: list[str] | None = None,
                    ipv6: bool = False, cni_version: str = "1.0.0", chain: bool = True) -> dict:
    """The network configuration list kubelet (through the runtime) hands the plugins.
    ``mtu`` 0 leaves the pods' MTU to the agent (the uplink's less the encapsulation's)."""
    routed = {"type": "routed", "mtu": mtu, "agent_socket": socket, "spool_dir": spool_dir,
              "ipam": {"assign_ipv4": True, "assign_ipv6": ipv6, "ipv4_pools": list(ipv4_pools or [])}}
    plugins = [routed]
    if chain:
        plugins += [{"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
                    {"type": "bandwidth", "capabilities": {"bandwidth": True}}]
    return {"cniVersion": cni_version, "name": "k8s-pod-network", "plugins": plugins}


def go_arch(machine: str) -> str:
    """Go's name for a kernel's machine (`uname -m`)."""
    try:
        return GO_ARCH[machine]
    except KeyError:
        raise RoutedError(f"install-cni: no CNI plugin is built for {machine} "
                          f"(there are: {', '.join(sorted(set(GO_ARCH.values())))})") from None


def elf_kind(data: bytes) -> tuple[str | None, bool]:
    """(Go architecture, static) of a 64-bit little-endian ELF executable; (None, False) for
    anything else. Static means no program interpreter: it runs in an empty root filesystem."""
    if len(data) < 64 or data[:6] != b"\x7fELF\x02\x01":
        return None, False
    (machine,) = struct.unpack_from("<H", data, 18)
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    if phentsize < 4 or phoff + phnum * phentsize > len(data):
        return None, False
    static = all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != PT_INTERP for i in range(phnum))
    return ELF_MACHINE.get(machine), static


def plugin_binary(plugin_dir: str | Path, arch: str) -> bytes:
    """The built plugin for arch, checked to be a static executable for it."""
    path = Path(plugin_dir) / f"routed-linux-{arch}"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RoutedError(f"install-cni: no CNI plugin at {path} ({err.strerror}): "
                          f"build it with scripts/build-cni.sh, or set {PLUGIN_DIR_ENV}") from None
    kind, static = elf_kind(data)
    if kind != arch or not static:
        raise RoutedError(f"install-cni: {path} is not a static linux/{arch} executable")
    return data


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """A unique temp file beside path, synced, then renamed over it (and the rename synced)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def install(bin_dir: str, conf_dir: str, *, plugin_dir: str | Path | None = None, arch: str | None = None,
            **conflist) -> tuple[Path, Path]:
    arch = arch or go_arch(platform.machine())
    binary = plugin_binary(plugin_dir or os.environ.get(PLUGIN_DIR_ENV) or BUILD_DIR, arch)
    bins, confs = Path(bin_dir), Path(conf_dir)
    try:
        bins.mkdir(parents=True, exist_ok=True)
        confs.mkdir(parents=True, exist_ok=True)
        plugin = bins / PLUGIN_NAME
        _write_atomically(plugin, binary, 0o755)
        conf = confs / CONFLIST_NAME
        _write_atomically(conf, (json.dumps(render_conflist(**conflist), indent=2) + "\n").encode(), 0o644)
    except OSError as err:
        raise RoutedError(f"install-cni: {err.strerror}: {err.filename}") from None
    return plugin, conf

