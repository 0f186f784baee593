"""Asking the local agent's health port (node status, diags, version): one place, so the
commands that ask it do not import each other."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from routed.errors import RoutedError


def agent_get(agent: str, path: str, timeout: float = 5) -> bytes:
    """One document from the agent's health port, or a RoutedError saying where it was asked."""
    try:
        with urllib.request.urlopen(agent.rstrip("/") + path, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise RoutedError(f"cannot ask the routed agent at {agent}: {reason} "
                          "(run this on a node, or pass --agent URL)") from None


def agent_json(agent: str, path: str):
    body = agent_get(agent, path)
    try:
        return json.loads(body)
    except ValueError:
        raise RoutedError(f"the routed agent at {agent} answered {path} with something that is not JSON") from None


def add_agent_argument(parser) -> None:
    port = os.environ.get("ROUTED_HEALTH_PORT", "9099")
    parser.add_argument("--agent", default=os.environ.get("ROUTED_AGENT_URL", f"http://127.0.0.1:{port}"),
                        help="the agent's health endpoint (default: this node's, $ROUTED_AGENT_URL)")
