"""Dataplane errors. All are RoutedError, so the CNI server and the CLI print one line.

They live here rather than in routed/errors.py to keep the dataplane self-contained;
they can move there unchanged.
"""

from __future__ import annotations

from routed.errors import RoutedError


class DataplaneError(RoutedError):
    """A netlink or sysctl step failed; the message names the step and the object."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class InterfaceExists(DataplaneError):
    """The requested interface name already exists in the pod's netns (a CNI error:
    the runtime asked for an interface it already has). Nothing was changed."""


class NetnsNotFound(DataplaneError):
    """The netns path does not exist or is not a network namespace."""


class RouteConflict(DataplaneError):
    """A route to the pod's address already exists through another interface."""
