"""How a service ranks, changeable without a restart (the ``user_config`` of the stage that ranks: the
Retrieval deployment, or ``ranking:`` in the co-located Ingress's): the re-rank rules, the exploration policy
and the pool it draws from, an experiment's variants with their traffic shares, and how long impressions are
kept."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmrec.loop.policies import EpsilonPolicy, GreedyPolicy, SoftmaxPolicy
from lmrec.ranking.rerank import RerankConfig

PolicyConfig = GreedyPolicy | EpsilonPolicy | SoftmaxPolicy


class Variant(BaseModel):
    """One arm of an experiment: its share of users, the policy they get (the service's when omitted) and the
    model that ranks for them (one of the service's challenger models by name; the served artifact when
    omitted)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    share: float = Field(gt=0, description="relative traffic share (normalised over the variants)")
    policy: PolicyConfig | None = Field(None, discriminator="kind")
    model: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                              description="a challenger model named in the app's models: args (co-located layout)")


class ExperimentConfig(BaseModel):
    """Users are assigned to variants stickily: by a hash of (experiment name, user id), so a user keeps their
    variant across requests, replicas and restarts, and a new experiment name reshuffles everyone."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    variants: list[Variant] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _distinct(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be distinct, got {names}")
        return self

    def assign(self, user_id: str) -> Variant:
        """The user's variant: a point in [0, 1) from the hash, against the cumulative shares."""
        digest = hashlib.sha256(f"{self.name}\x00{user_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.share for v in self.variants)
        for v in self.variants:
            point -= v.share
            if point < 0:
                return v
        return self.variants[-1]


class RankingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: RerankConfig = Field(default_factory=RerankConfig)
    policy: PolicyConfig = Field(default_factory=GreedyPolicy, discriminator="kind")
    # the re-ranked candidates an exploring policy draws its slate from (at least k; greedy reads only k)
    pool: int = Field(50, ge=1, le=1000)
    experiment: ExperimentConfig | None = None
    # impressions older than this are pruned from the store (the logged-bandit data OPE and reports read)
    impressions_days: float = Field(30.0, gt=0)

    def policy_for(self, variant: str | None) -> PolicyConfig:
        if variant and self.experiment:
            for v in self.experiment.variants:
                if v.name == variant:
                    return v.policy or self.policy
        return self.policy

    def models(self) -> set[str]:
        """The challenger models the experiment's variants name."""
        return {v.model for v in self.experiment.variants if v.model} if self.experiment else set()

    def model_of(self, user_id: str | None) -> str | None:
        """The challenger model that ranks for the user (None: the served artifact)."""
        if self.experiment is None:
            return None
        variant = self.variant_of(user_id)
        return next(v.model for v in self.experiment.variants if v.name == variant)

    def variant_of(self, user_id: str | None) -> str | None:
        """The user's experiment variant (None without an experiment; a call without a user: the first variant)."""
        if self.experiment is None:
            return None
        return self.experiment.assign(user_id).name if user_id else self.experiment.variants[0].name
