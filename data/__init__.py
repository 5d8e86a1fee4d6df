"""Data: index CSVs from a real dataset on disk (``prepare``) and the synthetic stand-in domains
(``synthetic``). The domains as data, the errors and the safe writes are the bottom layer, ``base/``;
the datasets themselves are read by ``loaders.py`` at the repository root."""
