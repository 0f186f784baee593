"""routed's own version, as installed (one answer for routedctl, the agent and diags)."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("routed")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
