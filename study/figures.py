"""The report's figures (PNG, matplotlib Agg): each shows the per-seed values and their mean with
the 95 % interval, so the spread a sentence relies on is visible."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from base.domains import get_domain

from .evaluate import validation_by_epoch
from .stats import interval

ARM_COLORS = {"ours": "tab:red", "finetune": "tab:gray", "distill": "tab:blue", "replay": "tab:green",
              "authors": "tab:orange", "reinit": "tab:brown", "bn_all": "tab:pink", "exhaust": "tab:olive"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _plt().close(fig)
    return out


def _dots_and_bar(ax, x, by_seed: dict, color):
    """Per-seed dots, the mean as a bar and its 95 % interval as an error bar."""
    vals = list(by_seed.values())
    if not vals:
        return
    iv = interval(vals)
    ax.bar(x, iv.mean, 0.6, color=color, alpha=0.5)
    if iv.lo is not None:
        ax.errorbar(x, iv.mean, yerr=[[iv.mean - iv.lo], [iv.hi - iv.mean]], color="black", capsize=4)
    ax.plot(x + np.linspace(-0.15, 0.15, len(vals)), vals, "k.", ms=5)


def fig_fit(res, out: Path) -> Path | None:
    """Validation AbsRel and RMSE per epoch of every single-domain model (one line per seed)
    against the constant predictor."""
    letters = res.s.letters
    if not res.baselines:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, len(letters), figsize=(3.6 * len(letters), 5.4), squeeze=False)
    for col, c in enumerate(letters):
        base = res.baselines.get(c)
        for row, metric in enumerate(("abs_rel", "rmse")):
            ax = axes[row, col]
            for seed in res.s.seeds:
                logs = validation_by_epoch(res.plan.first(c, seed))
                ax.plot([r["epoch"] for r in logs], [r["val"].get(c, {}).get(metric) for r in logs], "o-",
                        ms=3, label=f"seed {seed}")
            if base:
                ax.axhline(base[metric], ls="--", color="tab:orange", label="constant")
                ax.axhline(base[metric] * (0.5 if metric == "abs_rel" else 0.7), ls=":", color="tab:green",
                           label="target (50 % / 70 %)")
            ax.set_ylim(bottom=0)
            ax.set_ylabel(f"validation {'AbsRel' if metric == 'abs_rel' else 'RMSE (m)'}")
            if row == 0:
                ax.set_title(f"{get_domain(c).name} ({c})")
                ax.legend(fontsize=7)
            else:
                ax.set_xlabel("epoch")
    fig.suptitle("Single-domain models against a constant depth (validation rows, synthetic stand-ins)",
                 fontsize=10)
    return _save(fig, out)


def fig_arms(res, out: Path, arms, panels, title: str) -> Path:
    """One panel per (label, {arm: {seed: value}}): bars with 95 % intervals and per-seed dots."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (label, by_arm) in zip(axes[0], panels):
        for i, arm in enumerate(arms):
            _dots_and_bar(ax, i, by_arm.get(arm) or {}, ARM_COLORS.get(arm, "tab:gray"))
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=30, fontsize=8)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def fig_selection(res, out: Path, arm: str, selectors, conditions) -> Path | None:
    """Selection accuracy per selector and condition (bars: mean over seeds, 95 % interval)."""
    if not selectors:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(conditions), 3.4))
    width = 0.8 / len(selectors)
    for j, sel in enumerate(selectors):
        for i, cond in enumerate(conditions):
            by_seed, _ = res.selection_accuracy(arm, sel, cond)
            iv = interval([100 * v for v in by_seed.values()])
            if iv is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(x, iv.mean, width, color=f"C{j}", label=sel if i == 0 else None)
            if iv.lo is not None:  # a share: the interval clipped to [0, 100] %
                lo, hi = max(0.0, iv.lo), min(100.0, iv.hi)
                ax.errorbar(x, iv.mean, yerr=[[iv.mean - lo], [hi - iv.mean]], color="black", capsize=2)
    ax.axhline(99, ls=":", color="black", lw=1)
    ax.set_xticks(range(len(conditions)))
    ax.set_xticklabels(conditions)
    ax.set_ylabel("correct head (%)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=7, ncol=len(selectors))
    ax.set_title(f"Head selection on the final {arm} models (mean over seeds, 95 % interval)", fontsize=9)
    return _save(fig, out)
