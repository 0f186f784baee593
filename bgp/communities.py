"""Which BGP communities go with each prefix a node announces (pure logic).

BGPConfiguration's prefixAdvertisements, as Calico has them: every entry whose CIDR holds
the announced prefix (the CIDR itself included) adds its communities, so one entry for a
pool tags every block and borrowed address in it, and one for a service range every
service address. Values are Calico's: standard "aa:nn" and large "aa:nn:mm".
"""

from __future__ import annotations

import ipaddress


def attributes(prefixes, advertisements: list[tuple[str, tuple[str, ...]]]) -> dict[str, str]:
    """prefix -> its ExaBGP attribute text (" community [..] large-community [..]"), "" for none."""
    networks = [(ipaddress.ip_network(cidr, strict=False), values) for cidr, values in advertisements]
    out = {}
    for prefix in prefixes:
        net = ipaddress.ip_network(prefix, strict=False)
        values: list[str] = []
        for cidr, extra in networks:
            if net.version == cidr.version and net.subnet_of(cidr):
                values += [v for v in extra if v not in values]
        out[prefix] = render(values)
    return out


def render(values: list[str]) -> str:
    standard = sorted((v for v in values if v.count(":") == 1), key=_numbers)
    large = sorted((v for v in values if v.count(":") == 2), key=_numbers)
    text = f" community [{' '.join(standard)}]" if standard else ""
    return text + (f" large-community [{' '.join(large)}]" if large else "")


def _numbers(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split(":"))
