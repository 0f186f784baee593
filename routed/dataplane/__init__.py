"""The pod dataplane: veths, addresses, routes and sysctls, over netlink (pyroute2 IPRoute).

Importing this package is cheap (no pyroute2); the modules that talk netlink are
imported by whoever needs them:

- ``names``    host-side veth names (pure)
- ``netns``    ``in_netns``: run a block with the calling thread in another netns
- ``netlink``  opening IPRoute sockets in a netns, errno helpers
- ``sysctl``   per-netns sysctl writes
- ``pod``      ``setup_pod`` / ``teardown_pod`` / ``check_pod``
- ``routes``   ``list_routes`` / ``sync_blackholes``
"""

from routed.dataplane.constants import ROUTE_PROTO

__all__ = ["ROUTE_PROTO"]
