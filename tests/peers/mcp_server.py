"""A Python MCP server (the official SDK's MCPServer) for the gateway's end-to-end tests.

Usage: mcp_server.py --transport streamable-http|sse|stdio [--port PORT] [--json-response]
Listens on 127.0.0.1 only (stdio: speaks on stdin and stdout). Prints "ready" on stderr once uvicorn starts (the test polls the port).
Over SSE every request (the stream and each message POST) must carry the credential header the
gateway injects (`x-upstream-key: upstream-secret`), else it is answered 401.
"""

import argparse
import os
from typing import Annotated

import mcp.types as types
import uvicorn
from pydantic import BaseModel

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Elicit, Resolve, Sample

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


class Name(BaseModel):
    name: str


async def ask_name(topic: str, ctx: Context) -> Elicit[Name]:
    # With a progress token, the notification makes a stateless-era answer an SSE stream.
    await ctx.report_progress(0.5, message=f"asking who wants to know about {topic}")
    return Elicit(f"Who wants to know about {topic}?", Name)


def sample_topic(topic: str) -> Sample:
    prompt = types.TextContent(type="text", text=f"Tell me about {topic}")
    return Sample([types.SamplingMessage(role="user", content=prompt)], max_tokens=20)


@server.tool()
def consult(
    topic: str,
    who: Annotated[Name, Resolve(ask_name)],
    sampled: Annotated[types.CreateMessageResult, Resolve(sample_topic)],
) -> str:
    """Ask the client who is asking (elicitation) and what its model says (sampling).

    Before 2026-07-28 these are requests to the client in the middle of the call; from
    2026-07-28 they come back as one `input_required` result, answered by a retry.
    """
    text = getattr(sampled.content, "text", "")
    return f"{who.name} asked about {topic}; {text}"


def require_upstream_key(app):
    """ASGI middleware: refuse HTTP requests without the gateway-injected credential."""

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"x-upstream-key") != b"upstream-secret":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"missing x-upstream-key"})
                return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", default="streamable-http")
    parser.add_argument("--port", type=int)
    parser.add_argument("--json-response", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.transport == "stdio":
        server.run("stdio")
    elif args.transport == "sse":
        app = require_upstream_key(server.sse_app(host="127.0.0.1"))
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    else:
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=args.port,
            json_response=args.json_response,
        )


if __name__ == "__main__":
    main()
