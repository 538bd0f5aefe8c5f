#!/usr/bin/env python3
"""A minimal MCP client (standard library only) for the demo: it starts the command given
on its command line (e.g. `agentkeys-daemon mcp`), speaks newline-delimited JSON-RPC to it,
and prints what an agent would see, with credential values masked."""
import json
import subprocess
import sys


def main() -> int:
    proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    next_id = 0

    def request(method, params):
        nonlocal next_id
        next_id += 1
        msg = {"jsonrpc": "2.0", "id": next_id, "method": method, "params": params}
        proc.stdin.write((json.dumps(msg) + "\n").encode())
        proc.stdin.flush()
        while True:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("the MCP server closed the connection")
            answer = json.loads(line)
            if answer.get("id") == next_id:
                return answer

    init = request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                  "clientInfo": {"name": "demo-agent", "version": "1"}})
    info = init["result"]["serverInfo"]
    print(f"  connected to MCP server '{info['name']}' {info['version']}, "
          f"protocol {init['result']['protocolVersion']}")
    proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    proc.stdin.flush()
    tools = request("tools/list", {})["result"]["tools"]
    print("  tools:", ", ".join(t["name"] for t in tools))
    ok = True
    for service in sys.stdin.readline().split():
        result = request("tools/call", {"name": "get_credential",
                                        "arguments": {"service": service}})["result"]
        text = result["content"][0]["text"]
        if result.get("isError"):
            print(f"  get_credential {service}: refused: {text}")
        else:
            print(f"  get_credential {service}: got {len(text)} bytes ({text[:3]}…, not printed)")
    who = request("tools/call", {"name": "whoami", "arguments": {}})["result"]["content"][0]["text"]
    print("  whoami:", who)
    proc.stdin.close()
    proc.wait(timeout=10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
