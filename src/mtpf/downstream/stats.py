"""Confidence intervals over seeds: mean ± half-width of a two-sided Student-t interval, and paired differences.

A score measured with n seeds is reported as ``mean ± t(0.975, n-1) * s / sqrt(n)`` (s: sample standard deviation).
A comparison of two models is a *paired* difference: the per-seed differences of the two models on the same seeds
(same pre-finetuning seed, same adaptation seed, same data), then the same interval over those differences; this
removes the seed's own effect from the comparison. One seed gives a mean and no interval (``half is None``).

scipy gives the t quantile; a table of the 95 % quantiles stands in where scipy is missing (it is a dependency of
scikit-learn, so normally present).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# t(0.975, df) for df = 1..30; beyond, the Cornish-Fisher expansion of t around the normal quantile (error < 1e-4)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value for ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df >= 1), got df={df}")
    try:
        from scipy.stats import t
    except ImportError:
        if confidence != 0.95:
            raise ValueError("without scipy only 95 % intervals are available") from None
        if df <= len(_T95):
            return _T95[df - 1]
        z = 1.959964
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    return float(t.ppf(0.5 + confidence / 2, df))


@dataclass(frozen=True)
class Interval:
    mean: float
    half: float | None  # None with a single value
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half

    def excludes_zero(self) -> bool:
        return self.half is not None and (self.low > 0 or self.high < 0)

    def format(self, digits: int = 1, signed: bool = False) -> str:
        """``"76.2 ± 0.8"`` (``signed``: ``"+0.7 ± 0.8"``, for differences); one value prints as the number."""
        mean = round(self.mean, digits) + 0.0  # a difference that rounds to zero prints "+0.0", never "-0.0"
        text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
        return text if self.half is None else f"{text} ± {self.half:.{digits}f}"

    def format_difference(self) -> str:
        """A paired difference, signed: one decimal, or two where one would print a nonzero half-width as 0.0 (an
        interval of +0.01 ± 0.006 excludes 0; printed "+0.0 ± 0.0" it would look like no difference at all)."""
        narrow = self.half is not None and 0 < round(self.half, 2) and round(self.half, 1) == 0
        return self.format(2 if narrow else 1, signed=True)


def interval(values, confidence: float = 0.95) -> Interval:
    """Mean and half-width of the t interval of ``values`` (no interval for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("an interval needs at least one value")
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return Interval(mean, None, 1)
    half = t_quantile(len(vals) - 1, confidence) * statistics.stdev(vals) / math.sqrt(len(vals))
    return Interval(mean, half, len(vals))


def paired(a: dict, b: dict, confidence: float = 0.95) -> Interval | None:
    """Interval of ``a[s] - b[s]`` over the seeds ``s`` both have; ``None`` when they share no seed."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    return interval([a[s] - b[s] for s in common], confidence)
