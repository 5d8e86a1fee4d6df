"""Data: the domains as data (``domains``), index CSVs from a real dataset on disk (``prepare``),
the synthetic stand-in domains (``synthetic``) and complete-or-nothing file writes (``safeio``).
The datasets themselves are read by ``loaders.py`` at the repository root."""
