"""BGP: announcing 10,000 prefixes to BIRD, ours against ExaBGP one command per route.

Two namespaces on a veth: a node running ExaBGP, a router running BIRD (the lab's own
configuration). Both runs use the same kind of session; they differ in what ExaBGP's
API process sends it:
- ours: the real bgp.helper relay, fed by a stand-in agent socket with exactly the
  commands the agent sends (routed.agent.bgp.announce_commands: batched);
- reference: a process writing `announce route P next-hop self` once per prefix.
Both are timed from the moment the session is up (CLOCK_MONOTONIC is shared by all
processes) until BIRD holds every prefix.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import note, report

COUNT = 10_000
NODE, ROUTER = "192.0.2.1", "192.0.2.2"

# The reference feeder. It must keep reading stdin: ExaBGP blocks on a full pipe.
ONE_BY_ONE = r'''
import sys, time
prefixes = [l.strip() for l in open(sys.argv[1])]
for line in sys.stdin:
    if '"state": "up"' in line:
        open(sys.argv[2], "w").write(repr(time.monotonic()))
        for p in prefixes:
            sys.stdout.write("announce route %s next-hop self\n" % p)
        sys.stdout.flush()
'''


class StandInAgent:
    """The agent's end of bgp.helper's socket: when the session is up, announce."""

    def __init__(self, path: Path, commands: list[str]):
        self.commands = commands
        self.up_at: float | None = None
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(1)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        buf = b""
        while self.up_at is None:
            chunk = conn.recv(65536)
            if not chunk:
                return
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                msg = json.loads(line)
                # The session may come up before the helper connects: then the helper's
                # snapshot carries it (as the real agent reads it too).
                states = [msg.get("neighbor", {}).get("state")]
                states += [p.get("neighbor", {}).get("state") for p in msg.get("peers", {}).values()]
                if "up" in states:
                    self.up_at = time.monotonic()
        conn.sendall(b"".join(json.dumps({"command": c}).encode() + b"\n" for c in self.commands))
        while conn.recv(65536):
            pass


def exabgp_config(feeder: str) -> str:
    return f"""process feeder {{
  run {feeder};
  encoder json;
}}
neighbor {ROUTER} {{
  router-id {NODE};
  local-address {NODE};
  local-as 64512;
  peer-as 65001;
  group-updates true;
  family {{ ipv4 unicast; }}
  api {{ processes [ feeder ]; neighbor-changes; }}
}}
"""


def bird_count(sock: Path) -> int:
    out = subprocess.run(["birdc", "-s", str(sock), "show", "route", "count"], capture_output=True, text=True).stdout
    return next((int(line.split()[0]) for line in out.splitlines() if "routes for" in line), 0)


def timed_run(workdir: Path, names: tuple[str, str], feeder: str, up_at) -> float:
    """Seconds from session up (up_at() once known) to BIRD holding COUNT prefixes."""
    from routed.lab import routers

    node, router = names
    workdir.mkdir()
    spec = routers.RouterSpec("bench", ROUTER, 65001, (routers.Neighbor(NODE, 64512, "node1", "node"),))
    (workdir / "bird.conf").write_text(routers.render_bird(spec))
    (workdir / "exabgp.conf").write_text(exabgp_config(feeder))
    env = {**os.environ, "exabgp_daemon_user": "root", "exabgp_api_cli": "false", "exabgp_log_level": "WARNING"}
    procs = [subprocess.Popen(["ip", "netns", "exec", router, "bird", "-f", "-c", str(workdir / "bird.conf"),
                               "-s", str(workdir / "bird.ctl")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen(["ip", "netns", "exec", node, str(Path(sys.executable).with_name("exabgp")),
                               str(workdir / "exabgp.conf")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 300
        while bird_count(workdir / "bird.ctl") < COUNT:
            if time.monotonic() > deadline:
                raise RuntimeError(f"BIRD never got all {COUNT} prefixes")
            time.sleep(0.02)
        return time.monotonic() - up_at()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    from routed.agent.bgp import announce_commands
    from routed.lab import topology

    workdir = Path(tempfile.mkdtemp(prefix="routed-bench-announce-"))
    names = (f"rt-bench{os.getpid()}-n", f"rt-bench{os.getpid()}-r")
    try:
        for name in names:
            topology.add_netns(name)
        topology.ip("link", "add", "eth0", "netns", names[0], "type", "veth", "peer", "name", "eth0",
                    "netns", names[1])
        for name, address in zip(names, (NODE, ROUTER)):
            topology.ip("addr", "add", f"{address}/24", "dev", "eth0", netns=name)
            topology.ip("link", "set", "eth0", "up", netns=name)
        base = ipaddress.ip_network("10.128.0.0/10")
        prefixes = [str(n) for n, _ in zip(base.subnets(new_prefix=26), range(COUNT))]
        (workdir / "prefixes.txt").write_text("\n".join(prefixes) + "\n")
        (workdir / "one_by_one.py").write_text(ONE_BY_ONE)

        commands = announce_commands("announce", prefixes)
        agent = StandInAgent(workdir / "bgp.sock", commands)
        ours = timed_run(workdir / "ours", names, f"{sys.executable} -m bgp.helper --socket {workdir / 'bgp.sock'}",
                         lambda: agent.up_at)
        up_file = workdir / "up-at"
        reference = timed_run(workdir / "reference", names,
                              f"{sys.executable} {workdir / 'one_by_one.py'} {workdir / 'prefixes.txt'} {up_file}",
                              lambda: float(up_file.read_text()))
        report(f"announce {COUNT} prefixes to BIRD", COUNT / ours, COUNT / reference, "prefixes/s")
        note(f"   ours {ours:.2f} s ({len(commands)} batched commands through bgp.helper), reference "
             f"{reference:.2f} s (one command per route), both from session up; target >= 2x")
    finally:
        for name in names:
            topology.del_netns(name)
