"""Errors a user sees. Each carries one line that names the problem.

Every way into routed (CLI, CNI, datastore reads, BGP updates) turns bad input into
one of these; the edges print ``str(err)`` and, only with --debug, the traceback.
"""


class RoutedError(Exception):
    """Base for every error that is meant to be shown to a user as one line."""


class InvalidResource(RoutedError):
    """A resource failed validation (bad field, unknown field, overlapping pool...)."""


class NotFound(RoutedError):
    pass


class AlreadyExists(RoutedError):
    pass


class Conflict(RoutedError):
    """A compare-and-swap lost to a concurrent writer; callers may retry."""


class DatastoreUnavailable(RoutedError):
    """No etcd endpoint answered; the message names the endpoint(s) tried."""


class CorruptData(RoutedError):
    """The datastore holds a value that does not parse; the message names the key."""
