"""The shim as kubelet runs it: Debian's python3 -IS, stdlib only, no agent or a fake one."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

from cni import shim, wire

SHIM = Path(__file__).resolve().parents[2] / "cni" / "shim.py"
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}


def run_shim(env, conf, timeout=10):
    proc = subprocess.run(["/usr/bin/python3", "-IS", str(SHIM)], input=json.dumps(conf), env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def test_version_is_answered_without_an_agent(tmp_path):
    code, out, _ = run_shim({"CNI_COMMAND": "VERSION"}, {})
    assert code == 0 and "1.1.0" in json.loads(out)["supportedVersions"]


def test_add_without_agent_is_try_again_later_naming_the_socket(tmp_path):
    sock = tmp_path / "none.sock"
    code, out, err = run_shim(ENV, {"cniVersion": "1.0.0", "name": "n", "agent_socket": str(sock)})
    body = json.loads(out)
    assert code == 1 and body["code"] == 11 and str(sock) in body["msg"] and body["cniVersion"] == "1.0.0"
    assert err == ""  # no traceback, ever


def test_status_without_agent_is_not_available(tmp_path):
    code, out, _ = run_shim({**ENV, "CNI_COMMAND": "STATUS"},
                            {"cniVersion": "1.1.0", "name": "n", "agent_socket": str(tmp_path / "x")})
    assert code == 1 and json.loads(out)["code"] == 50


def test_del_without_agent_succeeds_and_spools(tmp_path):
    spool = tmp_path / "spool"
    conf = {"cniVersion": "1.0.0", "name": "n", "agent_socket": str(tmp_path / "x"), "spool_dir": str(spool)}
    code, out, _ = run_shim({**ENV, "CNI_COMMAND": "DEL"}, conf)
    assert code == 0 and out == ""
    (entry,) = spool.glob("*.req")
    env, stdin = wire.parse_request(entry.read_bytes())
    assert env["CNI_COMMAND"] == "DEL" and env["CNI_CONTAINERID"] == "c1"
    assert json.loads(stdin) == conf


def test_the_agents_answer_is_passed_through(tmp_path):
    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    seen = {}

    def agent():
        conn, _ = server.accept()
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        env, stdin = wire.parse_request(data)
        seen.update(env=env, stdin=stdin)
        conn.sendall(wire.encode_answer(0, '{"cniVersion":"1.0.0","ips":[]}'))
        conn.close()

    thread = threading.Thread(target=agent)
    thread.start()
    conf = {"cniVersion": "1.0.0", "name": "n", "agent_socket": path}
    code, out, _ = run_shim({**ENV, "OTHER": "not forwarded"}, conf)
    thread.join()
    server.close()
    assert code == 0 and json.loads(out)["cniVersion"] == "1.0.0"
    assert seen["env"]["CNI_ARGS"] == ENV["CNI_ARGS"] and "OTHER" not in seen["env"]
    assert json.loads(seen["stdin"]) == conf


def test_a_malformed_config_is_answered_by_the_shim_itself(tmp_path):
    env = {**ENV, "ROUTED_CNI_SOCKET": str(tmp_path / "none.sock")}
    proc = subprocess.run(["/usr/bin/python3", "-IS", str(SHIM)], input="{oops", env=env,
                          capture_output=True, text=True, timeout=10)
    # Not valid JSON: no agent could help, so it is a decode error, not "try again later".
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6
    proc = subprocess.run(["/usr/bin/python3", "-IS", str(SHIM)], input="nonsense", env=env,
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6


def test_conf_string_finds_values_without_a_json_parser():
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "agent_socket": "/run/a \\\"b\\\".sock"})
    assert shim.conf_string(conf, "agent_socket") == json.loads(conf)["agent_socket"]
    assert shim.conf_string(conf, "cniVersion") == "1.0.0"
    assert shim.conf_string(conf, "missing") is None
    assert shim.conf_string('{"agent_socket": 5}', "agent_socket") is None


def test_the_wire_format_round_trips():
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=p;X=1", "HOME": "/root"}
    request = shim.encode(env, '{"a": "\u00e9"}')
    assert request == wire.encode_request(env, '{"a": "\u00e9"}')
    assert wire.parse_request(request) == ({"CNI_ARGS": "K8S_POD_NAME=p;X=1", "CNI_COMMAND": "ADD"}, '{"a": "\u00e9"}')
    import pytest

    with pytest.raises(wire.BadRequest):
        wire.parse_request(b"CNI_COMMAND=ADD")
    with pytest.raises(wire.BadRequest):
        wire.parse_request(b"HOME=/\0\0{}")
