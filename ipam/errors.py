"""IPAM errors. Each is a RoutedError, so the edges print it as one line."""

from collections.abc import Iterable

from routed.errors import RoutedError


class AddressInUse(RoutedError):
    """A specific address was requested but is already allocated."""


class AddressNotInBlock(RoutedError, ValueError):
    """An address (or ordinal) lies outside the block it was used with.

    Also a ValueError: it is a bad argument as much as a user-facing error.
    """


class InvalidBlock(RoutedError, ValueError):
    """A block CIDR that cannot be a block (host bits set, too many addresses)."""


class AddressNotInPool(RoutedError):
    """A requested address is not inside any (enabled) IP pool."""


class NoMatchingPool(RoutedError):
    """No enabled IP pool selects this node / matches the requested family."""


class TooManyBlocks(RoutedError):
    """The node already holds its maximum number of affine blocks."""


class PoolExhausted(RoutedError):
    """No free address in any of the pools the node may use."""

    def __init__(self, pools: Iterable[object], node: str):
        self.pools = [str(p) for p in pools]
        self.node = node
        names = ", ".join(self.pools) or "(none)"
        super().__init__(f"no free address for node {node!r} in pool(s) {names}")

    def __reduce__(self):
        # The constructor takes (pools, node), not the message; keep pickling working.
        return (type(self), (self.pools, self.node))
