"""A plain MCP agent, built on the official Python SDK (PyPI `mcp`): it spawns
`agentkeys-daemon mcp`, reads one credential inline, prints its length and SHA-256 as one
JSON line, then waits for a line on stdin (the test scans its memory meanwhile).

usage: mcp_sdk_client.py DAEMON_BINARY SERVICE
"""

import hashlib
import json
import os
import sys

import anyio
from mcp import Client, StdioServerParameters


async def main() -> None:
    daemon, service = sys.argv[1], sys.argv[2]
    params = StdioServerParameters(
        command=daemon,
        args=["mcp"],
        env={"AGENTKEYS_SOCKET": os.environ["AGENTKEYS_SOCKET"], "PATH": os.environ.get("PATH", "")},
    )
    async with Client(params, mode="legacy") as client:
        result = await client.call_tool("get_credential", {"service": service})
        text = result.content[0].text
        digest = hashlib.sha256(text.encode()).hexdigest()
        print(json.dumps({"length": len(text), "sha256": digest}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)


anyio.run(main)
