"""An MCP agent on the official Python SDK (PyPI `mcp`) that supports URL-mode
elicitation (MCP 2025-11-25). It spawns `agentkeys-daemon mcp` and calls get_credential on
a high-value credential. When the daemon asks it to open the approval page, it records
the request and plays the human: it runs APPROVER with the code from the URL appended
(`agentkeys approve --yes CODE`, the master's side), then accepts. It prints one JSON line:
what was elicited, which elicitations the daemon said were complete, and what the call
returned (length and SHA-256 of the value, never the value).

usage: mcp_sdk_elicitation.py DAEMON_BINARY SERVICE APPROVER [ARGS...]
"""

import hashlib
import json
import os
import subprocess
import sys

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters


async def main() -> None:
    daemon, service, approver = sys.argv[1], sys.argv[2], sys.argv[3:]
    seen = []
    completed = []

    async def on_message(message) -> None:
        # notifications/elicitation/complete: the daemon says the page's request was decided.
        inner = getattr(message, "root", message)
        if getattr(inner, "method", None) == "notifications/elicitation/complete":
            completed.append(getattr(inner.params, "elicitation_id", None))

    async def on_elicit(context, params):
        url = getattr(params, "url", None)
        seen.append({
            "mode": getattr(params, "mode", None),
            "url": url,
            "message": params.message,
            "elicitation_id": getattr(params, "elicitation_id", None),
        })
        code = url.rstrip("/").rsplit("/", 1)[-1]
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(approver + [code], capture_output=True, text=True)
        )
        seen[-1]["approver_exit"] = done.returncode
        return types.ElicitResult(action="accept")

    params = StdioServerParameters(
        command=daemon,
        args=["mcp"],
        env={"AGENTKEYS_SOCKET": os.environ["AGENTKEYS_SOCKET"], "PATH": os.environ.get("PATH", "")},
    )
    async with Client(
        params, mode="legacy", elicitation_callback=on_elicit, message_handler=on_message
    ) as client:
        result = await client.call_tool("get_credential", {"service": service})
        text = result.content[0].text
        print(json.dumps({
            "elicited": seen,
            "completed": completed,
            "is_error": bool(result.is_error),
            "length": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "error_text": text if result.is_error else None,
        }), flush=True)


anyio.run(main)
