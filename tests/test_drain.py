"""Pod deletion in the order Kubernetes runs it, with real processes.

The kubelet runs the model container's preStop hook (GET /drain on Fathom's admin port),
then sends the model server SIGTERM, and stops the native sidecar (Fathom) only after the
model server has exited. A stream in flight must complete; a request arriving after the
model server is gone gets a retryable 503.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from fathom import spawn
from tests.support.polling import until
from tests.support.processes import serve, simulate_command
from tests.support.store import opened

CHAT = "/v1/chat/completions"
PHASES = ("", "draining", "drained", "upstream gone")


def simulator(port: int = 0) -> spawn.Child:
    """A `fathom simulate` process standing in for vLLM."""
    argv = simulate_command(
        "--model", "sim", "--ttft-ms", "20", "--itl-ms", "10", "--tokens", "8", port=port
    )
    return spawn.start(argv, ["server"])


def fathom(upstream: str, tmp_path: Path, settle_s: str) -> spawn.Child:
    """`fathom serve` in front of it, on the embedded store."""
    return serve(
        upstream, tmp_path / "store", tmp_path / "spool",
        FATHOM_GRACE_S="20", FATHOM_DRAIN_SETTLE_S=settle_s,
    )  # fmt: skip


async def readyz(session: aiohttp.ClientSession, admin: str) -> tuple[int, str]:
    """/readyz's status and the drain phase it reports."""
    async with session.get(admin + "/readyz") as resp:
        return resp.status, (await resp.json()).get("drain", "")


async def until_ready_is(
    session: aiohttp.ClientSession, admin: str, status: int, phase: str | None = None
) -> None:
    """Poll /readyz (as the kubelet does) until it answers `status` (and `phase`), 15 s."""
    wanted = {(status, phase)} if phase is not None else {(status, p) for p in PHASES}

    async def ready() -> bool:
        return await readyz(session, admin) in wanted

    await until(ready, within=15.0, what=f"/readyz {status} {phase or ''}")


def chat(stream: bool) -> dict[str, object]:
    return {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def test_pod_delete_in_kubernetes_order_completes_the_stream_in_flight(
    tmp_path: Path, children: list[spawn.Child]
) -> None:
    vllm = simulator()
    children.append(vllm)
    proxy = fathom(vllm.addresses["server"], tmp_path, settle_s="1.5")
    children.append(proxy)
    url, admin = proxy.addresses["proxy"], proxy.addresses["admin"]
    headers = {"x-sim-tokens": "120", "x-sim-itl-ms": "25"}  # about 3 s of streaming
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url + CHAT, json=chat(True), headers=headers)
        await resp.content.readuntil(b"\n\n")
        stream = asyncio.create_task(resp.read())
        # 1. The model container's preStop hook.
        hook = asyncio.create_task(session.get(admin + "/drain"))
        await until_ready_is(session, admin, 503)  # out of the Service's endpoints
        async with session.post(url + CHAT, json=chat(False)) as late:
            assert late.status == 200  # within the settle time: still relayed
        drained = await (await hook).json()
        # The hook returned only once the stream had finished.
        assert stream.done() and stream.result().rstrip().endswith(b"data: [DONE]")
        assert drained["drained"] is True and drained["in_flight"] == 0
        assert drained["waited_s"] >= 1.5
        # 2. Now the kubelet sends the model server SIGTERM; it exits.
        assert vllm.stop() == 0
        # 3. A client whose endpoint list is stale: a retryable 503, not a 502.
        async with session.post(url + CHAT, json=chat(False)) as gone:
            assert gone.status == 503 and gone.headers["Retry-After"] == "1"
            assert (await gone.json())["error"]["type"] == "draining"
    # 4. Only then is the sidecar stopped: it flushes and exits cleanly.
    assert proxy.stop() == 0
    with opened(tmp_path / "store") as store:
        rows = store.query_sync(
            "SELECT stream, status, error, output_tokens FROM fathom.requests ORDER BY ts"
        )
    assert rows == [(1, 200, "", 120), (0, 200, "", 8), (0, 503, "draining", 0)]


async def test_a_model_server_restarted_alone_ends_the_drain(
    tmp_path: Path, children: list[spawn.Child]
) -> None:
    """The same preStop runs when the kubelet restarts only the model server (liveness)."""
    port = spawn.free_port()
    vllm = simulator(port)
    children.append(vllm)
    proxy = fathom(vllm.addresses["server"], tmp_path, settle_s="0")
    children.append(proxy)
    url, admin = proxy.addresses["proxy"], proxy.addresses["admin"]
    async with aiohttp.ClientSession() as session:
        async with session.get(admin + "/drain") as hook:
            assert (await hook.json())["drained"] is True
        assert await readyz(session, admin) == (503, "drained")
        vllm.stop()
        await until_ready_is(session, admin, 503, "upstream gone")
        children.append(simulator(port))  # the restarted container, same port
        await until_ready_is(session, admin, 200, "")
        async with session.post(url + CHAT, json=chat(False)) as back:
            assert back.status == 200


async def test_pod_deleted_mid_outage_loses_nothing(
    simulator: str, tmp_path: Path, children: list[spawn.Child]
) -> None:
    """The spool on a per-pod claim: the replacement pod mounts it and replays what the
    deleted one spooled while the store was down. (The store here is down as an unanswered
    server URL, and back as the embedded engine: spool files hold rows, not store URLs.)"""
    claim = tmp_path / "claim"  # the StatefulSet's volumeClaimTemplate, kept across pods
    down = f"http://127.0.0.1:{spawn.free_port()}/fathom"
    old = serve(simulator, down, claim / "spool", FATHOM_DRAIN_SETTLE_S="0")
    children.append(old)
    async with aiohttp.ClientSession() as session:
        for i in range(20):
            async with session.post(old.addresses["proxy"] + CHAT, json=chat(i % 2 == 0)) as r:
                assert r.status == 200
                await r.read()
        async with session.get(old.addresses["admin"] + "/drain") as hook:
            assert (await hook.json())["drained"] is True
    assert old.stop() == 0  # the pod is deleted in the middle of the outage
    assert list((claim / "spool").glob("*.jsonl")), "nothing was spooled"
    assert not [line for line in old.output if "dropped" in line]
    new = serve(simulator, tmp_path / "store", claim / "spool", FATHOM_DRAIN_SETTLE_S="0")
    children.append(new)
    # The new pod replays the claim's spool, file by file.
    await until(lambda: not list((claim / "spool").glob("*.jsonl")), within=30.0)
    assert new.stop() == 0
    with opened(tmp_path / "store") as store:
        rows = store.query_sync("SELECT count(), countIf(stream = 1) FROM fathom.requests")
    assert rows == [(20, 10)]
