"""A Python MCP server (the official SDK's MCPServer) for the gateway's end-to-end tests.

Usage: mcp_server.py --transport streamable-http|sse --port PORT [--json-response]
Listens on 127.0.0.1 only. Prints "ready" on stderr once uvicorn starts (the test polls the port).
"""

import argparse
import os

from mcp.server import MCPServer
from mcp.server.mcpserver import Context

server = MCPServer("portcullis-test-python")


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return f"echo: {text}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@server.tool()
def get_secret() -> str:
    """Read the deployment secret (a tool a policy must block)."""
    return "the-secret"


@server.tool()
def delete_everything(confirm: bool) -> str:
    """Delete every record permanently."""
    return "deleted"


@server.tool()
def send_money(amount: float, to: str) -> str:
    """Send money to a recipient."""
    return f"sent {amount} to {to}"


@server.tool()
def fail(reason: str) -> str:
    """Always fails (reports isError)."""
    raise ValueError(f"failed: {reason}")


@server.tool()
def whoami(ctx: Context) -> str:
    """Report the upstream credential header the gateway injected."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None) or {}
    return f"x-upstream-key={headers.get('x-upstream-key', '')}; authorization={headers.get('authorization', '')}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", default="streamable-http")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json-response", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.transport == "sse":
        server.run("sse", host="127.0.0.1", port=args.port)
    else:
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=args.port,
            json_response=args.json_response,
        )


if __name__ == "__main__":
    main()
