"""`fathom reports`: hand out a directory of reports over HTTP, read-only.

What the report server pod runs next to the weekly report CronJob: GET and HEAD only, the
directory's listing at /, no file outside it (aiohttp's static route refuses `..` and, here,
symbolic links), and /healthz for the kubelet.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web

from sidecar.config import ConfigError, parse_hostport


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom reports`."""
    parser.add_argument("--dir", required=True, help="the directory the reports are written to")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to listen on")


def app_for(directory: Path) -> web.Application:
    """The read-only application over `directory`."""
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_static("/", directory, show_index=True, follow_symlinks=False)
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 2 on bad arguments."""
    directory = Path(args.dir)
    try:
        host, port = parse_hostport(args.listen, "listen")
        if not directory.is_dir():
            raise ConfigError(f"--dir {directory} is not a directory")
    except ConfigError as exc:
        print(f"fathom reports: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(app_for(directory), host, port))
    return 0


async def _serve(app: web.Application, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0]
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
