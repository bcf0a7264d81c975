"""The ranking core, without Ray: records (records.py), the item index (index.py), kNN fusion (fusion.py),
re-rank (rerank.py), the model's towers (encoder.py), users' state (users.py), retrieve + re-rank
(retriever.py), the :class:`~lmrec.ranking.ranker.Ranker` that runs them for a batch (ranker.py), and all of it
built in one process (local.py)."""
