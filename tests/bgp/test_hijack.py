"""A hostile BGP peer cannot steal pod traffic: routes inside a pool are installed only where
IPAM agrees (the prefix is a node's block or borrowed address, the next hop that node).

    n1 .11, n2 .12      agents + ExaBGP, node-to-node mesh (AS 64512)
    ghost .13           a registered Node with no agent (a next hop that is a node)
    rogue .3            GoBGP, iBGP AS 64512, a global BGPPeer: "anything that reaches port 179";
                        it announces whatever a test tells it, with any next hop
    flood .4            GoBGP, AS 65001, BGPPeer maxPrefixes 5: announces 12 allowed prefixes
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from ipam.allocator import IPAM
from tests.bgp.routers import Announce, GoBgp, Neighbor, RouterSpec, agent_log, module_cluster, ping

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE_AS, FLOOD_AS = 64512, 65001
ROGUE, FLOOD, GHOST = "192.0.2.3", "192.0.2.4", "192.0.2.13"
NODE_IPS = ["192.0.2.11", "192.0.2.12"]
MAX_PREFIXES, FLOODED = 5, 12


class Setup:
    def __init__(self, cluster, rogue, flood, nodes, pods):
        self.cluster, self.rogue, self.flood, self.nodes, self.pods = cluster, rogue, flood, nodes, pods


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with module_cluster(tmp_path_factory.mktemp("hijack")) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
        # Two blocks of two addresses: the third pod of a node has to borrow.
        cluster.apply({"kind": "IPPool", "metadata": {"name": "zz-tiny"},
                       "spec": {"cidr": "10.246.0.0/30", "blockSize": 31}})
        cluster.apply({"kind": "Node", "metadata": {"name": "ghost"},
                       "spec": {"bgp": {"ipv4Address": f"{GHOST}/24"}}})
        cluster.apply({"kind": "BGPPeer", "metadata": {"name": "rogue"},
                       "spec": {"peerIP": ROGUE, "asNumber": NODE_AS}})
        cluster.apply({"kind": "BGPPeer", "metadata": {"name": "flood"},
                       "spec": {"peerIP": FLOOD, "asNumber": FLOOD_AS, "maxPrefixes": MAX_PREFIXES,
                                "allowedPrefixes": ["198.18.0.0/16"]}})
        rogue = cluster.add_router("rogue", GoBgp, RouterSpec(ROGUE, NODE_AS, [Neighbor(ip, NODE_AS)
                                                                                for ip in NODE_IPS]))
        flood = cluster.add_router("flood", GoBgp, RouterSpec(
            FLOOD, FLOOD_AS, [Neighbor(ip, NODE_AS) for ip in NODE_IPS],
            [Announce(f"198.18.{i}.0/24") for i in range(FLOODED)]))
        nodes = [cluster.add_node(f"n{i}", 10 + i) for i in (1, 2)]
        for node in nodes:  # the mesh, rogue and flood; the ghost never answers
            cluster.wait(lambda: cluster.sessions_up(node, 3), what=f"{node.name}'s sessions")
        rogue.wait_established(NODE_IPS)
        pods = [node.add_pod("p") for node in nodes]
        n1, n2 = nodes
        for node in nodes:
            cluster.wait(lambda: node.blocks(), what=f"{node.name}'s block")
        for a, b in ((n1, n2), (n2, n1)):
            cluster.wait(lambda: all(f"{blk} via {a.ip} dev eth0" in b.routes() for blk in a.blocks()),
                         what=f"{b.name} to learn {a.name}'s block")
        yield Setup(cluster, rogue, flood, nodes, pods)


def rejection(node, peer: str, prefix: str) -> str | None:
    """Why node's agent rejected prefix from peer, from its log; None if it did not."""
    found = re.findall(rf'peer {re.escape(peer)}: rejected {re.escape(prefix)}: ([^"]*)"', agent_log(node))
    return found[-1] if found else None


def installed(node, prefix: str) -> str | None:
    """node's proto-202 route for prefix (`ip route` shows a /32 as a bare address), if any."""
    dst = prefix.removesuffix("/32")
    return next((line for line in node.routes().splitlines() if line.split()[0] == dst), None)


def processed(node, prefix: str) -> bool:
    """The agent judged the rogue's route for prefix: rejected it, or installed it."""
    return rejection(node, ROGUE, prefix) is not None or installed(node, prefix) is not None


def test_a_peer_cannot_take_a_pods_address_or_a_slice_of_a_pool(setup):
    """The hijack: a pod's /32 and a /27 inside the pool, next hop the peer itself. Being
    more specific than the pod's /26 block, both would win every node's route lookup."""
    cluster, (n1, n2) = setup.cluster, setup.nodes
    (pod1, ip1), (pod2, ip2) = setup.pods
    stolen = [f"{ip1}/32", "10.244.250.0/27"]
    for prefix in stolen:
        setup.rogue.announce(Announce(prefix))
    for node in (n2, n1):  # n1 never puts it over its own pod's route; n2 did, before
        for prefix in stolen:
            cluster.wait(lambda: processed(node, prefix), what=f"{node.name} to judge {prefix} from the rogue")
            assert installed(node, prefix) is None, f"{node.name} installed {prefix}:\n{node.routes()}"
            assert f"next hop {ROGUE} is no node's address" in rejection(node, ROGUE, prefix)
    assert ping(pod2.run, ip1), f"pod {ip2} on n2 -> pod {ip1} on n1"
    # Counted by reason, in node status and in the metrics.
    cluster.wait(lambda: n2.peer(ROGUE)["rejectedBy"].get("next-hop-not-a-node", 0) >= 2,
                 what="the rejections counted by reason")
    assert n2.peer(ROGUE)["accepted"] == 0
    status = n2.status()
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith(ROGUE + " "))
    assert "next-hop-not-a-node=" in row, status.stdout
    assert re.search(rf'routed_bgp_rejected_routes{{peer="{ROGUE}",reason="next-hop-not-a-node"}} [1-9]',
                     n2.agent.metrics()), n2.agent.metrics()
    for prefix in stolen:
        setup.rogue.withdraw(prefix)


def test_a_pool_route_whose_next_hop_is_no_node(setup):
    cluster, (n1, n2) = setup.cluster, setup.nodes
    prefix = "10.244.251.0/26"
    setup.rogue.announce(Announce(prefix, next_hop="192.0.2.99"))
    for node in (n1, n2):
        cluster.wait(lambda: rejection(node, ROGUE, prefix) is not None or prefix in node.routes(),
                     what=f"{node.name} to judge {prefix} via 192.0.2.99")
        assert prefix not in node.routes()
        assert "next hop 192.0.2.99 is no node's address" in rejection(node, ROGUE, prefix)
    setup.rogue.withdraw(prefix)


def test_a_block_announced_with_another_nodes_next_hop(setup):
    """n1's block, next hop the ghost node: a node, but not the one IPAM gives the block to."""
    cluster, (n1, n2) = setup.cluster, setup.nodes
    (block,) = n1.blocks()
    setup.rogue.announce(Announce(block, next_hop=GHOST))
    cluster.wait(lambda: rejection(n2, ROGUE, block) is not None, what=f"n2 to reject {block} via the ghost")
    assert f"IPAM gives it to node n1 ({n1.ip}), not to ghost at next hop {GHOST}" in rejection(n2, ROGUE, block)
    assert f"{block} via {n1.ip} dev eth0" in n2.routes() and GHOST not in n2.routes()
    setup.rogue.withdraw(block)


def test_a_route_follows_ipam_when_a_block_is_claimed_and_released(setup):
    """The rogue announces a block for the ghost (a third-party next hop, as a ToR passes a
    node's route on) before IPAM has it: refused; the ghost claims it: installed; the
    block is released: gone again. Each time without the route being sent again."""
    cluster, n2 = setup.cluster, setup.nodes[1]
    block, address, handle = "10.244.240.0/26", "10.244.240.5", "net.ghost-pod.eth0"
    route = f"{block} via {GHOST} dev eth0"
    setup.rogue.announce(Announce(block, next_hop=GHOST))
    cluster.wait(lambda: rejection(n2, ROGUE, block) is not None or route in n2.routes(),
                 what=f"n2 to judge {block} before IPAM has it")
    assert route not in n2.routes()
    assert "IPAM has no block or borrowed address" in rejection(n2, ROGUE, block)
    ipam = IPAM(cluster.kv)
    ipam.assign_ip(address, handle, "ghost")
    cluster.wait(lambda: route in n2.routes(), what=f"n2 to install {block} once the ghost owns it")
    ipam.release_handle(handle)
    (bkey, revision), = ipam.empty_blocks("ghost")
    assert ipam.release_block(bkey, revision)
    cluster.wait(lambda: route not in n2.routes(), what=f"n2 to drop {block} once it is released")
    setup.rogue.withdraw(block)


def test_a_borrowed_address_announced_by_its_holder_is_accepted(setup):
    cluster, (n1, n2) = setup.cluster, setup.nodes
    tiny = {"ipam": {"ipv4_pools": ["zz-tiny"]}}
    _, first = n1.add_pod("t1", tiny)  # claims one /31
    pod2, other = n2.add_pod("t1", tiny)  # claims the other
    n1.add_pod("t2", tiny)  # fills n1's
    pod3, lent = n1.add_pod("t3", tiny)  # borrows from n2's block
    cluster.wait(lambda: any(b.startswith("10.246.") for b in n2.blocks()), what="n2's blackhole for its tiny block")
    n2_block = next(b for b in n2.blocks() if b.startswith("10.246."))
    assert lent in {str(ip) for ip in ipaddress.ip_network(n2_block)}, (lent, n2_block)
    cluster.wait(lambda: f"{lent} via {n1.ip} dev eth0" in n2.routes(),
                 what=f"n2 to install the borrowed {lent} via n1")
    assert rejection(n2, n1.ip, f"{lent}/32") is None
    assert ping(pod2.run, lent), f"pod {other} on n2 -> borrowed {lent} on n1"


def test_max_prefixes_bounds_what_is_kept_and_says_so(setup):
    cluster, n1 = setup.cluster, setup.nodes[0]
    cluster.wait(lambda: n1.peer(FLOOD)["dropped"] >= FLOODED - MAX_PREFIXES,
                 what=f"n1 to stop keeping routes from the flood past {MAX_PREFIXES}")
    peer = n1.peer(FLOOD)
    assert peer["accepted"] + peer["rejected"] <= MAX_PREFIXES, peer
    assert peer["state"] == "up" and f"max-prefixes {MAX_PREFIXES} reached" in peer["info"], peer
    kept = [line for line in n1.routes().splitlines() if line.startswith("198.18.")]
    assert len(kept) == MAX_PREFIXES, n1.routes()
    status = n1.status()
    row = next(line for line in status.stdout.splitlines() if line.startswith(FLOOD + " "))
    assert f"max-prefixes {MAX_PREFIXES} reached" in row and f"{MAX_PREFIXES} (reached" in row, status.stdout
    assert re.search(rf'routed_bgp_dropped_routes_total{{peer="{FLOOD}"}} ([0-9]+)', n1.agent.metrics())
