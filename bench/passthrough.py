"""The floor for a Python proxy: a bare aiohttp pass-through that copies bytes, measures nothing.

    .venv/bin/python bench/passthrough.py --upstream http://127.0.0.1:8000 [--listen HOST:PORT]

bench/overhead.py runs it beside Fathom, so that what Fathom adds can be told apart from what
any aiohttp proxy on this machine adds. It forwards method, path, body and headers (less the
hop-by-hop ones) and streams the upstream's body back chunk by chunk, as Fathom does.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    """One request, relayed as it comes."""
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    url = request.app[UPSTREAM] + request.path_qs
    session = request.app[SESSION]
    async with session.request(request.method, url, data=body, headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers[name] = value
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def serve(upstream: str, host: str, port: int) -> None:
    """Serve until killed, announcing the bound address the way `fathom` commands do."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
    )
    app.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0]
    print(f"proxy listening on http://{bound[0]}:{bound[1]}", flush=True)
    try:
        await asyncio.Event().wait()  # until SIGTERM ends the process
    finally:
        await app[SESSION].close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve(args.upstream, host, int(port)))


if __name__ == "__main__":
    main()
