"""Credentials go upstream and nowhere else: not the store, the logs, /metrics or the spool.

Two real `fathom serve` processes in front of the session's simulator: one with `--probes` and
an embedded store (so probe re-asks and canaries carry a probe key too), one whose store is
unreachable, so that everything lands in its disk spool. Every credential is a fresh random
string; afterwards every string column of every table, both processes' output, both /metrics
pages and both spools are searched for each of them. Redaction rules are tested one by one in
tests/test_sampler.py; here the point is the whole path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from fathom import settings as config
from fathom import spawn
from tests.support import processes
from tests.support.scrape import counters_reach
from tests.support.store import opened

COUNT = "SELECT count() FROM fathom.{table:Identifier}"
STRING_COLUMNS = """
SELECT table, name FROM system.columns
WHERE database = 'fathom' AND type LIKE '%String%' AND NOT startsWith(type, 'AggregateFunction')
"""
FOUND_IN_COLUMN = """
SELECT DISTINCT arrayJoin(arrayFilter(
    s -> position(ifNull(toString({column:Identifier}), ''), s) > 0, {secrets:Array(String)}))
FROM fathom.{table:Identifier}
"""
PROMPT = "Summarise this config: OPENAI_API_KEY={key} region=eu"


@dataclass(frozen=True, slots=True)
class Secrets:
    """Fresh credentials, one for each way a client (or the operator) hands one over."""

    bearer: str = field(default_factory=lambda: "sk-" + secrets.token_hex(20))
    api_key: str = field(default_factory=lambda: secrets.token_hex(20))
    x_api_key: str = field(default_factory=lambda: "xk-" + secrets.token_hex(20))
    query_key: str = field(default_factory=lambda: "qk-" + secrets.token_hex(20))
    probe_key: str = field(default_factory=lambda: "sk-probe-" + secrets.token_hex(20))
    prompt_key: str = field(default_factory=lambda: "sk-proj-" + secrets.token_hex(20))
    bad_header_key: str = field(default_factory=lambda: "sk-" + secrets.token_hex(20))
    long_header_key: str = field(default_factory=lambda: "sk-" + secrets.token_hex(20))
    store_password: str = field(default_factory=lambda: "pw" + secrets.token_hex(12))

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


@dataclass(slots=True)
class StoreView:
    """What the embedded store holds after the run."""

    leaks: dict[str, list[str]] = field(default_factory=dict)  # 'table.column' -> credentials
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows
    origins: set[str] = field(default_factory=set)
    samples: list[tuple[str, str]] = field(default_factory=list)  # request_json, response_text


@dataclass(slots=True)
class Evidence:
    """Everything the two processes left behind."""

    store: StoreView
    logs: list[str]  # the whole output of each process
    metrics: list[str]  # the /metrics page of each process
    spool: bytes  # every spooled batch (the second process's store was down throughout)
    exit_codes: list[int]


def serve(upstream: str, store: Path | str, spool: Path, *flags: str, **env: str) -> spawn.Child:
    """`fathom serve`, flushing every 0.2 s."""
    return processes.serve(upstream, store, spool, *flags, FATHOM_WRITER_FLUSH_S="0.2", **env)


async def user_traffic(proxy: str, keys: Secrets) -> None:
    """Chat (plain, streamed, failing), completion, embedding: every credential in play."""
    client = openai.AsyncOpenAI(
        base_url=proxy + "/v1", api_key=keys.bearer, max_retries=0,
        default_headers={"api-key": keys.api_key, "x-api-key": keys.x_api_key},
        default_query={"api-key": keys.query_key},
    )  # fmt: skip
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": PROMPT.format(key=keys.prompt_key)}
    ]
    await client.chat.completions.create(model="sim", messages=messages)
    # The one prompt without a secret: redaction leaves it whole, so the probes re-ask it.
    clean: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Summarise: region=eu"}]
    await client.chat.completions.create(model="sim", messages=clean)
    stream = await client.chat.completions.create(model="sim", messages=messages, stream=True)
    async for _ in stream:
        pass
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="sim", messages=messages, extra_headers={"x-sim-fault": "http-500"},
        )  # fmt: skip
    await client.completions.create(model="sim", prompt=PROMPT.format(key=keys.prompt_key))
    await client.embeddings.create(model="sim", input=PROMPT.format(key=keys.prompt_key))
    await client.close()


async def malformed_headers(proxy: str, keys: Secrets) -> None:
    """Requests the HTTP parser refuses, which aiohttp would log with their raw bytes."""
    host, port = proxy.removeprefix("http://").split(":")
    bad_byte, too_long = f"Bearer {keys.bad_header_key}\x01", f"Bearer {keys.long_header_key}"
    for header in (bad_byte, too_long + "a" * 9000):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /v1/models HTTP/1.1\r\nAuthorization: {header}\r\n\r\n".encode())
        async with asyncio.timeout(5):
            assert (await reader.read()).startswith(b"HTTP/1.0 400")
        writer.close()


async def drive(scored: spawn.Child, spooled: spawn.Child, keys: Secrets) -> list[str]:
    """Both processes' traffic, then their /metrics once the probes and the spool did their part."""
    for child in (scored, spooled):
        await user_traffic(child.addresses["proxy"], keys)
        await malformed_headers(child.addresses["proxy"], keys)
    return [
        await counters_reach(scored.addresses["admin"], {"fathom_probes_samples_scored_total": 4,
                                                         "fathom_probes_canaries_sent_total": 1}),
        await counters_reach(spooled.addresses["admin"], {"fathom_writer_rows_spooled_total": 5}),
    ]  # fmt: skip


def read_store(path: Path, keys: Secrets) -> StoreView:
    """Credentials found in every string column of every table; rows, origins, samples."""
    view = StoreView()
    with opened(path) as store:
        for table, column in store.query_sync(STRING_COLUMNS):
            params = {"table": table, "column": column, "secrets": keys.all()}
            if found := store.query_sync(FOUND_IN_COLUMN, params):
                view.leaks[f"{table}.{column}"] = [row[0] for row in found]
            [(view.rows[table],)] = store.query_sync(COUNT, {"table": table})
        origins = store.query_sync("SELECT DISTINCT origin FROM fathom.requests")
        view.origins = {origin for (origin,) in origins}
        samples = store.query_sync("SELECT request_json, response_text FROM fathom.samples")
        view.samples = [(request, response) for request, response in samples]
    return view


@pytest.fixture(scope="module")
def keys() -> Secrets:
    """This module's credentials."""
    return Secrets()


@pytest.fixture(scope="module")
def evidence(simulator: str, keys: Secrets, tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    """Run both processes through the traffic, stop them, and gather what they left."""
    tmp = tmp_path_factory.mktemp("secrets")
    probe_env = {
        "FATHOM_SAMPLE_RATE": "1", "FATHOM_PROBE_K": "2", "FATHOM_PROBE_IDLE_S": "0.2",
        "FATHOM_CANARIES_PER_ROUND": "1", "FATHOM_PROBE_API_KEY": keys.probe_key,
    }  # fmt: skip
    down = f"http://fathom:{keys.store_password}@127.0.0.1:{spawn.free_port()}/fathom"
    children = [serve(simulator, tmp / "store", tmp / "spool", "--probes", **probe_env)]
    try:
        children.append(serve(simulator, down, tmp / "spool-down", FATHOM_SAMPLE_RATE="1"))
        pages = asyncio.run(drive(children[0], children[1], keys))
        # Read while its process runs: the spool is what a store outage leaves on disk.
        spool = b"".join(f.read_bytes() for f in sorted((tmp / "spool-down").glob("*.jsonl")))
    finally:
        codes = [child.stop(signal.SIGTERM) for child in children]
    assert all(len(c.output) < (c.output.maxlen or 0) for c in children)  # no line was lost
    spool += b"".join(f.read_bytes() for f in (tmp / "spool").glob("*.jsonl"))
    logs = ["\n".join(child.output) for child in children]
    return Evidence(read_store(tmp / "store", keys), logs, pages, spool, codes)


def test_no_credential_in_any_string_column_of_any_table(evidence: Evidence) -> None:
    store = evidence.store
    assert store.leaks == {}
    # 6 user requests, k=2 re-asks of the one sample redaction left whole, 1+ canaries
    assert store.rows["requests"] >= 9 and store.rows["samples"] >= 3
    assert store.rows["quality"] >= 1  # the probes ran, sending their own key
    assert store.origins == {"user", "probe", "canary"}
    assert evidence.exit_codes == [0, 0]


def test_prompt_key_is_redacted_in_samples(evidence: Evidence, keys: Secrets) -> None:
    requests = [req for req, _ in evidence.store.samples if "OPENAI_API_KEY=" in req]
    assert len(requests) >= 3  # chat twice and a completion (the failed chat is not sampled)
    assert all("OPENAI_API_KEY=[REDACTED:" in req for req in requests), requests
    assert not any(keys.prompt_key in req + resp for req, resp in evidence.store.samples)


def test_no_credential_in_logs(evidence: Evidence, keys: Secrets) -> None:
    for log in evidence.logs:
        assert [key for key in keys.all() if key in log] == []
        # The refused requests were logged, by their error class alone.
        assert "LineTooLong (HTTP 400)" in log and "BadHttpMessage (HTTP 400)" in log
    assert "spool" in evidence.logs[1]  # the outage was logged, naming the store


def test_no_credential_in_metrics(evidence: Evidence, keys: Secrets) -> None:
    for page in evidence.metrics:
        assert "gen_ai_client_operation_duration_seconds_count" in page
        assert [key for key in keys.all() if key in page] == []


def test_no_credential_in_the_spool(evidence: Evidence, keys: Secrets) -> None:
    assert b"OPENAI_API_KEY=[REDACTED:" in evidence.spool  # samples were spooled, redacted
    assert [key for key in keys.all() if key.encode() in evidence.spool] == []


def test_admin_and_proxy_bind_loopback_by_default() -> None:
    settings = config.load(None, {})
    assert settings.admin_addr == ("127.0.0.1", 9464)
    assert settings.proxy.listen_addr == ("127.0.0.1", 8080)
