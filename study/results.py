"""Every number of the report, per seed, from the evaluation JSONs and the engine's run logs.

Conventions: ``matrix[k][d]`` is the test error of domain ``order[d]`` after stage ``k`` (domain
prior, the study's evaluation conventions); summaries (final average, forgetting, BWT) are
``evaluation.evaluate.lifelong_summary``'s. Per-seed values are dicts ``{seed: value}``: ``stats`` turns them
into intervals and paired comparisons.
"""
from __future__ import annotations

from pathlib import Path

from evaluation.evaluate import lifelong_summary

from .evaluate import cache_path, cached, validation_by_epoch
from .plan import Plan
from base.safeio import read_json

METRICS = ("abs_rel", "rmse")


class Results:
    def __init__(self, plan: Plan):
        self.plan, self.s = plan, plan.s
        self._evals: dict[str, dict | None] = {}
        self.baselines = read_json(self.s.runs_dir / "eval" / "constant_baseline.json")
        self.baselines = (self.baselines or {}).get("results") or {}

    # ---- raw pieces -------------------------------------------------------------------------
    def evaluation(self, path: Path):
        key = str(path)
        if key not in self._evals:
            self._evals[key] = cached(self.s, path, self.s.evaluation()) if path.is_file() else None
        return self._evals[key]

    def value(self, path: Path, letter: str, metric: str, kind: str = "prior"):
        e = self.evaluation(path)
        r = ((e or {}).get("results") or {}).get(letter, {}).get(kind)
        return None if r is None else r.get(metric)

    def selection(self, path: Path):
        return read_json(cache_path(self.s, path, "selection")) if path.is_file() else None

    # ---- lifelong matrices --------------------------------------------------------------------
    def matrix(self, order: str, arm: str, seed: int, metric: str):
        return [[self.value(self.plan.stage(order, k, arm, seed), order[d], metric) for d in range(k)]
                for k in range(1, len(order) + 1)]

    def summary(self, order: str, arm: str, seed: int, metric: str):
        m = self.matrix(order, arm, seed, metric)
        if any(v is None for row in m for v in row):
            return None
        return lifelong_summary(m, metric=metric)

    def per_seed(self, arm: str, key: str, metric: str, orders=None) -> dict:
        """{seed: mean over ``orders`` (default: the arm's) of a summary key}; a seed with a missing
        order is left out (so every seed averages the same orders)."""
        orders = orders or self.plan.orders_of(arm)
        out = {}
        for seed in self.s.seeds:
            vals = [(self.summary(o, arm, seed, metric) or {}).get(key) for o in orders]
            if vals and all(v is not None for v in vals):
                out[seed] = sum(vals) / len(vals)
        return out

    # ---- fit of the single-domain models ------------------------------------------------------
    def fit(self, letter: str, seed: int, arm: str | None = None):
        """Validation metrics of a single-domain model after its last epoch, with the constant's."""
        logs = validation_by_epoch(self.plan.first(letter, seed, arm))
        base = self.baselines.get(letter)
        if not logs or not base:
            return None
        val = logs[-1]["val"].get(letter) or {}
        return {"val": val, "constant": base,
                "ratio": {m: val[m] / base[m] for m in METRICS if val.get(m) is not None and base.get(m)}}

    # ---- plasticity ---------------------------------------------------------------------------
    def new_domain_gaps(self, arm: str, seed: int, budget: str, metric: str = "abs_rel") -> list:
        """Relative error of each newly learned domain right after its stage against its single-domain
        model: ``budget`` "equal" compares validation rows after the same number of epochs on that
        domain (the first stage's log at epoch = --epochs); "full" compares the test split against
        the fully trained single-domain model."""
        gaps = []
        for order in self.plan.orders_of(arm):
            for k in range(2, len(order) + 1):
                c = order[k - 1]
                if budget == "equal":
                    stage = validation_by_epoch(self.plan.stage(order, k, arm, seed))
                    ref = [r for r in validation_by_epoch(self.plan.first(c, seed))
                           if r["epoch"] == self.s.epochs]
                    v = stage[-1]["val"].get(c, {}).get(metric) if stage else None
                    r = ref[0]["val"].get(c, {}).get(metric) if ref else None
                else:
                    v = self.value(self.plan.stage(order, k, arm, seed), c, metric)
                    r = self.value(self.plan.first(c, seed), c, metric)
                gaps.append(None if v is None or not r else v / r - 1)
        return gaps

    def plasticity(self, arm: str, budget: str, metric: str = "abs_rel") -> dict:
        """{seed: mean relative gap over the arm's new domains} (seeds with a missing stage left out)."""
        out = {}
        for seed in self.s.seeds:
            gaps = self.new_domain_gaps(arm, seed, budget, metric)
            if gaps and all(g is not None for g in gaps):
                out[seed] = sum(gaps) / len(gaps)
        return out

    # ---- heads and selection ------------------------------------------------------------------
    def single_head(self, letter: str, metric: str = "abs_rel") -> tuple[dict, dict]:
        """({seed: joint per-domain-head error}, {seed: single-head error}) of one domain."""
        joint, shared = {}, {}
        for seed in self.s.seeds:
            j = self.value(self.plan.joint(seed), letter, metric)
            h = self.value(self.plan.joint(seed, shared_head=True), letter, metric)
            if j is not None and h is not None:
                joint[seed], shared[seed] = j, h
        return joint, shared

    def selection_accuracy(self, arm: str, selector: str, condition: str) -> tuple[dict, list]:
        """({seed: accuracy over all test images of the arm's final models}, [right, total] pooled)."""
        per_seed, right_all, n_all = {}, 0, 0
        for seed in self.s.seeds:
            right = n = 0
            for order in self.plan.orders_of(arm):
                sel = self.selection(self.plan.stage(order, len(order), arm, seed))
                counts = ((sel or {}).get("counts") or {}).get(selector, {}).get(condition, {}).get("all")
                if counts is None:
                    break
                right, n = right + counts[0], n + counts[1]
            else:
                if n:
                    per_seed[seed] = right / n
                    right_all, n_all = right_all + right, n_all + n
        return per_seed, [right_all, n_all]

    def selectors(self) -> list[str]:
        for seed in self.s.seeds:
            for arm in self.plan.arms:
                for order in self.plan.orders_of(arm):
                    sel = self.selection(self.plan.stage(order, len(order), arm, seed))
                    if sel:
                        return list(sel["selectors"]), list(sel["conditions"])
        return [], []

    def evaluation_selector(self, arm: str) -> str | None:
        """The selector the test evaluation used on the arm's final models (the checkpoints' default)."""
        for seed in self.s.seeds:
            for order in self.plan.orders_of(arm):
                e = self.evaluation(self.plan.stage(order, len(order), arm, seed))
                if e and e.get("selector"):
                    return e["selector"]
        return None

    def automatic_selection(self, arm: str) -> dict:
        """{seed: share of test images whose checkpoint-default selection chose their own head} over
        the arm's final models (the test evaluation's confusion counts)."""
        out = {}
        for seed in self.s.seeds:
            right = n = 0
            for order in self.plan.orders_of(arm):
                e = self.evaluation(self.plan.stage(order, len(order), arm, seed))
                if not e:
                    break
                for c in order:
                    chosen = e["results"][c].get("chosen") or {}
                    right += chosen.get(c, 0)
                    n += sum(chosen.values())
            else:
                if n:
                    out[seed] = right / n
        return out
