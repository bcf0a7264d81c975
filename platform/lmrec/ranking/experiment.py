"""Model experiments: an experiment's variants may rank with different models (the served artifact and
challengers). :class:`ModelRouter` sends each query of a batch to its variant's :class:`~lmrec.ranking.ranker.Ranker`
(one per model, each over its own index and user vectors on the one shared store) and puts the answers back in
order; the variant's exploration policy is applied by that Ranker's retriever, which logs the impression with
the variant and the model that ranked it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from lmrec.errors import LmrecError
from lmrec.ranking.config import RankingConfig
from lmrec.ranking.ranker import Ranker, Timing
from lmrec.ranking.records import Query, Ranked


class ModelRouter:
    """``rankers``: None -> the served artifact's Ranker, name -> a challenger's. ``config``: the ranking config in
    force (read on every batch, so an experiment changed without a restart routes the next batch)."""

    def __init__(self, rankers: Mapping[str | None, Ranker], config: Callable[[], RankingConfig]):
        if None not in rankers:
            raise LmrecError("a model router needs the served artifact's ranker (key None)")
        self.rankers, self.config = dict(rankers), config

    def check(self, config: RankingConfig) -> None:
        """Refuse a config whose variants name a model this router does not hold."""
        unknown = config.models() - {m for m in self.rankers if m}
        if unknown:
            held = ", ".join(sorted(m for m in self.rankers if m)) or "none"
            raise LmrecError(f"experiment.variants[].model: no challenger model named {', '.join(sorted(unknown))} "
                             f"(the app's models: args hold {held})")

    async def rank(self, queries: Sequence[Query]) -> tuple[list[Ranked | LmrecError], Timing]:
        config = self.config()
        groups: dict[str | None, list[int]] = {}
        for j, q in enumerate(queries):
            groups.setdefault(config.model_of(None if q.related else q.user_id), []).append(j)
        if len(groups) == 1:
            (model,) = groups
            return await self.rankers[model].rank(queries)
        answers = await asyncio.gather(*(self.rankers[m].rank([queries[j] for j in idx]) for m, idx in groups.items()))
        out: list = [None] * len(queries)
        for idx, (ranked, _) in zip(groups.values(), answers):
            for j, r in zip(idx, ranked):
                out[j] = r
        timings = [t for _, t in answers]
        return out, Timing(max(t.contexts for t in timings), max(t.ranking for t in timings), len(queries))
