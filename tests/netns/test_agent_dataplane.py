"""The agent's dataplane adapter used the way the agent uses it: from many threads."""

from __future__ import annotations

import ipaddress
import subprocess
import threading

import pytest

from routed.agent.podnet import HostDataplane
from routed.errors import RoutedError
from tests.support.netns import Netns, sh

pytestmark = pytest.mark.root


@pytest.fixture
def host(root):
    ns = Netns("host")
    try:
        yield ns
    finally:
        ns.delete()


def test_operations_from_other_threads_stay_in_the_host_netns(host):
    """A netlink socket belongs to the netns it was opened in: pyroute2 0.9 (used here
    once) opened its socket lazily in the *calling* thread's netns, and a CNI worker
    thread created a pod veth in the real host netns. Never again."""
    real_host_links = sh("ip", "-o", "link").stdout
    pods = [Netns(f"pod{i}") for i in range(4)]
    dataplane = HostDataplane(host.name)
    errors = []

    def add(i, pod):
        try:
            dataplane.setup(pod.path, "eth0", f"calitest{i}", [ipaddress.ip_address(f"10.77.0.{i + 1}")], 1450)
        except Exception as err:  # collected and asserted below
            errors.append(err)

    try:
        threads = [threading.Thread(target=add, args=(i, p)) for i, p in enumerate(pods)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        links = host.run("ip", "-o", "link").stdout
        assert all(f"calitest{i}" in links for i in range(4))
        assert "calitest" not in sh("ip", "-o", "link").stdout
        routes = host.run("ip", "route", "show", "proto", "201").stdout
        assert all(f"10.77.0.{i + 1} dev calitest{i}" in routes for i in range(4))
        thread = threading.Thread(target=dataplane.sync_blackholes, args=({"10.77.0.0/26"},))
        thread.start()
        thread.join()
        assert "blackhole 10.77.0.0/26" in host.run("ip", "route", "show", "proto", "201").stdout
        assert "10.77.0.0/26" not in subprocess.run(["ip", "route", "show", "table", "all"],
                                                   capture_output=True, text=True).stdout
    finally:
        for p in pods:
            p.delete()
    assert sh("ip", "-o", "link").stdout.count("cali") == real_host_links.count("cali")


def test_node_addresses_from_the_kernel(host):
    dataplane = HostDataplane(host.name)
    host.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    host.run("ip", "link", "set", "uplink0", "up")
    host.run("ip", "addr", "add", "192.0.2.7/24", "dev", "uplink0")
    with pytest.raises(RoutedError, match="no IPv4 default route"):
        dataplane.default_route_address()
    host.run("ip", "route", "add", "default", "via", "192.0.2.1", "dev", "uplink0")
    assert dataplane.default_route_address() == "192.0.2.7/24"
    assert dataplane.address_with_prefix("192.0.2.7") == "192.0.2.7/24"
    assert dataplane.address_with_prefix("192.0.2.8") is None
    assert dataplane.use_uplink("192.0.2.7/24") == "uplink0" and dataplane.local_ip == "192.0.2.7"
    with pytest.raises(RoutedError, match="no interface holds the node address 192.0.2.8"):
        dataplane.use_uplink("192.0.2.8/24")
