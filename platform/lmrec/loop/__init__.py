"""The closed loop: exploration policies with exact propensities (``policies``), the logged-bandit dataset
(``logs``), off-policy estimators (``estimators``) and their glue to a candidate's rankings (``ope``), an
online simulator on the demo world (``simulator``), the per-day metrics of ``lmrec bench loop``
(``metrics``) and the benchmark commands (``bench``).

Core only: nothing here imports Ray but ``distributed``, the shell that shards simulated users over Ray
actors (and imports Ray lazily).
"""
