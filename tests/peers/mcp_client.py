"""A Python MCP client (the official SDK's Client) for the gateway's end-to-end tests.

Usage: mcp_client.py URL MODE PLAN_JSON
  URL: a Streamable HTTP URL, or "stdio:" and a JSON object {"command", "args", "env"} to
  launch a stdio server (the SDK's stdio client).
  MODE: "legacy" (initialize handshake, session era) or "2026-07-28" (stateless era).
  PLAN_JSON: a list of steps: {"op": "list"} or {"op": "call", "name": ..., "args": {...}}.
Prints one JSON line: the result of each step, {"ok": ...} or {"error": "..."}.
Answers sampling requests with the text "sampled: <prompt>" and elicitation requests by
accepting {"name": "Ada"}.
"""

import asyncio
import json
import sys

import mcp.types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters


async def sampling(context, params):
    prompt = ""
    for message in params.messages:
        content = message.content
        if getattr(content, "type", None) == "text":
            prompt = content.text
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"sampled: {prompt}"),
        model="portcullis-test-model",
        stop_reason="endTurn",
    )


async def elicitation(context, params):
    return types.ElicitResult(action="accept", content={"name": "Ada"})


def describe_call(result):
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    return {"is_error": bool(result.is_error), "text": "\n".join(texts), "meta": result.meta}


async def run(url, mode, plan):
    out = []
    server = url
    if url.startswith("stdio:"):
        server = StdioServerParameters(**json.loads(url[len("stdio:"):]))
    async with Client(
        server,
        mode=mode,
        sampling_callback=sampling,
        elicitation_callback=elicitation,
    ) as client:
        for step in plan:
            try:
                if step["op"] == "list":
                    result = await client.list_tools(cache_mode="bypass")
                    out.append({"ok": sorted(t.name for t in result.tools)})
                elif step["op"] == "call":
                    result = await client.call_tool(step["name"], step.get("args", {}))
                    out.append({"ok": describe_call(result)})
                else:
                    out.append({"error": f"unknown op {step['op']}"})
            except Exception as e:  # noqa: BLE001 - every failure is a test observation
                out.append({"error": f"{type(e).__name__}: {e}"})
    return out


def main():
    url, mode, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps(asyncio.run(run(url, mode, plan)), default=str))


if __name__ == "__main__":
    main()
