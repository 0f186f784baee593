"""The chart's BIRD route reflector, run as rendered: a real BIRD on the chart's bird.conf (MD5
from a Secret, default clientRanges), GoBGP nodes as its clients, and an outsider.

    rr .250             BIRD, the chart's bird-0.conf
    node-a .11, node-b .12   GoBGP, iBGP AS 64512, rr clients with the Secret's password
    outsider 198.51.100.7    GoBGP on the same wire, outside every clientRange

node-a announces its block and a borrowed address (both reflected to node-b, next hop
node-a), and a /27 slice, another node's block with node-b's next hop, and a prefix
outside the pool: the reflector takes none of those.
"""

from __future__ import annotations

import pytest

from tests.bgp.routers import Announce, Bird, GoBgp, Neighbor, RouterSpec, module_cluster, wait_for
from tests.chart import chartutil as cu

pytestmark = [pytest.mark.root, pytest.mark.slow]

AS = 64512
RR, A, B, OUTSIDER = "192.0.2.250", "192.0.2.11", "192.0.2.12", "198.51.100.7"
PASSWORD = "rr-md5-s3cret"
GOOD = ["10.244.0.0/26", "10.244.1.5/32"]
BAD = ["10.244.0.64/27", "10.244.2.0/26", "198.51.100.0/24"]


class ChartBird(Bird):
    """BIRD on a configuration the chart rendered, its password include pointed at a file here."""

    def __init__(self, netns, workdir, spec, text: str):
        super().__init__(netns, workdir, spec)
        (self.workdir / "password.conf").write_text(f'password "{PASSWORD}";\n')
        self.text = text.replace('include "/run/bird/password.conf";',
                                 f'include "{self.workdir}/password.conf";')

    def render(self) -> str:
        return self.text


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    rendered = cu.render({"routeReflector": {"enabled": True, "addresses": [f"{RR}/24"],
                                             "passwordSecret": {"name": "rr-bgp", "key": "password"}}})
    text = rendered.get("ConfigMap", "routed-route-reflector")["data"]["bird-0.conf"]
    with module_cluster(tmp_path_factory.mktemp("chart-rr")) as cluster:
        rr = cluster.add_router("rr", lambda ns, wd, spec: ChartBird(ns, wd, spec, text), RouterSpec(RR, AS))
        clients = {}
        for name, address, announce in (
                ("node-a", A, [Announce(p) for p in GOOD + ["10.244.0.64/27", "198.51.100.0/24"]]
                 + [Announce("10.244.2.0/26", next_hop=B)]),
                ("node-b", B, [])):
            spec = RouterSpec(address, AS, [Neighbor(RR, AS, password=PASSWORD)], announce)
            clients[name] = cluster.add_router(name, GoBgp, spec)
        outsider = cluster.add_router("outsider", GoBgp, RouterSpec(OUTSIDER, AS, [Neighbor(RR, AS)],
                                                                    [Announce("10.244.3.0/26")]))
        # Same wire, another subnet: each side reaches the other directly.
        outsider.run("ip", "route", "add", f"{RR}/32", "dev", "eth0")
        rr.run("ip", "route", "add", f"{OUTSIDER}/32", "dev", "eth0")
        for client in clients.values():
            client.wait_established([RR])
        yield rr, clients, outsider


def test_the_reflector_takes_only_block_shaped_routes_from_their_node(fabric):
    rr, clients, _ = fabric
    for prefix in GOOD:
        rr.wait_route(prefix, A)
        clients["node-b"].wait_route(prefix, A)  # reflected, next hop unchanged
    rib = rr.rib()
    assert not set(BAD) & set(rib), rib
    assert not set(BAD) & set(clients["node-b"].rib()), clients["node-b"].rib()


def test_the_reflector_is_closed_to_addresses_outside_its_client_ranges(fabric):
    rr, clients, outsider = fabric
    # The outsider's connections reach BIRD, which turns them away.
    wait_for(lambda: f"from unknown address {OUTSIDER}" in rr.log.read_text(), 60,
             "BIRD to turn the outsider away", rr.log)
    assert RR not in outsider.established()
    clients["node-b"].wait_route(GOOD[0], A)
    assert "10.244.3.0/26" not in rr.rib() and "10.244.3.0/26" not in clients["node-b"].rib()
