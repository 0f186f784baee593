"""Numbers and addresses the dataplane shares with the rest of routed (no I/O)."""

# Routing protocol number stamped on every route routed installs (host routes to
# pods, blackholes for owned blocks, routes learned over BGP). 201 is unassigned in
# /etc/iproute2/rt_protos, so nothing else on a node uses it by accident; reconcilers
# only ever delete routes that carry it, which is what lets them share the kernel
# tables with the distribution, kube-proxy and the administrator.
ROUTE_PROTO = 201

# Protocol number of routes to other nodes' blocks learned over BGP. A number of its
# own, so the learned-route reconciler (which only ever deletes proto 202) and the
# local reconcilers (which only ever delete proto 201) can never remove each other's
# routes, whatever either one's desired state says.
ROUTE_PROTO_BGP = 202

# Every host-side veth gets this MAC. Pods never learn a real host MAC, so the pod's
# ARP/neighbour entries stay valid whatever happens to the host interface.
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"

# The pod's IPv4 gateway: never configured on any interface; the host veth answers ARP
# for it through proxy_arp. Same address in every pod, as in Calico.
POD_GATEWAY_V4 = "169.254.1.1"

# The pod's IPv6 gateway: the EUI-64 link-local address the kernel derives from
# HOST_VETH_MAC on the host veth, so it exists without being configured.
POD_GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"

# Host-side veth names: prefix + 11 hex chars = 15, the kernel's limit (IFNAMSIZ - 1).
VETH_PREFIX = "cali"

# Encapsulation devices (encap.py creates them; routes name them as their device).
VXLAN_DEV = "vxlan.routed"
VXLAN6_DEV = "vxlan-v6.routed"  # VXLAN over IPv6 between the nodes' IPv6 addresses (Calico: vxlan-v6.calico)
IPIP_DEV = "tunl0"  # the fallback device the ipip module creates in every netns

# WireGuard (routed/dataplane/wireguard.py). The device name fits IFNAMSIZ (15), which
# "wireguard.routed" does not. Pod traffic to WireGuard peers is routed by a table of
# our own (proto ROUTE_PROTO routes), looked up through one rule of ours, tagged with
# ROUTE_PROTO too, ahead of the main table (32766) like Calico's (99).
WIREGUARD_DEV = "wg.routed"
WIREGUARD_TABLE = 201
WIREGUARD_RULE_PRIORITY = 99
WIREGUARD_PORT = 51820
