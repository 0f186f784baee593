"""The shim as kubelet runs it: Debian's python3 -IS, stdlib only, no agent or a fake one."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

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
    (entry,) = spool.glob("*.json")
    saved = json.loads(entry.read_text())
    assert saved["env"]["CNI_COMMAND"] == "DEL" and saved["env"]["CNI_CONTAINERID"] == "c1"
    assert json.loads(saved["stdin"]) == conf


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
        seen.update(json.loads(data))
        conn.sendall(json.dumps({"code": 0, "stdout": '{"cniVersion":"1.0.0","ips":[]}'}).encode())
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
