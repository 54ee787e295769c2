"""Opens N MCP sessions through the gateway and keeps each one's GET stream open.

Usage: open_sessions.py GATEWAY_URL N
Standard library only (raw HTTP/1.1 over asyncio). Prints "open N" once every session has its
stream open, then holds them until standard input closes.
"""

import asyncio
import json
import sys
from urllib.parse import urlsplit

INIT = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "bench", "version": "1"}},
}).encode()
INITIALIZED = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()


async def request(host, port, method, path, headers, body=b"", keep=False):
    reader, writer = await asyncio.open_connection(host, port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "", ""]
    writer.write("\r\n".join(lines).encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    found = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            found[k.strip().lower()] = v.strip()
    if keep:
        return status, found, (reader, writer)
    writer.close()
    return status, found, None


async def open_one(host, port, path):
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    status, headers, _ = await request(host, port, "POST", path, base, INIT)
    session = headers.get("mcp-session-id")
    if status != 200 or not session:
        raise RuntimeError(f"initialize answered {status} without a session")
    follow = dict(base, **{"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"})
    await request(host, port, "POST", path, follow, INITIALIZED)
    stream = {"Accept": "text/event-stream", "Mcp-Session-Id": session,
              "MCP-Protocol-Version": "2025-11-25"}
    status, _, conn = await request(host, port, "GET", path, stream, keep=True)
    if status != 200:
        raise RuntimeError(f"GET stream answered {status}")
    return conn


async def main():
    url, n = sys.argv[1], int(sys.argv[2])
    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port, parts.path
    conns = []
    for start in range(0, n, 50):
        batch = [open_one(host, port, path) for _ in range(min(50, n - start))]
        conns += await asyncio.gather(*batch)
    print(f"open {len(conns)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for _, writer in conns:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
