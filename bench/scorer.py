"""Embedding throughput of the probe scorer: sentences/s per batch size, as a table.

    .venv/bin/python bench/scorer.py                       # CPU, batches 32/128/512
    python bench/scorer.py --device cuda --sentences 65536 # GPU, fp16 (target on an H200:
                                                           # >= 20,000 sentences/s)

Sentences have realistic lengths: built from the default golden set's prompts and reference
answers (one to three joined, 3 to ~60 words, every one distinct so the scorer's
de-duplication saves nothing). Each batch size runs `--rounds` times through the scorer's
own path (sort by length, encode, restore order); the best round is reported, and the
median beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import time
from dataclasses import dataclass

from probes.factuality import load_canaries
from probes.scorer import Scorer, ScorerConfig, ScorerError, load_scorer

TARGET_CUDA = 20_000  # sentences/s on one H200


@dataclass(frozen=True, slots=True)
class Row:
    """One batch size's measurement."""

    batch: int
    sentences: int
    best_s: float
    median_s: float

    @property
    def rate(self) -> float:
        """Sentences per second in the best round."""
        return self.sentences / self.best_s


def sentences(n: int, seed: int = 7) -> list[str]:
    """`n` distinct sentences of realistic length from the golden set's texts."""
    pool = sorted({t for c in load_canaries() for t in (c.prompt, *c.correct, *c.incorrect)})
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts = rng.choices(pool, k=rng.choice((1, 1, 1, 2, 2, 3)))
        out.append(f"{' '.join(parts)} ({i})")
    return out


def measure(scorer: Scorer, texts: list[str], batch: int, rounds: int) -> Row:
    """Time `rounds` full passes over `texts` at one batch size."""
    scorer.batch_size = batch
    scorer.embed_sync(texts[: batch * 2])  # allocator and kernels for this shape
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        scorer.embed_sync(texts)
        times.append(time.perf_counter() - start)
    return Row(batch, len(texts), min(times), statistics.median(times))


def table(scorer: Scorer, rows: list[Row], texts: list[str]) -> str:
    """The printed report."""
    words = statistics.mean(len(t.split()) for t in texts)
    lines = [
        f"scorer {scorer.name} on {scorer.device} ({scorer.dtype}), {len(texts)} sentences, "
        f"mean {words:.1f} words",
        f"{'batch':>6} {'best s':>8} {'median s':>9} {'sentences/s':>12}",
    ]
    lines += [f"{r.batch:>6} {r.best_s:>8.3f} {r.median_s:>9.3f} {r.rate:>12,.0f}" for r in rows]
    if scorer.device.startswith("cuda"):
        best = max(r.rate for r in rows)
        verdict = "meets" if best >= TARGET_CUDA else "MISSES"
        lines.append(f"best {best:,.0f} sentences/s {verdict} the {TARGET_CUDA:,} target")
    return "\n".join(lines)


def main() -> int:
    """Parse flags, load the model once, measure each batch size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-sizes", default="32,128,512", help="comma-separated")
    parser.add_argument("--sentences", type=int, default=0, help="0: 2048 on CPU, 65536 on CUDA")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="", help="local sentence-transformers directory")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        scorer = load_scorer(
            ScorerConfig(model=args.model, device=args.device, warmup_sentences=64)
        )
    except ScorerError as exc:
        print(f"bench/scorer.py: {exc}")
        return 2
    n = args.sentences or (65_536 if scorer.device.startswith("cuda") else 2048)
    texts = sentences(n)
    rows = [measure(scorer, texts, int(b), args.rounds) for b in args.batch_sizes.split(",")]
    print(table(scorer, rows, texts))
    scorer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
