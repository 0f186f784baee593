"""Sessions that must not come up, and a speaker that dies: TCP MD5 with a right and a wrong
password, a BGPPeer with the wrong AS, and graceful restart when ExaBGP is SIGKILLed.

    n1 .1  -- BGPPeer tor-n1: BIRD .250, AS 65001, password from secret good/password
    n2 .2  -- BGPPeer tor-n2: the same, but password from secret bad/password (wrong)
    n3 .3  -- BGPPeer tor-n3: BIRD .250 with asNumber 65099 (BIRD is AS 65001)
    and the node-to-node mesh among n1, n2, n3, which none of this may disturb.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from tests.bgp.routers import Bird, Neighbor, RouterSpec, module_cluster, ping, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE_AS, TOR_AS, WRONG_AS = 64512, 65001, 65099
TOR = "192.0.2.250"
PASSWORD = "s3cret-md5"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("resilience")
    secrets = workdir / "secrets"
    for name, value in (("good", PASSWORD), ("bad", "not-the-password")):
        (secrets / name).mkdir(parents=True)
        (secrets / name / "password").write_text(value + "\n")
    with module_cluster(workdir, secrets_dir=str(secrets)) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
        for node, secret, asn in (("n1", "good", TOR_AS), ("n2", "bad", TOR_AS), ("n3", None, WRONG_AS)):
            spec = {"peerIP": TOR, "asNumber": asn, "node": node}
            if secret:
                spec["password"] = {"secretKeyRef": {"name": secret, "key": "password"}}
            cluster.apply({"kind": "BGPPeer", "metadata": {"name": f"tor-{node}"}, "spec": spec})
        tor = cluster.add_router("tor", Bird, RouterSpec(TOR, TOR_AS, [
            Neighbor("192.0.2.1", NODE_AS, password=PASSWORD),
            Neighbor("192.0.2.2", NODE_AS, password=PASSWORD),
            Neighbor("192.0.2.3", NODE_AS)]))
        nodes = [cluster.add_node(f"n{i}", i) for i in (1, 2, 3)]
        for node in nodes:
            cluster.wait(lambda: cluster.sessions_up(node, 2), what=f"{node.name}'s mesh sessions")
        tor.wait_established(["192.0.2.1"])
        pods = [node.add_pod("p") for node in nodes]
        for node in nodes:
            cluster.wait(lambda: node.blocks(), what=f"{node.name}'s block")
        cluster.wait_direct_routes(nodes)
        yield cluster, tor, nodes, pods


def tcp_ext(netns_run, counter: str) -> int:
    """A TcpExt counter of one namespace (/proc/net/netstat is per namespace)."""
    lines = netns_run("cat", "/proc/net/netstat").stdout.splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split()[1:], values.split()[1:]))[counter])
    raise AssertionError("no TcpExt in /proc/net/netstat")


def status_row(node, address: str) -> str:
    out = node.status()
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.splitlines() if line.startswith(address + " "))


def test_md5_right_password_up_wrong_password_never(setup):
    cluster, tor, (n1, n2, n3), _ = setup
    # Right password: the session is up on both ends, and BIRD (which requires the
    # signature) learned n1's block over it.
    cluster.wait(lambda: n1.peer(TOR)["state"] == "up", what="n1's MD5 session")
    tor.wait_route(n1.blocks()[0], n1.ip)
    # Wrong password: n2's SYNs reach BIRD's namespace and the kernel drops them for their
    # bad signature (TCPMD5Failure counts exactly that), so the session never comes up.
    wait_for(lambda: tcp_ext(tor.run, "TCPMD5Failure") > 0, 60, "a segment with a wrong MD5 signature at BIRD")
    assert n2.peer(TOR)["state"] != "up"
    assert "192.0.2.2" not in tor.established()
    row = status_row(n2, TOR)
    assert " node " in row and " up " not in row and "tor-n2" in row, row
    assert "2 of 3 BGP session(s) up" in n2.status().stdout
    # The mesh does not care.
    assert [p["state"] for p in n2.peers() if p["type"] == "mesh"] == ["up", "up"]
    assert f"{n2.blocks()[0]} via {n2.ip} dev eth0" in n1.routes()


def test_fixing_the_password_brings_the_session_up(setup):
    cluster, tor, (n1, n2, n3), _ = setup
    assert n2.peer(TOR)["state"] != "up"
    # The operator points tor-n2 at the right secret: the session comes up.
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor-n2"},
                   "spec": {"peerIP": TOR, "asNumber": TOR_AS, "node": "n2",
                            "password": {"secretKeyRef": {"name": "good", "key": "password"}}}})
    cluster.wait(lambda: n2.peer(TOR)["state"] == "up", timeout=20, what="n2's session with the fixed password")
    tor.wait_established(["192.0.2.1", "192.0.2.2"])


def test_wrong_peer_as_is_refused_and_breaks_nothing(setup):
    cluster, tor, (n1, n2, n3), pods = setup
    # BIRD answers with AS 65001; n3's ExaBGP expected 65099 and refuses with a NOTIFICATION
    # (2,2: OPEN message error, Bad Peer AS), which BIRD records.
    cluster.wait(lambda: "Bad peer AS" in tor.protocol_info("192.0.2.3"), what="BIRD to be told Bad Peer AS")
    cluster.wait(lambda: re.search(r"\(2,2\)|(?i:bad peer as)", n3.peer(TOR)["info"]),
                 what="the notification on n3's peer status")
    assert n3.peer(TOR)["state"] != "up"
    assert "192.0.2.3" not in tor.established()
    row = status_row(n3, TOR)
    assert " up " not in row and "tor-n3" in row, row
    # Everything else works: n3's mesh, n1's session with BIRD, pods to and from n3.
    assert [p["state"] for p in n3.peers() if p["type"] == "mesh"] == ["up", "up"]
    assert n1.peer(TOR)["state"] == "up"
    (pod1, ip1), _, (pod3, ip3) = pods
    assert ping(pod1.run, ip3) and ping(pod3.run, ip1)


def test_graceful_restart_keeps_routes_while_exabgp_restarts(setup):
    cluster, tor, (n1, n2, n3), pods = setup
    (pod1, ip1), (pod2, ip2), (pod3, ip3) = pods
    block = n1.blocks()[0]
    route = f"{block} via {n1.ip} dev eth0"
    for node in (n2, n3):
        assert node.routes().count(block) == 1
    since = {node.name: node.peer(n1.ip)["since"] for node in (n2, n3)}
    old = n1.exabgp_pid()
    assert old is not None
    # A continuous ping from a pod on n2 to the pod on n1, through the whole restart.
    pinger = subprocess.Popen(["ip", "netns", "exec", pod2.name, "ping", "-n", "-i", "0.2", "-W", "1", ip1],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        states, missing = set(), []
        os.kill(old, signal.SIGKILL)
        # While ExaBGP on n1 is gone (until a new one is up again), n2 and n3 keep n1's block.
        deadline = time.monotonic() + 60
        while True:
            pid = n1.exabgp_pid()
            up_again = pid not in (None, old) and cluster.sessions_up(n1, 2) and \
                all(node.peer(n1.ip)["state"] == "up" for node in (n2, n3))
            for node in (n2, n3):
                states.add(node.peer(n1.ip)["state"])
                if route not in node.routes():
                    missing.append(node.name)
            if up_again:
                break
            assert time.monotonic() < deadline, f"n1's ExaBGP did not come back\n{cluster.logs()}"
            time.sleep(0.05)
        assert not missing, f"n1's block left {missing} during the restart"
        # The sessions really went down and came back (not just a quiet ExaBGP).
        assert all(node.peer(n1.ip)["since"] != since[node.name] for node in (n2, n3)), states
        time.sleep(2)  # a few more pings after convergence
    finally:
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, received = int(m.group(1)), int(m.group(2))
    assert sent >= 10 and sent - received <= 3, out
    # Converged, nothing duplicated: one proto-202 route per block everywhere.
    cluster.wait(lambda: tor.rib().get(block) == {n1.ip}, what="BIRD to learn n1's block again")
    for node in (n1, n2, n3):
        lines = [line.split()[0] for line in node.routes().splitlines()]
        assert len(lines) == len(set(lines)), node.routes()
        others = [b for o in (n1, n2, n3) if o is not node for b in o.blocks()]
        assert sorted(lines) == sorted(others), (node.name, node.routes())
    assert ping(pod3.run, ip1) and ping(pod1.run, ip3)


def test_wrong_peer_as_reason_is_spelled_out(setup):
    cluster, tor, (n1, n2, n3), _ = setup
    cluster.wait(lambda: re.search(r"\(2,2\)|(?i:notification|bad peer as)", n3.peer(TOR)["info"]),
                 what="a notification on n3's peer status")
    assert "bad peer as" in n3.peer(TOR)["info"].lower()
    assert "bad peer as" in status_row(n3, TOR).lower()


def test_a_peer_whose_password_cannot_be_had_is_left_out_alone(setup):
    """A BGPPeer whose secret is missing, and one whose password ExaBGP cannot take: each is
    skipped, said once, counted and shown, and everything else goes on: n1's other
    sessions, a peer added after them, and a block n1 claims after them."""
    from routed import resources as r

    cluster, tor, (n1, n2, n3), _ = setup
    secrets = cluster.secrets_dir
    os.makedirs(f"{secrets}/quote", exist_ok=True)
    with open(f"{secrets}/quote/password", "w") as f:
        f.write('bad"password\n')
    since = n1.peer(TOR)["since"]
    broken = {"192.0.2.240": ("locked", "nosuch", "not found"),
              "192.0.2.241": ("quoted", "quote", "MD5 password of peer 192.0.2.241")}
    for address, (name, secret, _) in broken.items():
        cluster.apply({"kind": "BGPPeer", "metadata": {"name": name},
                       "spec": {"peerIP": address, "asNumber": TOR_AS, "node": "n1",
                                "password": {"secretKeyRef": {"name": secret, "key": "password"}}}})
    # Later changes still take effect: a new peer, and a new block of n1's announced to the others.
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "later"},
                   "spec": {"peerIP": "192.0.2.242", "asNumber": TOR_AS, "node": "n1"}})
    cluster.apply({"kind": "IPPool", "metadata": {"name": "zz-later"}, "spec": {"cidr": "10.247.0.0/24"}})
    n1.add_pod("later", {"ipam": {"ipv4_pools": ["zz-later"]}})
    cluster.wait(lambda: any(p["address"] == "192.0.2.242" for p in n1.peers()), what="n1 to add the later peer")
    for address, (name, _, words) in broken.items():
        cluster.wait(lambda: any(p["address"] == address and p["state"] == "skipped" for p in n1.peers()),
                     what=f"n1 to leave {name} out")
        assert words in n1.peer(address)["info"], n1.peer(address)
    cluster.wait(lambda: any(b.startswith("10.247.") for b in n1.blocks()), what="n1's block in zz-later")
    block = next(b for b in n1.blocks() if b.startswith("10.247."))
    for node in (n2, n3):
        cluster.wait(lambda: f"{block} via {n1.ip} dev eth0" in node.routes(), what=f"{node.name} to learn {block}")
    config = (n1.workdir / "bgp" / "exabgp.conf").read_text()
    assert "neighbor 192.0.2.242 {" in config and f"neighbor {TOR} {{" in config
    assert "192.0.2.240" not in config and "192.0.2.241" not in config and "bad" not in config
    assert n1.peer(TOR)["state"] == "up" and n1.peer(TOR)["since"] == since
    # Said once each, counted, and in node status.
    log = n1.agent.log.read_text()
    for address in broken:
        assert len(re.findall(rf"BGP peer {re.escape(address)} .* left out", log)) == 1, log[-3000:]
    assert re.search(r"^routed_bgp_peers_skipped 2(\.0)?$", n1.agent.metrics(), re.M)
    status = n1.status()
    assert "2 peer(s) left out of the BGP configuration: 192.0.2.240, 192.0.2.241" in status.stdout, status.stdout
    assert " skipped " in status_row(n1, "192.0.2.240")
    for name in ("locked", "quoted", "later"):
        cluster.store.delete(r.BGPPeer, name)
    cluster.wait(lambda: not any(p["address"].startswith("192.0.2.24") for p in n1.peers()),
                 what="the test's peers to go")


def test_an_unreadable_bgppeer_is_skipped_and_stalls_nothing(setup):
    """Garbage under a BGPPeer's key, and a BGPPeer written before today's validation: each is
    skipped, said once, counted, and every node's BGP goes on (sessions, routes, a new peer)."""
    from routed import resources as r
    from routed.datastore import keys

    cluster, tor, (n1, n2, n3), _ = setup
    since = n1.peer(TOR)["since"]
    bad = {keys.resource("bgppeers", "garbage"): b"\x00{garbage",
           keys.resource("bgppeers", "old-invalid"): json.dumps(
               {"apiVersion": "routed.io/v1", "kind": "BGPPeer", "metadata": {"name": "old-invalid"},
                "spec": {"peerIP": "not-an-address", "asNumber": TOR_AS}}).encode()}
    for key, value in bad.items():
        cluster.store.kv.put(key, value)
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "after-bad"},
                   "spec": {"peerIP": "192.0.2.243", "asNumber": TOR_AS, "node": "n1"}})
    cluster.wait(lambda: any(p["address"] == "192.0.2.243" for p in n1.peers()), what="n1 to add a later peer")
    cluster.wait(lambda: re.search(r"^routed_datastore_unreadable_records 2(\.0)?$", n1.agent.metrics(), re.M),
                 what="n1 to count the two bad records")
    assert n1.peer(TOR)["state"] == "up" and n1.peer(TOR)["since"] == since
    for node in (n1, n2, n3):
        others = [(o, b) for o in (n1, n2, n3) if o is not node for b in o.blocks()]
        assert all(f"{b} via {o.ip} dev eth0" in node.routes() for o, b in others), node.name
        assert cluster.sessions_up(node, 2), node.name
    log = n1.agent.log.read_text()
    for key in bad:
        assert len(re.findall(rf"skips {re.escape(key)} ", log)) == 1, log[-3000:]
    assert "Traceback" not in log
    for key in bad:
        cluster.store.kv.delete(key)
    cluster.store.delete(r.BGPPeer, "after-bad")
    cluster.wait(lambda: not any(p["address"] == "192.0.2.243" for p in n1.peers()), what="the later peer to go")


def test_mesh_peers_have_a_receive_limit_too(setup):
    """BGPConfiguration maxPrefixes bounds what a mesh peer's session may hold, like a
    BGPPeer's maxPrefixes: n2 keeps what n1 sent up to the limit and drops a new block."""
    from routed import resources as r

    cluster, tor, (n1, n2, n3), _ = setup
    assert n2.peer(n1.ip)["maxPrefixes"] == r.BGPConfiguration.model_validate(
        {"metadata": {"name": "default"}}).spec.max_prefixes
    held = n2.peer(n1.ip)
    limit = held["accepted"] + held["rejected"]
    cluster.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"},
                   "spec": {"asNumber": NODE_AS, "maxPrefixes": limit}})
    try:
        cluster.wait(lambda: n2.peer(n1.ip)["maxPrefixes"] == limit, what="n2 to take the mesh limit")
        cluster.apply({"kind": "IPPool", "metadata": {"name": "zz-limit"}, "spec": {"cidr": "10.248.0.0/24"}})
        n1.add_pod("limit", {"ipam": {"ipv4_pools": ["zz-limit"]}})
        cluster.wait(lambda: n2.peer(n1.ip)["dropped"] >= 1, what="n2 to drop n1's routes past the limit")
        peer = n2.peer(n1.ip)
        assert peer["state"] == "up" and peer["accepted"] + peer["rejected"] <= limit, peer
        assert f"max-prefixes {limit} reached" in peer["info"], peer
        assert not any(line.startswith("10.248.") for line in n2.routes().splitlines()), n2.routes()
        # n3 has the same limit for n1 but nothing else changes for it: the other sessions stay up.
        assert cluster.sessions_up(n2, 2) and cluster.sessions_up(n3, 2)
    finally:
        cluster.store.delete(r.BGPConfiguration, "default")
