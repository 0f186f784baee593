"""The node's dataplane: veths, addresses, routes, encapsulation devices and sysctls.

One netlink layer, packed by hand (no pyroute2); the modules are imported by whoever
needs them:

- ``names``    host-side veth names (pure)
- ``netns``    ``in_netns``: run a block with the calling thread in another netns
- ``rtnl``     the codec (``Route``, requests, answers; pure) and the socket (``Rtnl``)
- ``bulk``     desired-state route sync: learned routes, block blackholes
- ``pod``      ``setup_pod`` / ``detach_pod`` / ``delete_link`` / ``check_pod``
- ``encap``    VXLAN and IPIP devices, VXLAN peers (neighbour + FDB entries)
- ``sysctl``   per-netns sysctl writes
- ``nat``      natOutgoing (iptables)
"""

from routed.dataplane.constants import ROUTE_PROTO

__all__ = ["ROUTE_PROTO"]
