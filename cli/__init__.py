"""The command lines: shared option groups (``options``) and one module per command (``test``,
``test_inference``, ``predict``, ``demo``, ``quickstart``); the root scripts are their entry points."""
