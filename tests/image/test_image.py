"""The images, built for real (scripts/build-image.sh: a debootstrapped Debian base, podman
build, docker-archives) and run with podman: what the chart runs in them starts, ExaBGP and
the CNI plugin work, and the archives import into containerd as the Kubernetes lane does."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
from pathlib import Path

import pytest

from cni.install import elf_kind, go_arch
from tests.chart.chartutil import render
from tests.support.images import REPO, build, podman
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Sizes as `podman image inspect` reports them (uncompressed). Debian's python3, iproute2,
# iptables and bird2 are ~150 MB and the venv ~130 MB: the bound catches a regression such
# as apt's .deb cache left in a layer (+90 MB), not a new dependency's few MB.
MAX_ROUTED_BYTES = 320_000_000


@pytest.fixture(scope="module")
def images():
    return build()


def _run(image: str, *argv: str, entrypoint: str | None = None, options: tuple[str, ...] = ()):
    """One container on no network, removed at exit; its CompletedProcess."""
    args = ["run", "--rm", "--network", "none", *options]
    if entrypoint:
        args += ["--entrypoint", entrypoint]
    return podman(*args, image, *argv, check=False)


def _pinned(package: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.startswith(f"{package}=="))


def test_every_image_is_built_and_archived_under_its_name(images):
    for image in images.values():
        assert image.archive.is_file(), image
        with tarfile.open(image.archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
        assert [tags for entry in manifest for tags in entry["RepoTags"]] == [image.ref], manifest
        size = int(podman("image", "inspect", "--format", "{{.Size}}", image.ref).stdout)
        print(f"{image.ref}: {size / 1e6:.0f} MB, archive {image.archive.stat().st_size / 1e6:.0f} MB")
    routed_size = int(podman("image", "inspect", "--format", "{{.Size}}", images["routed"].ref).stdout)
    assert routed_size < MAX_ROUTED_BYTES, f"{images['routed'].ref} is {routed_size / 1e6:.0f} MB"


def test_a_second_build_rebuilds_nothing(images):
    before = {name: (i.archive.stat().st_mtime_ns, podman("image", "inspect", "--format", "{{.Id}}", i.ref).stdout)
              for name, i in images.items()}
    again = build()
    assert again == images
    after = {name: (i.archive.stat().st_mtime_ns, podman("image", "inspect", "--format", "{{.Id}}", i.ref).stdout)
             for name, i in again.items()}
    assert after == before


def _chart_commands() -> list[tuple[str, list[str]]]:
    """(container, command + args) of every routed program the chart's workloads run."""
    rendered = render()
    found = []
    for workload in rendered.docs:
        if workload["kind"] not in ("DaemonSet", "Deployment", "Job"):
            continue
        spec = workload["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            argv = container.get("command", []) + container.get("args", [])
            if argv and argv[0] in ("routed", "routedctl"):
                found.append((f"{workload['kind']}/{container['name']}", argv))
    return found


def test_the_chart_runs_install_cni_agent_bgp_speaker_and_controller():
    """The list below is what the next test proves; the chart must not grow a program it misses."""
    subcommands = {argv[1] for _, argv in _chart_commands()}
    assert {"install-cni", "agent", "bgp-speaker", "controller"} <= subcommands, subcommands


@pytest.mark.parametrize("container,argv", _chart_commands(), ids=[c for c, _ in _chart_commands()])
def test_every_chart_entrypoint_starts_and_knows_the_charts_flags(images, container, argv):
    """The chart's command with --help: the program exists in the image, imports and parses,
    and its usage names every flag the chart passes."""
    words = [argv[0]]
    for word in argv[1:]:
        if word.startswith("-"):
            break
        words.append(word)
    proc = _run(images["routed"].ref, *words[1:], "--help", entrypoint=words[0])
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stdout + proc.stderr
    flags = {word.split("=")[0] for word in argv if word.startswith("-")}
    missing = sorted(f for f in flags if f not in proc.stdout)
    assert not missing, f"{container}: {' '.join(words)} does not know {missing}\n{proc.stdout}"


def test_exabgp_inside_is_the_pinned_release(images):
    proc = _run(images["routed"].ref, "version", entrypoint="exabgp")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ExaBGP : {_pinned('exabgp')}" in proc.stdout, proc.stdout


def test_the_route_reflector_and_dataplane_tools_are_inside(images):
    tools = ["ip", "iptables", "nft", "bird", "birdc", "wg", "wireguard-go", "awk", "sh"]
    proc = _run(images["routed"].ref, "-c", f"for t in {' '.join(tools)}; do command -v $t || exit 1; done; "
                "iptables --version", entrypoint="/bin/sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nf_tables" in proc.stdout, proc.stdout  # Debian's default backend, what the host uses


# What the agent's WireGuard controller does on a node without the kernel module (this
# machine's kernel has none): routed's own dataplane code, in the image.
WIREGUARD_SCRIPT = """
import json, os
from routed.dataplane import wireguard as wg
tools = wg.Tools(None, None)  # the node's /run/wireguard: the container's own
provider = wg.ensure_device(None, tools, 1440)
key_file = "/var/lib/routed/wireguard/private.key"
key = wg.ensure_private_key(key_file)
peer = wg.Peer("b", wg.public_key(wg.new_private_key("/tmp/b.key")), "192.0.2.2:51820", ("10.244.1.0/26",),
               "192.0.2.2/32")
wg.configure(tools, "/tmp/wg.conf", wg.render_config(key, 51820, [peer]))
print(json.dumps({"provider": provider, "publicKey": wg.public_key(key), "shown": wg.show(tools)}))
"""


def test_the_agent_makes_its_wireguard_device_with_wireguard_go_on_the_charts_tun(images, tmp_path):
    """The agent's WireGuard path in the image, with what the chart gives it when WireGuard is
    on: /dev/net/tun, NET_ADMIN, /var/lib/routed from the host (the key stays there, 0600)."""
    rendered = render({"wireguard": "Enabled"})
    ds = rendered.daemonset()
    assert rendered.container(ds, "agent")["securityContext"]["privileged"] is True  # NET_ADMIN and more
    assert {"name": "dev-net-tun", "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}} in \
        ds["spec"]["template"]["spec"]["volumes"]
    state = tmp_path / "var-lib-routed"
    state.mkdir()
    proc = _run(images["routed"].ref, "-c", WIREGUARD_SCRIPT, entrypoint="/opt/routed/venv/bin/python",
                options=("--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun",
                         "-v", f"{state}:/var/lib/routed"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["provider"] == "wireguard-go", done
    assert (done["shown"]["publicKey"], done["shown"]["listenPort"]) == (done["publicKey"], 51820), done
    (peer,) = done["shown"]["peers"]
    assert peer["endpoint"] == "192.0.2.2:51820" and set(peer["allowedIPs"]) == {"10.244.1.0/26", "192.0.2.2/32"}
    key_file = state / "wireguard" / "private.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_install_cni_puts_a_plugin_on_the_host_that_answers_version(images, tmp_path):
    """The init container exactly as the chart runs it (its args, its capabilities, the
    host's directories mounted), then the plugin run on the host the way kubelet runs it."""
    argv = dict(_chart_commands())["DaemonSet/install-cni"]
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    proc = _run(images["routed"].ref, *argv[1:], entrypoint=argv[0],
                options=("--cap-drop", "ALL", "--cap-add", "DAC_OVERRIDE",
                         "-v", f"{bin_dir}:/host/opt/cni/bin", "-v", f"{conf_dir}:/host/etc/cni/net.d"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conflist = json.loads((conf_dir / "10-routed.conflist").read_text())
    assert conflist["plugins"][0]["type"] == "routed", conflist
    plugin = bin_dir / "routed"
    assert os.access(plugin, os.X_OK), sorted(os.listdir(bin_dir))
    # Self-contained: the node needs nothing of the image (no interpreter, no libc).
    assert elf_kind(plugin.read_bytes()) == (go_arch(platform.machine()), True)
    answer = subprocess.run([str(plugin)], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                            input=json.dumps({"cniVersion": conflist["cniVersion"]}),
                            capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert conflist["cniVersion"] in json.loads(answer.stdout)["supportedVersions"], answer.stdout


def test_pause_exits_at_once_on_sigterm(images):
    name = f"rt-pause-{os.getpid()}"
    podman("run", "-d", "--name", name, "--network", "none", images["pause"].ref)
    try:
        # A pause that ignored SIGTERM would be SIGKILLed after the grace time: exit 137.
        podman("stop", "-t", "60", name)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_the_test_pod_image_has_a_shell_ping_and_nc(images):
    proc = _run(images["testpod"].ref, "sh", "-c",
                "ping -c1 -W5 127.0.0.1 || exit 1; nc -l -p 7000 > /tmp/got & "
                "i=0; until echo hello | nc 127.0.0.1 7000; do i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.1; done; "
                "wait; cat /tmp/got")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 packets received" in proc.stdout and proc.stdout.rstrip().endswith("hello"), proc.stdout


class _Containerd:
    """A private containerd (its own root, state and socket; no CRI), for ctr."""

    def __init__(self):
        # The socket path must stay short: pytest's tmp paths can be too long for one.
        self.dir = Path(tempfile.mkdtemp(prefix="rt-ctrd-"))
        self.socket = self.dir / "c.sock"
        config = self.dir / "config.toml"
        config.write_text(f'version = 2\nroot = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
                          'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                          f'[grpc]\n  address = "{self.socket}"\n[ttrpc]\n  address = "{self.dir}/t.sock"\n')
        self.log = open(self.dir / "containerd.log", "w")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=self.log, stderr=self.log)
        eventually(lambda: self.ctr("version", check=False).returncode == 0, "containerd answers",
                   timeout=60, details=lambda: (self.dir / "containerd.log").read_text())

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "rt", *args],
                              capture_output=True, text=True, timeout=300)
        if check:
            assert proc.returncode == 0, f"ctr {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_the_archives_import_into_containerd_under_their_names(images):
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("missing test dependency: containerd and ctr (Debian package containerd)", pytrace=False)
    containerd = _Containerd()
    try:
        for image in images.values():
            containerd.ctr("images", "import", str(image.archive))
        listed = containerd.ctr("images", "ls", "-q").stdout.split()
        assert sorted(listed) == sorted(i.ref for i in images.values()), listed
    finally:
        containerd.close()
