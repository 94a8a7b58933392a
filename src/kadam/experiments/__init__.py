"""The experiments behind ``kadam reproduce`` (needs the ``kadam[experiments]`` extra).

One package per capability (``stability``, ``flow``, ``normalization``, ``training``), each with
``protocol.py`` (the cells: functions that compute, kwargs in, a JSON-serialisable dict out),
``section.py`` (``build_section(settings)``: which cells, the verdicts, the prose) and ``plots.py``.
Shared: ``workloads`` (datasets, models, tasks, optimizers, the training loop), ``profiles`` (every size per
profile), ``registry`` (the sections in report order), ``cells`` (cache and runner), ``report`` (writers).
"""
