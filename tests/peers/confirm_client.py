"""A Python MCP client (the official SDK's Client) whose user answers the gateway's confirmations.

Usage: confirm_client.py URL MODE ANSWER PLAN_JSON
  URL: a Streamable HTTP URL.
  MODE: "legacy" (initialize handshake, session era) or "2026-07-28" (stateless era).
  ANSWER: what the user does when asked to confirm a call:
    "confirm"  accept with the confirmation ticked;
    "untick"   accept without it;
    "decline", "cancel";
    "wait:S"   answer nothing for S seconds, then confirm;
    "quit"     close the connection while the question is open (the process exits, code 3);
    "unable"   no elicitation callback at all: the client does not declare elicitation.
  PLAN_JSON: a list of steps {"name": ..., "args": {...}}, each a tools/call.
Prints one JSON line: {"results": [{"ok": {...}} | {"error": "..."}], "asked": [params...]},
the params of every elicitation the user was shown.
"""

import asyncio
import json
import os
import sys

import mcp.types as types
from mcp import Client


def describe_call(result):
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    return {"is_error": bool(result.is_error), "text": "\n".join(texts), "meta": result.meta}


async def run(url, mode, answer, plan):
    asked = []

    async def elicitation(context, params):
        asked.append(params.model_dump(mode="json", by_alias=True, exclude_none=True))
        if answer == "quit":
            sys.stdout.flush()
            os._exit(3)
        if answer.startswith("wait:"):
            await asyncio.sleep(float(answer[len("wait:"):]))
            return types.ElicitResult(action="accept", content={"confirm": True})
        if answer == "confirm":
            return types.ElicitResult(action="accept", content={"confirm": True})
        if answer == "untick":
            return types.ElicitResult(action="accept", content={"confirm": False})
        return types.ElicitResult(action=answer)

    callback = None if answer == "unable" else elicitation
    results = []
    async with Client(url, mode=mode, elicitation_callback=callback) as client:
        for step in plan:
            try:
                result = await client.call_tool(step["name"], step.get("args", {}))
                results.append({"ok": describe_call(result)})
            except Exception as e:  # noqa: BLE001 - every failure is a test observation
                results.append({"error": f"{type(e).__name__}: {e}"})
    return {"results": results, "asked": asked}


def main():
    url, mode, answer, plan = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    print(json.dumps(asyncio.run(run(url, mode, answer, plan)), default=str))


if __name__ == "__main__":
    main()
