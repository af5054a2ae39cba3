"""Settings of regression detection: the tests' parameters, sized by a false-alarm budget and
power calculations, and the windows they judge (settings detect_window_s, detect_baseline_s).
No numpy here: `fathom serve` reads these settings without loading the statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from statistics import NormalDist
from typing import Literal

from sidecar.config import ConfigError

WindowMethod = Literal["welch", "mannwhitney"]


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """Test parameters and windows, sized by a false-alarm budget and power calculations.

    The budget: fewer than 1 false regression per 100 series-days at 10,000 scored results a
    series a day, i.e. a run length under no change of at least `null_run` = 1e7 results per
    test (four tests share the budget, with room for scores that are not normal):
    - CUSUM: Siegmund's approximation ARL0 = (e^(2kb) - 2kb - 1) / (2k^2), b = h + 1.166,
      gives h = 28 at k = 0.25 for 1.7e7 normal results; a drop of 2.25 sd a result (a
      collapse, clipped) is found within 13 results, one of 0.5 sd within about 120.
    - canaries (per-item Page CUSUM of log-likelihood ratios, and the pooled repeated SPRT):
      a CUSUM of true LLRs has ARL0 >= e^h, so h = ln(null_run) = 16.1; the pooled SPRT's
      alpha = 1e-7 puts its bound at ln(0.5 / 1e-7) = 15.4, the same test in Wald's terms.
      A canary that always passed and now fails weighs up to `item_llr_clip` = 2: 9 failures.
    - window test: evaluated every few minutes, so alpha = 1e-6 per evaluation.
    The minimum sizes are power calculations, not round numbers (see `min_results`):
    - a baseline of scores must pin its mean to within k/2 sd at one standard error:
      n >= (2 / k)^2 = 64;
    - a window test needs n >= ((z_alpha + z_power) / effect)^2 results to find a drop of
      `window_effect_sd` with probability `window_power`: 37 at alpha 1e-6, 90%, 1 sd;
    - a canary baseline must pin its pass rate p to within delta/2 at one standard error:
      n >= 4 p (1 - p) / delta^2 (23 results at p = 0.94; 100 at p = 0.5). A drop from
      0.94 to 0.25 over 42 baseline and 107 current results is decided, not "too little data".
    The sequential tests (CUSUM, SPRT) need no minimum current size: they alarm only on
    evidence. `bench/detect.py` measures both sides of this budget.
    """

    cusum_k: float = 0.25  # half the smallest drop worth finding quickly: 0.5 sd
    cusum_h: float = 28.0
    z_clip: float = 2.5  # one degenerate answer must not count as a trend
    min_sd: float = 0.02  # scores are in [0, 1]; a constant baseline still gets a scale
    baseline_margin_se: float = 1.0  # give an uncertain baseline mean the benefit of the doubt
    sprt_delta: float = 0.10
    sprt_alpha: float = 1e-7
    sprt_beta: float = 0.5  # per test cycle; the test restarts, so a miss is caught next cycle
    # Per-item canary test (Page's CUSUM of per-item log-likelihood ratios, see item_llr).
    item_h: float = 16.0
    item_llr_clip: float = 2.0  # h needs 8+ failures: one flaky item cannot alarm alone
    item_prior_min: float = 0.5  # an item's history is weighed against >= half a result
    window_method: WindowMethod = "welch"
    window_alpha: float = 1e-6
    window_min_effect_sd: float = 0.25  # significant but tiny differences are not regressions
    window_effect_sd: float = 1.0  # the drop the window test must find...
    window_power: float = 0.9  # ...this often
    # Answer shape: a two-sample KS test of answer lengths, current against baseline.
    shape_alpha: float = 1e-6
    shape_min_d: float = 0.3  # a shift smaller than this is the prompt mix, not the model
    window: timedelta = timedelta(hours=6)  # setting detect_window_s: the window judged...
    baseline: timedelta = timedelta(days=7)  # ...detect_baseline_s: against this before it
    # The most recent rows read per series: a baseline mean from 5,000 scores is already known
    # to 1/70 of an sd, and reading a week of every series each run would be slow.
    max_baseline_rows: int = 5_000
    max_current_rows: int = 20_000

    def __post_init__(self) -> None:
        for name in ("window", "baseline"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(f"detect_{name}_s must be > 0")

    @property
    def min_baseline(self) -> int:
        """Baseline scores needed: the mean within k/2 sd at one standard error."""
        return math.ceil((2 / self.cusum_k) ** 2)

    @property
    def min_window(self) -> int:
        """Current scores the window test needs for its power at `window_effect_sd`."""
        return min_results(self.window_alpha, self.window_power, self.window_effect_sd)

    def min_canary_baseline(self, rate: float) -> int:
        """Baseline canary results needed at pass rate `rate`: within delta/2 at one SE."""
        return math.ceil(4 * rate * (1 - rate) / self.sprt_delta**2)


def min_results(alpha: float, power: float, effect_sd: float) -> int:
    """Results a one-sided z-test needs to find a drop of `effect_sd` with `power` at `alpha`."""
    z = NormalDist().inv_cdf
    return math.ceil(((z(1 - alpha) + z(power)) / effect_sd) ** 2)
