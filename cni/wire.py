"""The agent's side of the CNI plugin's wire format (the plugin's side: cni/goplugin/main.go).

Request: CNI_* variables as KEY=VALUE items separated by NUL, two NULs, then the
network configuration. Answer: the exit code, a newline, the text to print.
Spooled DELs are stored as requests in the same format.
"""

from __future__ import annotations

MAX_REQUEST = 1 << 20  # a network configuration larger than 1 MiB is not one


class BadRequest(ValueError):
    pass


def parse_request(data: bytes) -> tuple[dict[str, str], str]:
    if len(data) > MAX_REQUEST:
        raise BadRequest("request larger than 1 MiB")
    head, sep, body = data.partition(b"\0\0")
    if not sep:
        raise BadRequest("no end of the environment (expected two NULs)")
    try:
        items = head.decode("utf-8").split("\0") if head else []
        stdin = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"not UTF-8: {err}") from None
    env = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.startswith("CNI_"):
            raise BadRequest(f"bad environment item {item[:60]!r}")
        env[key] = value
    return env, stdin


def encode_request(env: dict[str, str], stdin: str) -> bytes:
    """What the plugin sends (for tests and for re-spooling)."""
    items = "\0".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("CNI_"))
    return (items + "\0\0" + stdin).encode()


def encode_answer(code: int, stdout: str) -> bytes:
    return f"{code}\n".encode() + stdout.encode()
