"""The reference audit's settings: how much an audit asks, how it decides, and (inside
`fathom serve --probes`) how many production prompts it mirrors and within what budget.

Nested in the top-level settings (fathom.settings) as `audit`, flat names `audit_*`; `fathom
audit` builds them from its flags. No numpy or torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import ConfigError, require_positive

COMPARISONS = ("canary", "mmd", "logprob")


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """How much an audit asks and how it decides; checked when built."""

    k: int = 5  # answers per prompt from the candidate (2k from the reference: the floor)
    alpha: float = 0.01
    temperature: float = 0.7  # of the answers the MMD compares
    max_tokens: int = 64
    canary_max_tokens: int = 128
    logprob_temperature: float = 1.0  # sampled at 1: the gap estimates the symmetrised KL
    logprob_pairs: int = 2  # answer pairs per prompt: the sign-flip test's p is >= 2^-pairs
    template: str = "{prompt}\n"  # how a prompt is sent as text for the logprob comparison
    top_logprobs: int = 5
    min_gap: float = 0.01  # nats per token: a smaller logprob gap is noise, whatever its p
    permutations: int = 2000
    seed: int = 0
    concurrency: int = 2  # requests in flight per side
    read_timeout_s: float = 300.0
    comparisons: tuple[str, ...] = COMPARISONS
    # The mirrored audit inside `fathom serve --probes` (routes with a `reference`):
    rate: float = 0.1  # share of the sampled prompts of an audited deployment mirrored
    prompts: int = 20  # mirrored prompts per verdict
    canaries: int = 20  # canaries per verdict, sent to both sides
    requests_per_min: float = 60.0  # all audit requests, both sides, every audited pair
    tokens_per_min: float = 60_000.0
    interval_s: float = 10.0  # how often new samples are looked for

    def __post_init__(self) -> None:
        unknown = sorted(set(self.comparisons) - set(COMPARISONS))
        if unknown or not self.comparisons:
            raise ConfigError(
                f"audit comparisons {','.join(self.comparisons)!r}: choose among "
                f"{', '.join(COMPARISONS)}"
            )
        checks = [
            (self.k >= 2, f"audit_k={self.k} must be >= 2 (the floor splits 2k answers)"),
            (0 < self.alpha < 1, f"audit_alpha={self.alpha} must be in (0, 1)"),
            (0 <= self.rate <= 1, f"audit_rate={self.rate} must be in [0, 1]"),
            (self.canaries >= 0, f"audit_canaries={self.canaries} must be >= 0 (0: none)"),
            (self.permutations >= 100, f"audit_permutations={self.permutations} must be >= 100"),
            ("{prompt}" in self.template, "audit_template must contain {prompt}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        positive = ("max_tokens", "canary_max_tokens", "logprob_pairs", "concurrency",
                    "read_timeout_s", "prompts", "requests_per_min", "tokens_per_min",
                    "interval_s")  # fmt: skip
        require_positive(self, positive, "audit setting {name}")

    def as_text(self, prompt: str) -> str:
        """A prompt as the text the logprob comparison sends (`template`, {prompt} filled)."""
        return self.template.replace("{prompt}", prompt)
