"""Samples to detection for each degradation-zoo member, and false alarms on sound samples.

    .venv/bin/python -m bench.zoo [--prompts 60] [--runs 200] [--stable 1000000] [--seed 5]

1. Pools, scored once with the real probes (MiniLM on this machine's CPU): the simulator's
   sound model, made noisy on purpose (it repeats its canonical answer 70% of the time, gets
   90% of the arithmetic it can compute right, and 1% of its answers are empty or loop; it
   knows no other fact: it passes about a fifth of the default golden set), answers `--prompts` user
   prompts and re-asks each k=2 times, as the worker does; each zoo member does the same. Every
   answer gets its degeneration, abstention and consistency scores and its length in tokens.
   Every canary of the default golden set is asked once (canaries are greedy: the same answer
   every time), in the order the worker's rounds take them (`canary_order`).
2. Runs, drawn from the pools with replacement: a baseline of `BASELINE` sound samples, then
   the member's samples; the detector's statistics with their default parameters (CUSUM per
   probe, the KS shape test every `SHAPE_EVERY` samples) give the samples to detection. Canary
   rounds of 16 rotate through the golden set after a baseline of `CANARY_ROUNDS` sound rounds;
   the per-item test gives the rounds to detection.
3. False alarms: the same statistics on `--stable` sound samples (and canary results) against
   sound baselines, in windows of `WINDOW`, per 10,000.
Goal: every member within 200 sampled answers or 3 canary rounds of 16; fewer than 0.01
false alarms per 10,000 sound samples. Exits 1 when either misses.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from fathom.sim.answers import answer
from fathom.sim.models import ModelSpec
from fathom.sim.zoo import MEMBERS
from probes.answer_kind import score_abstention
from probes.consistency import non_answer, score_consistency
from probes.degeneration import score_degeneration
from probes.detect import DetectionSettings, canary_drop
from probes.factuality import Canary, load_canaries, score_canary
from probes.rounds import canary_order
from probes.scorer import Scorer, ScorerConfig, load_scorer
from probes.statistics import FloatArray, Reference, cusum_drop, shape_test

K = 2
BASELINE = 500
CANARY_ROUNDS = 312  # 4,992 results: about what the detector reads (max_baseline_rows)
ROUND = 16
SHAPE_EVERY = 10
AFTER = 1000  # member samples per run; 'never' past this
WINDOW = 5000
PROBES = ("consistency", "degeneration", "abstention")
SOUND = ModelSpec(name="sound", tokens=40, consistency=0.7, accuracy=0.9, degeneration=0.01)
S = DetectionSettings()


@dataclass(frozen=True, slots=True)
class Pool:
    """One deployment's scored answers: a score per probe and a length per sample, and a
    pass/fail per golden item."""

    scores: dict[str, FloatArray]
    lengths: FloatArray
    canaries: np.ndarray  # bool per golden item


async def pool(scorer: Scorer, member: str, prompts: int, canaries: list[Canary]) -> Pool:
    """Ask and score the pool of one deployment (`member` '' is the sound one)."""
    rng = random.Random(f"bench.zoo/{member}")
    scores: dict[str, list[float]] = {p: [] for p in PROBES}
    lengths = []
    for i in range(prompts):
        prompt = f"Tell me about topic {i}, please."
        said = [answer(SOUND, prompt, 40, 256, rng, 1, member) for _ in range(K + 1)]
        texts = ["".join(a.tokens) for a in said]
        scores["degeneration"].append(score_degeneration(texts[0], prompt=prompt).score)
        scores["abstention"].append(score_abstention(texts[0], prompt).score)
        result = await score_consistency(scorer, texts[0], texts[1:], prompt=prompt)
        scores["consistency"].append((result or non_answer("", scorer.name, K)).score)
        lengths.append(len(said[0].tokens))
    results = await asyncio.gather(*(
        score_canary(scorer, c, "".join(answer(SOUND, c.prompt, 40, 128, rng, 1, member).tokens))
        for c in canaries
    ))  # fmt: skip
    return Pool(
        {p: np.array(v) for p, v in scores.items()},
        np.array(lengths, dtype=np.float64),
        np.array([bool(r.passed) for r in results]),
    )


def sample_alarms(base: Pool, stream: Pool, rng: np.random.Generator, n: int) -> dict[str, int]:
    """Index of each sample test's first alarm on `n` samples of `stream` after a
    `BASELINE`-sample baseline of `base` (tests that never fire are left out)."""
    b = rng.integers(0, base.lengths.size, BASELINE)
    s = rng.integers(0, stream.lengths.size, n)
    hits = {}
    for probe in PROBES:
        mean, sd = Reference.of(base.scores[probe][b]).shifted(S.baseline_margin_se, S.min_sd)
        res = cusum_drop(stream.scores[probe][s], mean, sd, S.cusum_k, S.cusum_h, S.z_clip)
        if res.alarm_at is not None:
            hits[probe] = res.alarm_at
    for end in range(SHAPE_EVERY, n + 1, SHAPE_EVERY):
        d, p = shape_test(base.lengths[b], stream.lengths[s[:end]])
        if p < S.shape_alpha and d >= S.shape_min_d:
            hits["shape"] = end - 1
            break
    return hits


def first_canary_alarm(base: Pool, stream: Pool, start: int, rounds: int) -> int | None:
    """Index of the first per-item alarm over `rounds` rounds of `stream`'s canaries after
    `CANARY_ROUNDS` rounds of `base`'s, rotating from item `start`."""
    items = base.canaries.size
    order = (start + np.arange((CANARY_ROUNDS + rounds) * ROUND)) % items
    names = np.array([f"c{i}" for i in order], dtype=np.str_)
    cut = CANARY_ROUNDS * ROUND
    res = canary_drop(
        names[:cut], base.canaries[order[:cut]], names[cut:], stream.canaries[order[cut:]], S
    )
    return res.alarm_at


def member_row(member: str, sound: Pool, bad: Pool, rng: np.random.Generator, runs: int) -> str:
    """Median samples to detection, overall and per test, and canary rounds, over `runs`."""
    found = [sample_alarms(sound, bad, rng, AFTER) for _ in range(runs)]
    items = sound.canaries.size
    rounds = [first_canary_alarm(sound, bad, int(rng.integers(items)), 10) for _ in range(runs)]

    def median(values: list[int | None], cap: int) -> float:
        return float(np.median([cap + 1 if v is None else v + 1 for v in values]))

    first = median([min(f.values()) if f else None for f in found], AFTER)
    tests = [median([f.get(t) for f in found], AFTER) for t in (*PROBES, "shape")]
    r = float(np.median([11 if x is None else x // ROUND + 1 for x in rounds]))
    ok = first <= 200 or r <= 3
    cells = " ".join(f"{_fmt(v, AFTER):>12}" for v in (first, *tests))
    return f"{member:<9} {cells} {_fmt(r, 10):>7} {'yes' if ok else 'NO':>5}"


def _fmt(value: float, cap: int) -> str:
    return "never" if value > cap else f"{value:.0f}"


def false_alarms(
    sound: Pool, rng: np.random.Generator, stable: int
) -> tuple[float, float, Counter[str]]:
    """False alarms per 10,000 sound samples and per 10,000 sound canary results, and the
    tests that raised the sample alarms."""
    windows = max(1, stable // WINDOW)
    raised = [sample_alarms(sound, sound, rng, WINDOW) for _ in range(windows)]
    by = Counter(min(hits, key=hits.__getitem__) for hits in raised if hits)
    rounds = WINDOW // ROUND
    items = sound.canaries.size
    canary = sum(
        first_canary_alarm(sound, sound, int(rng.integers(items)), rounds) is not None
        for _ in range(windows)
    )
    per = windows * WINDOW / 10_000
    return by.total() / per, canary / (windows * rounds * ROUND / 10_000), by


async def pools(prompts: int) -> dict[str, Pool]:
    """The sound pool and one per member, scored with the real probes."""
    scorer = await asyncio.to_thread(load_scorer, ScorerConfig())
    canaries = canary_order(load_canaries())
    try:
        return {m: await pool(scorer, m, prompts, canaries) for m in ("", *MEMBERS)}
    finally:
        scorer.close()


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--prompts", type=int, default=60, help="user prompts per pool")
    parser.add_argument("--runs", type=int, default=200, help="runs per member")
    parser.add_argument("--stable", type=int, default=1_000_000, help="sound samples for FA")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.monotonic()
    scored = asyncio.run(pools(args.prompts))
    rng = np.random.default_rng(args.seed)
    sound = scored.pop("")
    print(
        f"settings: cusum h={S.cusum_h} k={S.cusum_k}; item h={S.item_h}; shape alpha="
        f"{S.shape_alpha} D>={S.shape_min_d}; baseline {BASELINE} samples, "
        f"{CANARY_ROUNDS} canary rounds of {ROUND}; {args.runs} runs; seed {args.seed}"
    )
    columns = ("samples", *(f"{t}" for t in PROBES), "shape")
    print(f"{'member':<9} " + " ".join(f"{c:>12}" for c in columns) + f" {'rounds':>7} goal")
    rows = [member_row(member, sound, bad, rng, args.runs) for member, bad in scored.items()]
    print(*rows, sep="\n")
    per_sample, per_canary, by = false_alarms(sound, rng, args.stable)
    windows = max(1, args.stable // WINDOW) * WINDOW
    print(f"false alarms on sound data: {per_sample:.4f} per 10,000 samples ({windows:,} "
          f"samples; {dict(by) or 'none'}), {per_canary:.4f} per 10,000 canary results "
          "(goal < 0.01)")  # fmt: skip
    print(f"{time.monotonic() - started:.0f} s")
    missed = any(row.endswith(" NO") for row in rows)
    return 1 if missed or max(per_sample, per_canary) >= 0.01 else 0


if __name__ == "__main__":
    raise SystemExit(main())
