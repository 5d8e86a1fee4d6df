"""The bottom layer: facts every other layer uses and that use nothing of the project above them
(``metrics`` aside): the user errors (``errors``), complete-or-nothing writes and the one JSON
reader/writer (``safeio``), the domains as data (``domains``), the ``--protocol`` table (``protocol``)
and what a head's log-variance means, each formula once (``uncertainty``)."""
