"""The lifelong training engine: one stage learns one more domain (``lifelong``), and the one map
from ``--protocol ours|authors`` to the individual options (``protocol``)."""
