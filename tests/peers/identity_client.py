"""The Python SDK's Client with an identity provider's token, for the identity tests.

Usage: identity_client.py URL MODE AUTH_JSON PLAN_JSON
  URL, MODE, PLAN_JSON: as for mcp_client.py.
  AUTH_JSON: {"bearer": TOKEN} to send a token the test got, or
  {"client_credentials": {"client_id", "client_secret", "issuer"}} to let the SDK's OAuth
  support find the authorization server on its own (the 401's resource_metadata, the protected
  resource metadata, the server's metadata) and get a token by the client-credentials grant.
Prints one JSON line: the result of each step, {"ok": ...} or {"error": "..."}.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mcp_client import describe_call, elicitation, sampling


class MemoryStorage:
    """Tokens and client information kept in memory for one run."""

    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


def http_client(url, auth):
    if "bearer" in auth:
        return create_mcp_http_client(headers={"Authorization": f"Bearer {auth['bearer']}"})
    cc = auth["client_credentials"]
    provider = ClientCredentialsOAuthProvider(
        server_url=url,
        storage=MemoryStorage(),
        client_id=cc["client_id"],
        client_secret=cc["client_secret"],
        issuer=cc["issuer"],
    )
    return create_mcp_http_client(auth=provider)


async def run(url, mode, auth, plan):
    out = []
    async with http_client(url, auth) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(
            transport,
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
    url, mode, auth, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    print(json.dumps(asyncio.run(run(url, mode, auth, plan)), default=str))


if __name__ == "__main__":
    main()
