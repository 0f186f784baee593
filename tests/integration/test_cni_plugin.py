"""The CNI plugin as kubelet runs it: the static executable `routed install-cni` installs
(cni/goplugin), with no agent, a fake one, or one that accepts and never answers.

The fake agents here speak cni/wire.py, the agent's own side of the wire; the real agent
is in tests/netns/test_cni_agent.py and tests/netns/test_cni_chroot.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from cni import install, wire
from routed.errors import RoutedError
from tests.support.agent import ROUTED, installed_plugin

ROOT = Path(__file__).resolve().parents[2]
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}


def run_plugin(env, conf, timeout=60):
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    proc = subprocess.run([installed_plugin()], input=stdin, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.stderr == "", proc.stderr  # errors go to stdout as JSON, and nothing ever panics
    return proc.returncode, proc.stdout


class FakeAgent:
    """A unix socket that takes requests as the agent does (cni/wire.py) and answers
    `answer`, or (answer=None) accepts them and never answers: a wedged agent."""

    def __init__(self, path: Path, answer: tuple[int, str] | None):
        self.path, self.answer = str(path), answer
        self.requests: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.answer is None:
                continue
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            self.requests.append(data)
            conn.sendall(wire.encode_answer(*self.answer))
            conn.close()

    def close(self):
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for conn in self.conns:
            conn.close()
        self.thread.join(10)


@pytest.fixture
def fake_agent(tmp_path):
    made = []

    def start(answer):
        made.append(FakeAgent(tmp_path / f"agent{len(made)}.sock", answer))
        return made[-1]

    yield start
    for agent in made:
        agent.close()


def test_version_is_answered_without_an_agent():
    code, out = run_plugin({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"})
    assert code == 0 and json.loads(out)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_add_without_agent_is_try_again_later_naming_the_socket(tmp_path):
    sock = tmp_path / "none.sock"
    code, out = run_plugin(ENV, {"cniVersion": "1.0.0", "name": "n", "agent_socket": str(sock)})
    body = json.loads(out)
    assert code == 1 and body["code"] == 11 and str(sock) in body["msg"] and body["cniVersion"] == "1.0.0"


def test_status_without_agent_is_not_available(tmp_path):
    code, out = run_plugin({**ENV, "CNI_COMMAND": "STATUS"},
                           {"cniVersion": "1.1.0", "name": "n", "agent_socket": str(tmp_path / "x")})
    assert code == 1 and json.loads(out)["code"] == 50


def _spooled(spool: Path) -> tuple[dict, str]:
    (entry,) = spool.iterdir()  # one entry, and no temp file left beside it
    container, ifname, stamp = entry.name.removesuffix(".req").rsplit("-", 2)
    assert (container, ifname) == ("c1", "eth0") and entry.name.endswith(".req") and stamp.isdigit()
    assert entry.stat().st_mode & 0o777 == 0o600
    return wire.parse_request(entry.read_bytes())


def test_del_without_agent_succeeds_and_spools(tmp_path):
    spool = tmp_path / "a" / "spool"  # made on demand, parents too
    conf = {"cniVersion": "1.0.0", "name": "n", "agent_socket": str(tmp_path / "x"), "spool_dir": str(spool)}
    code, out = run_plugin({**ENV, "CNI_COMMAND": "DEL"}, conf)
    assert code == 0 and out == ""
    env, stdin = _spooled(spool)
    assert env == {**ENV, "CNI_COMMAND": "DEL"} and json.loads(stdin) == conf


def test_del_with_a_wedged_agent_is_spooled_within_its_deadline(tmp_path, fake_agent):
    """The agent accepts and never answers: DEL must not wait for it (the runtime would
    time out and retry forever); it spools after a few seconds and succeeds."""
    agent = fake_agent(None)
    spool = tmp_path / "spool"
    conf = {"cniVersion": "1.0.0", "name": "n", "agent_socket": agent.path, "spool_dir": str(spool)}
    code, out = run_plugin({**ENV, "CNI_COMMAND": "DEL"}, conf, timeout=60)
    assert code == 0 and out == ""
    env, _ = _spooled(spool)
    assert env["CNI_COMMAND"] == "DEL"


def test_a_del_that_cannot_be_spooled_is_an_io_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    conf = {"cniVersion": "0.4.0", "name": "n", "agent_socket": str(tmp_path / "x"),
            "spool_dir": str(blocker / "spool")}
    code, out = run_plugin({**ENV, "CNI_COMMAND": "DEL"}, conf)
    body = json.loads(out)
    assert code == 1 and body["code"] == 5 and body["cniVersion"] == "0.4.0" and "spooled" in body["msg"]


def test_the_request_is_the_agents_wire_format_and_the_answer_passes_through(tmp_path, fake_agent):
    agent = fake_agent((7, '{"cniVersion":"1.0.0","code":7,"msg":"from the agent"}\n'))
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "agent_socket": agent.path, "x": "\u00e9 \u2713"})
    code, out = run_plugin({**ENV, "OTHER": "not forwarded", "CNI_ZZ": "a=b=c"}, conf)
    assert code == 7 and out == '{"cniVersion":"1.0.0","code":7,"msg":"from the agent"}\n'
    (request,) = agent.requests
    # Byte for byte what the agent's own encoder makes (sorted CNI_* items, two NULs, stdin as given).
    assert request == wire.encode_request({**ENV, "CNI_ZZ": "a=b=c"}, conf)
    assert wire.parse_request(request) == ({**ENV, "CNI_ZZ": "a=b=c"}, conf)


def test_a_config_that_is_no_json_object_is_answered_by_the_plugin_itself(tmp_path, fake_agent):
    agent = fake_agent((0, "{}"))
    env = {**ENV, "ROUTED_CNI_SOCKET": agent.path}
    for stdin in ("{oops", "nonsense", "[1]", ""):
        code, out = run_plugin(env, stdin)
        # No agent could help: a decode error, not "try again later".
        assert code == 1 and json.loads(out)["code"] == 6, stdin
    assert agent.requests == []
    # A well-formed one goes to the socket ROUTED_CNI_SOCKET names when the config names none.
    assert run_plugin(env, {"cniVersion": "1.0.0", "name": "n"})[0] == 0 and len(agent.requests) == 1


def test_the_built_plugins_are_static_executables_for_both_architectures():
    """An aarch64 binary cannot run here: its ELF header says what it is."""
    for arch in ("amd64", "arm64"):
        data = (install.BUILD_DIR / f"routed-linux-{arch}").read_bytes()
        assert install.elf_kind(data) == (arch, True), arch
    host = install.go_arch(os.uname().machine)
    assert install.elf_kind(Path("/usr/bin/python3").resolve().read_bytes()) == (host, False)  # dynamic
    assert install.elf_kind(b"#!/usr/bin/python3 -IS\n" + bytes(100)) == (None, False)


def test_a_second_build_builds_nothing():
    before = {p.name: p.stat().st_mtime_ns for p in install.BUILD_DIR.iterdir()}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build-cni.sh")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in install.BUILD_DIR.iterdir()} == before


def test_install_cni_installs_the_hosts_binary_whole(tmp_path):
    """From the directory ROUTED_CNI_PLUGIN_DIR names, as in the image (/opt/routed/cni)."""
    built = install.BUILD_DIR / f"routed-linux-{install.go_arch(os.uname().machine)}"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / built.name).write_bytes(built.read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "routed").write_text("#!/usr/bin/python3 -IS\n")  # what an older version installed
    proc = subprocess.run([ROUTED, "install-cni", "--bin-dir", str(bin_dir), "--conf-dir", str(tmp_path / "net.d")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, install.PLUGIN_DIR_ENV: str(plugins)})
    assert proc.returncode == 0, proc.stderr
    plugin = bin_dir / "routed"
    assert plugin.read_bytes() == built.read_bytes()
    assert plugin.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in bin_dir.iterdir()) == ["routed"]  # no temp file left
    assert sorted(p.name for p in (tmp_path / "net.d").iterdir()) == ["10-routed.conflist"]


def test_install_cni_refuses_a_plugin_that_would_not_run(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    wrong = plugins / "routed-linux-amd64"
    wrong.write_bytes((install.BUILD_DIR / "routed-linux-arm64").read_bytes())
    with pytest.raises(RoutedError, match="not a static linux/amd64 executable"):
        install.install(str(tmp_path / "bin"), str(tmp_path / "net.d"), plugin_dir=plugins, arch="amd64")
    with pytest.raises(RoutedError, match="build it with scripts/build-cni.sh"):
        install.install(str(tmp_path / "bin"), str(tmp_path / "net.d"), plugin_dir=plugins, arch="arm64")
    assert not (tmp_path / "bin" / "routed").exists()
    proc = subprocess.run([ROUTED, "install-cni", "--bin-dir", str(tmp_path / "bin"), "--conf-dir",
                           str(tmp_path / "net.d"), "--plugin-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "build-cni.sh" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(RoutedError, match="no CNI plugin is built for riscv64"):
        install.go_arch("riscv64")


def test_go_unit_tests():
    """cni/goplugin's own tests (framing, configuration, spool naming), with the pinned Go."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build-cni.sh"), "test"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
