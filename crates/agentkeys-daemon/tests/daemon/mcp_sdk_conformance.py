"""Drives `agentkeys-daemon mcp` with the official MCP Python SDK in one negotiation mode:
lists the tools, reads an in-scope credential, asks for an out-of-scope one, and runs a
command through the `run` tool. Prints one JSON summary line (never a credential: only
its SHA-256).

usage: mcp_sdk_conformance.py MODE DAEMON_BINARY     (MODE: legacy or auto)
"""

import hashlib
import json
import os
import sys

import anyio
from mcp import Client, StdioServerParameters


async def main() -> None:
    mode, daemon = sys.argv[1], sys.argv[2]
    params = StdioServerParameters(
        command=daemon,
        args=["mcp"],
        env={"AGENTKEYS_SOCKET": os.environ["AGENTKEYS_SOCKET"], "PATH": os.environ.get("PATH", "")},
    )
    async with Client(params, mode=mode) as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        ok = await client.call_tool("get_credential", {"service": "openai"})
        denied = await client.call_tool("get_credential", {"service": "github"})
        run = await client.call_tool(
            "run",
            {"argv": ["sh", "-c", 'printf %s "$OPENAI_API_KEY" | wc -c'], "services": ["openai"]},
        )
        print(
            json.dumps(
                {
                    "protocol": str(client.protocol_version),
                    "tools": tools,
                    "sha256": hashlib.sha256(ok.content[0].text.encode()).hexdigest(),
                    "ok_is_error": bool(ok.is_error),
                    "denied_is_error": bool(denied.is_error),
                    "denied_text": denied.content[0].text,
                    "run": json.loads(run.content[0].text),
                }
            ),
            flush=True,
        )


anyio.run(main)
