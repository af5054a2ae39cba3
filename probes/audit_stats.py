"""The statistics of a reference audit: pure functions, numpy arrays in, frozen results out.

- paired canaries: the exact McNemar test on the discordant pairs (`mcnemar`), one-sided for
  "the candidate fails what the reference passes";
- answer distributions: MMD² with an RBF kernel (median heuristic) between the reference's and
  the candidate's answer embeddings, prompt by prompt, with a permutation p-value that shuffles
  the labels within each prompt (`mmd_test`), as in Model Equality Testing (Gao et al. 2025);
- token log-likelihoods: a sign-flip test of per-prompt divergences (`sign_flip_test`), exact
  while the 2^n sign patterns are fewer than the permutations asked for.

Every p-value counts the observed statistic among the permuted ones, (1 + #{T_b >= T}) /
(1 + B), so it is never 0 and a test at level alpha is exact up to Monte Carlo error.
`probes.audit` runs the comparisons; nothing here does I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# ---------------------------------------------------------------------------- canaries


@dataclass(frozen=True, slots=True)
class McNemar:
    """Paired pass/fail results of the same canaries on the reference and the candidate."""

    lost: int  # passed on the reference, failed on the candidate
    gained: int  # failed on the reference, passed on the candidate
    n: int  # pairs
    p_value: float  # one-sided: P(X >= lost), X ~ Binomial(lost + gained, 1/2)


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly."""
    if k <= 0:
        return 1.0
    return math.fsum(math.comb(n, i) for i in range(k, n + 1)) / 2.0**n


def mcnemar(reference: BoolArray, candidate: BoolArray) -> McNemar:
    """Exact McNemar test of 'the candidate loses canaries the reference passes'."""
    if reference.shape != candidate.shape:
        raise ValueError("McNemar needs the same canaries on both sides")
    lost = int(np.sum(reference & ~candidate))
    gained = int(np.sum(~reference & candidate))
    return McNemar(lost, gained, int(reference.size), binomial_tail(lost, lost + gained))


# ---------------------------------------------------------------------------- MMD


@dataclass(frozen=True, slots=True)
class MmdResult:
    """MMD² of two answer distributions, averaged over prompts, with its permutation p-value."""

    mmd2: float  # mean over prompts of the unbiased MMD² (0 in expectation when alike)
    p_value: float
    bandwidth: float
    prompts: int
    permutations: int


def pairwise_sq_distances(x: FloatArray) -> FloatArray:
    """Squared Euclidean distances between the rows of x."""
    sq = np.sum(x * x, axis=1)
    d2: FloatArray = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    return d2


def median_bandwidth(groups: Sequence[FloatArray]) -> float:
    """Median distance between two answers to the same prompt, over all prompts (pooled sides).

    Label-free, so the permutations keep it; 1.0 when every answer is the same."""
    dists = []
    for x in groups:
        d2 = pairwise_sq_distances(x)
        dists.append(np.sqrt(d2[np.triu_indices(len(x), k=1)]))
    pooled = np.concatenate(dists) if dists else np.zeros(0)
    positive = pooled[pooled > 1e-9]
    return float(np.median(positive)) if positive.size else 1.0


def rbf_kernel(x: FloatArray, bandwidth: float) -> FloatArray:
    """exp(-|a - b|² / (2 bandwidth²)) between the rows of x."""
    kernel: FloatArray = np.exp(-pairwise_sq_distances(x) / (2.0 * bandwidth**2))
    return kernel


def mmd2_unbiased(kernel: FloatArray, labels: npt.NDArray[np.float64]) -> FloatArray:
    """Unbiased MMD² between the rows labelled 1 and 0, for each row of `labels` (B x N)."""
    k0 = kernel - np.diag(np.diag(kernel))  # the U-statistic leaves out i == j
    a = np.atleast_2d(labels)
    m = a.sum(axis=1)
    n = a.shape[1] - m
    ak = a @ k0
    xx = np.sum(ak * a, axis=1)
    xy = np.sum(ak, axis=1) - xx
    yy = k0.sum() - xx - 2.0 * xy
    mmd2: FloatArray = xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)
    return mmd2


def mmd_test(
    pairs: Sequence[tuple[FloatArray, FloatArray]],
    permutations: int,
    rng: np.random.Generator,
) -> MmdResult:
    """Per prompt (x: the reference's answer embeddings, y: the candidate's), MMD² averaged
    over prompts; the null shuffles the labels within each prompt."""
    pairs = [(x, y) for x, y in pairs if len(x) >= 2 and len(y) >= 2]
    if not pairs:
        return MmdResult(math.nan, math.nan, math.nan, 0, permutations)
    stacked = [np.vstack([x, y]).astype(np.float64) for x, y in pairs]
    bandwidth = median_bandwidth(stacked)
    observed = 0.0
    null = np.zeros(permutations)
    for (x, y), points in zip(pairs, stacked, strict=True):
        kernel = rbf_kernel(points, bandwidth)
        labels = np.r_[np.zeros(len(x)), np.ones(len(y))]
        observed += float(mmd2_unbiased(kernel, labels)[0])
        shuffled = rng.permuted(np.tile(labels, (permutations, 1)), axis=1)
        null += mmd2_unbiased(kernel, shuffled)
    observed /= len(pairs)
    null /= len(pairs)
    p_value = (1.0 + float(np.sum(null >= observed - 1e-12))) / (1.0 + permutations)
    return MmdResult(observed, p_value, bandwidth, len(pairs), permutations)


# ---------------------------------------------------------------------------- sign flips


@dataclass(frozen=True, slots=True)
class SignFlip:
    """One-sided test that per-prompt divergences are centred above 0."""

    mean: float
    p_value: float
    n: int
    exact: bool  # every sign pattern enumerated, else `permutations` random ones


def sign_flip_test(d: FloatArray, permutations: int, rng: np.random.Generator) -> SignFlip:
    """Under exchangeable sides every d_i is as likely as -d_i: flip signs to get the null."""
    n = int(d.size)
    if n == 0:
        return SignFlip(math.nan, math.nan, 0, True)
    observed = float(np.mean(d))
    exact = 2**n <= permutations
    if exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = rng.choice((1.0, -1.0), size=(permutations, n))
    null = signs @ d / n
    tol = 1e-12 * max(1.0, float(np.max(np.abs(d))))
    hits = float(np.sum(null >= observed - tol))
    p_value = hits / len(signs) if exact else (1.0 + hits) / (1.0 + permutations)
    return SignFlip(observed, p_value, n, exact)
