"""The lifelong study behind docs/RESULTS.md, as a package.

``config`` (presets, arms, options) -> ``plan`` (every training stage and its checkpoint) -> ``run``
(training through the engine, resumable, in parallel processes) -> ``evaluate`` (each checkpoint
through the shared evaluation, the selection benchmark, constant baselines) -> ``results`` (the
numbers: matrices, forgetting, plasticity, fit, protocol and selection tables, each over seeds) ->
``stats`` (95 % intervals and paired comparisons: the only source of interpretive sentences) ->
``figures`` and ``report`` (docs/RESULTS.md). The command that runs it all is ``cli.study``
(``main``); ``study.py`` and ``python -m study`` are its entry points.
"""
