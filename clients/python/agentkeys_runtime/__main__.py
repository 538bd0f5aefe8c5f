"""``python -m agentkeys_runtime check SERVICE``: fetch a credential and describe it.

Prints one JSON line with the service, length, page kind, delivery mode and the SHA-256
of the credential bytes, never the bytes themselves. ``--hold`` then waits for a line on
stdin before exiting, so a test can inspect the process's memory after the block ended.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

from ._client import credential, credential_inline
from ._errors import AgentkeysError


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        report = (
            _check_inline(args.service, args.socket)
            if args.inline
            else _check(args.service, args.socket)
        )
    except AgentkeysError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    if args.hold:
        sys.stdin.readline()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agentkeys_runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="fetch a credential and print its length and SHA-256")
    check.add_argument("service")
    check.add_argument(
        "--inline", action="store_true", help="ask for the value as text (no fd delivery)"
    )
    check.add_argument(
        "--socket", metavar="PATH", help="the daemon's socket (default: as the daemon)"
    )
    check.add_argument(
        "--hold", action="store_true", help="after printing, wait for a line on stdin"
    )
    return parser


def _check(service: str, socket: str | None) -> dict[str, Any]:
    cred = credential(service, socket=socket)
    with cred as buf:
        # hashlib reads the memoryview in place: no copy of the bytes is made here.
        digest = hashlib.sha256(buf).hexdigest()
    return _report(service, cred.length, cred.kind, digest, cred.mode)


def _check_inline(service: str, socket: str | None) -> dict[str, Any]:
    value = credential_inline(service, socket=socket).encode()
    return _report(service, len(value), None, hashlib.sha256(value).hexdigest(), "inline")


def _report(service: str, length: int, kind: str | None, digest: str, mode: str) -> dict[str, Any]:
    return {"service": service, "length": length, "kind": kind, "sha256": digest, "mode": mode}


if __name__ == "__main__":
    sys.exit(main())
