"""The audit's statistics against independent computations: scipy's binomial test for McNemar,
loops over the definitions for MMD², full enumeration for the permutation and sign-flip
p-values, and hand-worked token scores."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from probes.audit_logprobs import PromptScores, Scored, gap, read_echo
from probes.audit_stats import (
    binomial_tail,
    mcnemar,
    median_bandwidth,
    mmd2_unbiased,
    mmd_test,
    rbf_kernel,
    sign_flip_test,
)

# ---------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(("lost", "gained"), [(0, 0), (3, 0), (7, 0), (7, 1), (5, 5), (2, 9),
                                              (12, 3), (40, 25)])  # fmt: skip
def test_mcnemar_matches_scipy_binomial_test(lost: int, gained: int) -> None:
    ref = np.array([True] * lost + [False] * gained + [True] * 4 + [False] * 6)
    cand = np.array([False] * lost + [True] * gained + [True] * 4 + [False] * 6)
    result = mcnemar(ref, cand)
    assert (result.lost, result.gained, result.n) == (lost, gained, lost + gained + 10)
    if lost + gained == 0:
        assert result.p_value == 1.0
        return
    expected = stats.binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12)


def test_seven_lost_canaries_and_none_gained_are_significant_at_one_percent() -> None:
    assert binomial_tail(7, 7) == 1 / 128
    assert binomial_tail(6, 6) == 1 / 64  # one fewer is not: 0.0156 > 0.01
    assert binomial_tail(0, 5) == 1.0


def test_mcnemar_refuses_unpaired_results() -> None:
    with pytest.raises(ValueError, match="same canaries"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


# ---------------------------------------------------------------------------- MMD


def loop_mmd2(x: list[list[float]], y: list[list[float]], bandwidth: float) -> float:
    """The unbiased MMD² estimator written out from its definition."""

    def k(a: list[float], b: list[float]) -> float:
        return math.exp(-sum((u - v) ** 2 for u, v in zip(a, b, strict=True)) / (2 * bandwidth**2))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_unbiased_mmd2_matches_its_definition() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 3)), rng.normal(0.7, 1.0, size=(3, 3))
    points = np.vstack([x, y])
    labels = np.r_[np.zeros(4), np.ones(3)]
    got = float(mmd2_unbiased(rbf_kernel(points, 1.3), labels)[0])
    assert got == pytest.approx(loop_mmd2(x.tolist(), y.tolist(), 1.3), rel=1e-10)
    # Either way round: the labels only name the two samples.
    assert float(mmd2_unbiased(rbf_kernel(points, 1.3), 1 - labels)[0]) == pytest.approx(got)


def test_median_bandwidth_is_the_median_within_prompt_distance() -> None:
    a = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])  # distances 5, 1, sqrt(18)
    b = np.array([[1.0, 1.0], [1.0, 3.0]])  # distance 2; never compared across prompts
    assert median_bandwidth([a, b]) == pytest.approx(float(np.median([5, 1, math.sqrt(18), 2])))
    assert median_bandwidth([np.zeros((3, 2))]) == 1.0  # all the same answer


def enumerated_p(pairs: list[tuple[np.ndarray, np.ndarray]], bandwidth: float) -> float:
    """The exact permutation p-value: every relabelling within every prompt, by brute force."""

    def statistic(split: list[tuple[list[list[float]], list[list[float]]]]) -> float:
        return sum(loop_mmd2(x, y, bandwidth) for x, y in split) / len(split)

    per_prompt = []
    for x, y in pairs:
        points = np.vstack([x, y]).tolist()
        ways = []
        for chosen in itertools.combinations(range(len(points)), len(y)):
            ys = [points[i] for i in chosen]
            xs = [points[i] for i in range(len(points)) if i not in chosen]
            ways.append((xs, ys))
        per_prompt.append(ways)
    observed = statistic([(x.tolist(), y.tolist()) for x, y in pairs])
    null = [statistic(list(split)) for split in itertools.product(*per_prompt)]
    return sum(t >= observed - 1e-12 for t in null) / len(null)


def test_permutation_p_value_agrees_with_full_enumeration() -> None:
    rng = np.random.default_rng(7)
    pairs = [(rng.normal(size=(3, 2)), rng.normal(0.8, 1, size=(3, 2))) for _ in range(2)]
    stacked = [np.vstack(p) for p in pairs]
    exact = enumerated_p(pairs, median_bandwidth(stacked))  # 20 x 20 relabellings
    result = mmd_test(pairs, 40_000, np.random.default_rng(3))
    assert result.prompts == 2 and result.bandwidth == pytest.approx(median_bandwidth(stacked))
    assert result.p_value == pytest.approx(exact, abs=0.006)  # Monte Carlo: sd ~ 0.0025


def test_alike_samples_are_not_different_and_distant_ones_are() -> None:
    rng = np.random.default_rng(11)
    same = [(rng.normal(size=(10, 4)), rng.normal(size=(5, 4))) for _ in range(10)]
    moved = [(rng.normal(size=(10, 4)), rng.normal(1.5, 1, size=(5, 4))) for _ in range(10)]
    assert mmd_test(same, 2000, np.random.default_rng(0)).p_value > 0.05
    far = mmd_test(moved, 2000, np.random.default_rng(0))
    assert far.p_value == pytest.approx(1 / 2001) and far.mmd2 > 0.1


def test_prompts_with_fewer_than_two_answers_a_side_are_left_out() -> None:
    one = np.zeros((1, 2))
    assert mmd_test([(one, one)], 100, np.random.default_rng(0)).prompts == 0
    assert math.isnan(mmd_test([], 100, np.random.default_rng(0)).p_value)


# ---------------------------------------------------------------------------- sign flips


def test_sign_flip_p_value_is_exact_below_the_permutation_count() -> None:
    d = np.array([0.9, -0.2, 0.4, 1.1, 0.05])
    brute = [np.mean(np.array(s) * d) for s in itertools.product((1, -1), repeat=5)]
    expected = sum(t >= d.mean() - 1e-12 for t in brute) / 32
    result = sign_flip_test(d, 1000, np.random.default_rng(0))
    assert result.exact and result.p_value == pytest.approx(expected)
    assert result.mean == pytest.approx(d.mean())


def test_sign_flip_monte_carlo_is_close_to_exact() -> None:
    d = np.random.default_rng(5).normal(0.3, 1.0, size=14)
    exact = sign_flip_test(d, 2**14, np.random.default_rng(0))
    sampled = sign_flip_test(d, 4000, np.random.default_rng(0))
    assert exact.exact and not sampled.exact
    assert sampled.p_value == pytest.approx(exact.p_value, abs=0.02)


def test_sign_flips_of_all_positive_and_all_zero_divergences() -> None:
    rng = np.random.default_rng(0)
    assert sign_flip_test(np.full(7, 0.4), 2000, rng).p_value == 1 / 128
    assert sign_flip_test(np.zeros(9), 2000, rng).p_value == 1.0  # identical servers
    assert math.isnan(sign_flip_test(np.zeros(0), 2000, rng).p_value)


# ---------------------------------------------------------------------------- token scores


def echo(tokens: list[str], logprobs: list[float | None], text: str, generated: int) -> dict:
    tops = [None if v is None else {t: v, "x": -9.0} for t, v in zip(tokens, logprobs, strict=True)]
    return {
        "choices": [
            {
                "text": text,
                "logprobs": {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops},
            }
        ],
        "usage": {"completion_tokens": generated},
    }


def test_echo_scores_are_the_answer_tokens_llama_cpp_python_style() -> None:
    # llama-cpp-python: the prompt's tokens (first one None), the answer's, not the generated.
    body = echo(["Q", ":", " hi", "\n", "Hello", " there"], [None, -1.0, -2.0, -0.5, -0.25,
                -0.75], "Q: hi\nHello there\n", 1)  # fmt: skip
    scored = read_echo(body, "Q: hi\n", "Hello there")
    assert scored is not None and scored.tokens == ("Hello", " there")
    assert scored.logprobs.tolist() == [-0.25, -0.75] and scored.top1 == ("Hello", " there")


def test_echo_scores_drop_generated_tokens_vllm_style() -> None:
    body = echo(["Q", ":", "\n", "Hello", " there", "!"], [None, -1.0, -0.5, -0.25, -0.75,
                -3.0], "Q:\nHello there!", 1)  # fmt: skip
    scored = read_echo(body, "Q:\n", "Hello there")
    assert scored is not None and scored.logprobs.tolist() == [-0.25, -0.75]


def test_a_token_across_prompt_and_answer_is_left_out() -> None:
    body = echo(["Say", ":A", "B", "C"], [None, -1.0, -2.0, -3.0], "Say:ABC", 0)
    scored = read_echo(body, "Say:", "ABC")
    assert scored is not None and scored.tokens == ("B", "C")


def test_echo_that_does_not_spell_the_answer_is_refused() -> None:
    body = echo(["Q", ":", " other"], [None, -1.0, -2.0], "Q: other", 0)
    assert read_echo(body, "Q:", " answer") is None
    assert read_echo({"choices": [{"text": "x", "logprobs": None}]}, "", "x") is None
    empty = read_echo(echo(["Q"], [None], "Q", 0), "Q", "")
    assert empty is not None and empty.tokens == ()


def scored(tokens: str, logprobs: list[float], top1: str) -> Scored:
    return Scored(tuple(tokens), np.array(logprobs), tuple(top1))


def test_divergence_and_top1_agreement_by_hand() -> None:
    pair = PromptScores(
        candidate_own=scored("ab", [-1.0, -1.0], "ab"),
        candidate_by_reference=scored("ab", [-2.0, -3.0], "ax"),
        reference_own=scored("c", [-0.5], "c"),
        reference_by_candidate=scored("c", [-1.5], "c"),
    )
    # (-2 - -5) / 2 = 1.5 for the candidate's answer, (-0.5 - -1.5) / 1 = 1.0 for the other.
    assert pair.divergence == pytest.approx(2.5)
    assert pair.top1_agreement() == (2, 3)  # 'a' and 'c' agree, 'b' against 'x' does not
    # The same four scores with the answers swapped (which side wrote which): d turns to -d,
    # which is why the sign-flip test applies.
    swapped = PromptScores(
        candidate_own=pair.reference_by_candidate,
        candidate_by_reference=pair.reference_own,
        reference_own=pair.candidate_by_reference,
        reference_by_candidate=pair.candidate_own,
    )
    assert swapped.divergence == pytest.approx(-2.5)
    assert gap(scored("", [], ""), scored("", [], "")) == 0.0
