"""The closed loop: exploration policies with exact propensities, the logged-bandit dataset, off-policy
estimators, an online simulator, and the per-day metrics of ``lmrec bench loop``.

Core only: nothing here imports Ray (``distributed`` is the one shell module, and imports it lazily).
"""
