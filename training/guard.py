"""The quality guard as a promise with a stated confidence (Learn then Test).

The promise: with probability >= ``confidence`` the served policy's accuracy on a fresh sample of
``eval_size`` prompts is at least the reference model's minus ``guard``.

How it is kept. Candidate policies are searched on one part of the training prompts; at most
``candidates`` (K) of them are picked there, before the other part, the calibration prompts, is
looked at. Each of the K is tested once on the calibration prompts. For a fixed policy, the mean
per-prompt accuracy difference to the reference on the calibration prompts (n of them) and on a
fresh sample (m) are independent estimates of the same difference, so

    calibration mean - fresh mean  ~  Normal(0, sd^2 (1/n + 1/m))

and the fresh sample's difference stays above ``calibration mean - z * sd * sqrt(1/n + 1/m)``
with probability 1 - alpha, z = z(1 - alpha). A candidate passes when that bound is >= -guard.
Each of the K tests spends alpha = (1 - confidence) / K (Bonferroni), so the chance that any passed
candidate, and therefore the one served (the cheapest passed), then breaks the guard on a fresh
sample is <= 1 - confidence. When none passes the reference alone is served: it never differs from
itself. (Normal approximation, with the paired standard deviation estimated on the calibration
prompts; ``training.guard_study`` measures how often the promise breaks on repeated splits.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class GuardSpec:
    guard: float = 0.01  # accuracy the router may lose against the reference
    confidence: float = 0.9  # probability that the promise holds on a fresh sample
    eval_size: int = 1000  # the fresh sample the promise is sized for
    candidates: int = 2  # policies picked on the search part and tested on the calibration part

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"guard confidence must be in (0, 1), got {self.confidence}")
        if self.eval_size < 1:
            raise ValueError(f"guard sample size must be positive, got {self.eval_size}")
        if self.candidates < 1:
            raise ValueError(f"at least one candidate must be tested, got {self.candidates}")

    @property
    def alpha(self) -> float:
        """The level of each candidate's test."""
        return (1.0 - self.confidence) / self.candidates

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "alpha_per_test": self.alpha,
                "procedure": "learn then test: K candidates from the search part, each tested once on the "
                             "calibration part by a paired prediction bound for a fresh sample of eval_size "
                             "prompts, Bonferroni over the K"}


def paired_difference(router_correct: np.ndarray, reference_correct: np.ndarray) -> tuple[float, float, int]:
    """Mean and standard deviation of the per-prompt accuracy difference, and the number of prompts."""
    diff = np.asarray(router_correct, dtype=float) - np.asarray(reference_correct, dtype=float)
    n = len(diff)
    if n == 0:
        raise ValueError("no prompts to compare")
    # A small floor keeps a candidate with a handful of disagreements from looking certain.
    sd = float(max(diff.std(ddof=1) if n > 1 else 0.0, np.sqrt(1.0 / n) if diff.any() else 0.0))
    return float(diff.mean()), sd, n


def guard_test(router_correct: np.ndarray, reference_correct: np.ndarray, spec: GuardSpec,
                   alpha: float | None = None) -> dict[str, Any]:
    """Does a fresh sample of ``spec.eval_size`` prompts keep the guard with probability >= 1 - alpha,
    judged on these (calibration) prompts?"""
    mean, sd, n = paired_difference(router_correct, reference_correct)
    z = norm.ppf(1 - (spec.alpha if alpha is None else alpha))
    bound = mean - z * sd * np.sqrt(1.0 / n + 1.0 / spec.eval_size)
    return {"n": n, "difference": mean, "sd": sd, "fresh_sample_bound": float(bound), "required": -spec.guard,
            "passed": bool(bound >= -spec.guard)}


def evaluation_report(router_correct: np.ndarray, reference_correct: np.ndarray, guard: float,
                      resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """What ``training.evaluate`` reports: the paired difference, its 95 % bootstrap interval and
    normal interval, and whether the guard held on this sample (point estimate and upper end)."""
    rng = np.random.default_rng(seed)
    diff = np.asarray(router_correct, dtype=float) - np.asarray(reference_correct, dtype=float)
    n = len(diff)
    boot = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(resamples)])
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    low, high = float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))
    return {"estimate": mean, "low": low, "high": high, "normal_low": mean - 1.96 * se,
            "normal_high": mean + 1.96 * se, "se": se, "n": n, "confidence": 0.95, "resamples": resamples,
            "guard": guard, "point_holds": mean >= -guard, "upper_end_holds": high >= -guard,
            "holds": mean >= -guard and high >= -guard}
