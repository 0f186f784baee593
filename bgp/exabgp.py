"""ExaBGP 5.0 configuration and environment for one node (pure rendering).

Facts this rests on (seen with ExaBGP 5.0.15, see docs/design.md): every API process needs
`encoder json`; state and received updates reach the process only with
`api { neighbor-changes; receive { parsed; update; } }`; ExaBGP listens only when
tcp.bind is set; started as root it drops to `nobody` unless told not to.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .peers import LocalSpeaker, Peer

PROCESS = "routed"

def environment(speaker: LocalSpeaker) -> dict[str, str]:
    # api_cli off: ExaBGP's CLI creates named pipes that several nodes on one machine
    # (the lab) would share, and routed talks to ExaBGP through its API process anyway.
    return {
        "exabgp_daemon_user": "root",
        "exabgp_daemon_drop": "false",
        "exabgp_tcp_bind": " ".join(filter(None, (speaker.address, speaker.address6))),
        "exabgp_tcp_port": str(speaker.listen_port),
        "exabgp_api_cli": "false",
        "exabgp_api_ack": "true",
        "exabgp_log_destination": "stdout",
        # INFO at least, whatever logSeverity says: the speaker reads "performing reload"
        # (an INFO line) to know a configuration change took effect.
        "exabgp_log_level": "DEBUG" if speaker.log_severity == "Debug" else "INFO",
    }


_SAFE_PASSWORD = re.compile(r'^[^"\n\\;{}]{1,80}$')


@dataclass(frozen=True)
class Rendered:
    text: str
    skipped: dict[str, str]  # peer address -> why it was left out


def render(speaker: LocalSpeaker, peers: list[Peer], helper_command: str,
           passwords: dict[str, str] | None = None) -> Rendered:
    """The configuration file. passwords: peer address -> TCP MD5 password (already resolved).

    A peer that cannot be rendered is left out (and said why), never the whole file:
    one bad BGPPeer must not take every other session and announcement down with it.
    """
    passwords = passwords or {}
    lines = [f"# routed: ExaBGP configuration of node {speaker.node}; written by the agent, do not edit",
             f"process {PROCESS} {{", f"  run {helper_command};", "  encoder json;", "}", ""]
    skipped = {}
    for peer in peers:
        try:
            lines += _neighbor(speaker, peer, passwords.get(peer.address))
        except ValueError as err:
            skipped[peer.address] = str(err)
    return Rendered("\n".join(lines), skipped)


def _neighbor(speaker: LocalSpeaker, peer: Peer, password: str | None) -> list[str]:
    remote = ipaddress.ip_address(peer.address)
    source = speaker.address6 if remote.version == 6 else speaker.address
    if source is None:
        # ExaBGP refuses the whole file over one such neighbor, every session with it.
        raise ValueError(f"peer {peer.address} is IPv6 and this node has only an IPv4 address "
                         f"({speaker.address}): a session needs both of one family (register an IPv6 "
                         "address: --node-ip6)")
    lines = [f"neighbor {peer.address} {{",
             f"  description \"{peer.kind} {peer.name}\";",
             f"  router-id {speaker.address};",
             # sourceAddress None: no fixed source, the kernel's route to the peer chooses it.
             f"  local-address {'auto' if peer.source_address == 'None' else source};",
             f"  local-as {speaker.as_number};",
             f"  peer-as {peer.as_number};",
             f"  hold-time {peer.hold_time};",
             "  passive false;",
             # We send End-of-RIB ourselves once our blocks are announced: a peer in
             # graceful restart would otherwise flush our routes before they arrive.
             "  manual-eor true;",
             "  group-updates true;"]
    if peer.port != speaker.listen_port:  # ExaBGP connects to its own listen port otherwise
        lines.append(f"  connect {peer.port};")
    if password is not None:
        if not _SAFE_PASSWORD.match(password):
            raise ValueError(f"the MD5 password of peer {peer.address} is empty, longer than 80 characters "
                             "or has a character ExaBGP cannot take: \" \\ ; { } newline")
        lines.append(f'  md5-password "{password}";')
    if peer.graceful_restart:
        lines.append(f"  capability {{ graceful-restart {peer.graceful_restart}; }}")
    # One family a session, its own: an IPv6 session carries IPv6 blocks with this
    # node's IPv6 address as next hop (next-hop self), never IPv4 ones.
    return lines + [f"  family {{ ipv{remote.version} unicast; }}",
                    "  api {",
                    f"    processes [ {PROCESS} ];",
                    "    neighbor-changes;",
                    "    receive { parsed; update; notification; }",
                    "  }",
                    "}", ""]
