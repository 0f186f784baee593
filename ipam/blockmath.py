"""Address arithmetic for blocks and pools. Pure: no I/O, stdlib only."""

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator

from ipam.errors import AddressNotInBlock

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def block_for(ip: str | IPAddress, block_size: int) -> IPNetwork:
    """The block CIDR of prefix length ``block_size`` that contains ``ip``."""
    addr = ipaddress.ip_address(ip)
    if not 0 <= block_size <= addr.max_prefixlen:
        raise ValueError(f"block size /{block_size} is not valid for IPv{addr.version}")
    return ipaddress.ip_network((addr, block_size), strict=False)


def ordinal(block: IPNetwork, ip: str | IPAddress) -> int:
    """Position of ``ip`` within ``block`` (0 = the network address)."""
    addr = ipaddress.ip_address(ip)
    if addr.version != block.version or addr not in block:
        raise AddressNotInBlock(f"address {addr} is not in block {block}")
    return int(addr) - int(block.network_address)


def ip_at(block: IPNetwork, n: int) -> IPAddress:
    """The address at ordinal ``n`` of ``block``."""
    if not 0 <= n < block.num_addresses:
        raise AddressNotInBlock(f"ordinal {n} is outside block {block} "
                                f"(0..{block.num_addresses - 1})")
    return block.network_address + n


def blocks_in_pool(pool_cidr: str | IPNetwork, block_size: int,
                   start_key: str) -> Iterator[IPNetwork]:
    """Every block of the pool exactly once, starting at a node-specific offset.

    The offset comes from sha256 (not hash(), which is salted per process) so a node
    starts at the same place on every run, and different nodes start at different
    places instead of all racing for the pool's first free block. Lazy: a v6 pool can
    hold more blocks than fit in memory.
    """
    pool = ipaddress.ip_network(pool_cidr)
    if not pool.prefixlen <= block_size <= pool.max_prefixlen:
        raise ValueError(f"block size /{block_size} does not fit pool {pool} "
                         f"(must be /{pool.prefixlen}../{pool.max_prefixlen})")
    count = 1 << (block_size - pool.prefixlen)
    stride = 1 << (pool.max_prefixlen - block_size)
    base = int(pool.network_address)
    make = type(pool)  # an int alone would be read as IPv4 when it is small
    digest = hashlib.sha256(start_key.encode("utf-8")).digest()
    offset = int.from_bytes(digest, "big") % count
    return (
        make((base + ((offset + i) % count) * stride, block_size))
        for i in range(count)
    )


def handle_id(network: str, container_id: str, ifname: str) -> str:
    """The IPAM handle for one interface of one container: ``network.cid.ifname``.

    It becomes part of an etcd key, so a "/" would silently change the key's shape.
    """
    for name, part in (("network", network), ("container id", container_id),
                       ("interface name", ifname)):
        if not isinstance(part, str) or not part:
            raise ValueError(f"handle {name} must be a non-empty string, got {part!r}")
        if "/" in part:
            raise ValueError(f"handle {name} {part!r} must not contain '/'")
    return f"{network}.{container_id}.{ifname}"



def overlap_test(existing: Iterable[IPNetwork], pool: IPNetwork, block_size: int) -> Callable[[IPNetwork], bool]:
    """Whether a block of pool (of block_size) would overlap one of the existing blocks.

    Existing blocks of another size are what an earlier pool over the same addresses left
    behind; a block carved over them would hand their addresses out a second time.
    """
    narrower: set[IPNetwork] = set()  # the pool-sized blocks that contain an existing one
    wider: list[IPNetwork] = []  # existing blocks larger than this pool's blocks (rare)
    for block in existing:
        if block.version != pool.version or not block.overlaps(pool):
            continue
        if block.prefixlen >= block_size:
            narrower.add(block.supernet(new_prefix=block_size) if block.prefixlen > block_size else block)
        else:
            wider.append(block)
    return lambda cidr: cidr in narrower or any(cidr.subnet_of(w) for w in wider)
