"""Seeds into intervals, and intervals into sentences.

Every interpretive sentence of the report comes from :func:`compare` (or :func:`interval`): a mean
over seeds with its 95 % Student-t interval, and for two arms trained from the same first stages
the interval of their *paired* per-seed difference. A claim ("less", "more") is made only when
that interval excludes zero; otherwise the report says "not distinguishable".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _scipy_stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and its two-sided 95 % t-interval (``lo``/``hi`` None when n < 2)."""
    mean: float
    lo: float | None
    hi: float | None
    n: int

    def text(self, digits: int = 3, signed: bool = False, percent: bool = False) -> str:
        """'0.312 [0.301, 0.323]' (or '31.2 % [...]'); just the mean when there is one value."""
        scale, unit = (100.0, " %") if percent else (1.0, "")
        f = (lambda v: f"{scale * v:+.{digits}f}") if signed else (lambda v: f"{scale * v:.{digits}f}")
        if self.lo is None:
            return f"{f(self.mean)}{unit} (n=1)"
        return f"{f(self.mean)}{unit} [{f(self.lo)}, {f(self.hi)}]"

    def excludes(self, value: float) -> bool:
        return self.lo is not None and (self.hi < value or self.lo > value)


def interval(values) -> Interval | None:
    """Mean and 95 % t-interval of the finite values (None when there is none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, None, None, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(_scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` (lower is better unless ``higher_better``), paired over seeds."""
    a: Interval
    b: Interval
    diff: Interval          # mean and interval of a - b over the seeds both have
    verdict: str            # "lower", "higher" or "not distinguishable"

    def sentence(self, name_a: str, name_b: str, what: str, digits: int = 3, signed: bool = False) -> str:
        """e.g. 'ours: 0.012 [..] vs finetune: 0.051 [..]; difference -0.039 [-0.05, -0.03]:
        ours is lower'."""
        head = (f"{what}: {name_a} {self.a.text(digits, signed)} vs {name_b} {self.b.text(digits, signed)}; "
                f"paired difference {self.diff.text(digits, signed=True)}")
        if self.verdict == "not distinguishable":
            return head + f" - not distinguishable at 95 % ({self.diff.n} seeds)"
        return head + f" - {name_a} is {self.verdict} than {name_b} (95 % interval excludes 0)"


def compare(a_by_seed: dict, b_by_seed: dict) -> Comparison | None:
    """Compare two arms measured on the same seeds ({seed: value}); None when either is missing."""
    seeds = sorted(s for s in a_by_seed if s in b_by_seed
                   and a_by_seed[s] is not None and b_by_seed[s] is not None)
    a, b = interval(a_by_seed.values()), interval(b_by_seed.values())
    if not seeds or a is None or b is None:
        return None
    diff = interval([a_by_seed[s] - b_by_seed[s] for s in seeds])
    if diff.excludes(0.0):
        verdict = "lower" if diff.mean < 0 else "higher"
    else:
        verdict = "not distinguishable"
    return Comparison(a, b, diff, verdict)


def overlap(a: Interval, b: Interval) -> bool | None:
    """Whether two intervals overlap (None when either has no interval)."""
    if a is None or b is None or a.lo is None or b.lo is None:
        return None
    return not (a.hi < b.lo or b.hi < a.lo)


def proportion_interval(successes: int, total: int) -> tuple[float, float, float] | None:
    """Share and its 95 % Wilson score interval (for pooled counts, e.g. selection accuracy)."""
    if total <= 0:
        return None
    z = float(_scipy_stats.norm.ppf(0.5 + LEVEL / 2))
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)
