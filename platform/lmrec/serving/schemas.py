"""The HTTP API's request and response bodies (pydantic; unknown fields are errors that name the field)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from lmrec.store.base import ID_PATTERN, MAX_ID_LEN

MAX_K = 100
MAX_EVENTS_PER_REQUEST = 1000
MAX_ITEMS_PER_REQUEST = 256
MAX_TEXT_CHARS = 10_000
ID = Field(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)  # the store's id rule, declared

EventType = Literal["view", "click", "purchase", "rating"]
Field_ = Literal["text", "attributes"]  # item metadata an answer may carry
Scalar = str | int | float | bool
# a filter matches one value or any of a list of values
FilterValue = Scalar | list[Scalar]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(Body):
    user_id: str = ID
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_seen: bool = True
    # attribute equality (or membership for a list), e.g. {"category": "Running", "brand": ["A", "B"]}
    filters: dict[str, FilterValue] = Field(default_factory=dict)
    allow: list[str] | None = Field(None, max_length=10_000, description="only these item ids")
    deny: list[str] | None = Field(None, max_length=10_000, description="never these item ids")
    explain: bool = False
    diversity: float | None = Field(None, ge=0, le=1, description="MMR trade-off; default from the service")
    fields: list[Field_] = Field(default_factory=list, max_length=2, description="item metadata to return with each item")


class RelatedRequest(Body):
    item_id: str = ID
    k: int = Field(10, ge=1, le=MAX_K)
    filters: dict[str, FilterValue] = Field(default_factory=dict)
    allow: list[str] | None = Field(None, max_length=10_000, description="only these item ids")
    deny: list[str] | None = Field(None, max_length=10_000, description="never these item ids")
    diversity: float | None = Field(None, ge=0, le=1, description="MMR trade-off; default from the service")
    fields: list[Field_] = Field(default_factory=list, max_length=2, description="item metadata to return with each item")

    # read by the ranking path it shares with recommendations: the item itself is never among its related items
    @property
    def exclude_seen(self) -> bool:
        return True

    @property
    def explain(self) -> bool:
        return False


class Explanation(BaseModel):
    reason: str
    events: list[dict]


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    explanation: Explanation | None = None
    text: str | None = None
    attributes: dict[str, Scalar | None] | None = None
    propensity: float | None = Field(None, description="P(this item at this position) under the policy that drew the list")
    explored: bool | None = Field(None, description="exploration, not the ranking, filled this slot")


class RecommendResponse(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    model_version: str
    cold_start: bool = Field(description="true when the user has no history: the ranking is not personalised")
    history_version: int = Field(description="the version of the user's history the ranking was computed from "
                                             "(it moves with every event; 0: no history)")
    recommendation_id: str = Field(description="names this answer: events acting on it may cite it (and the position)")
    policy: str = Field(description="the exploration policy that drew the list (greedy: the ranking as is)")
    variant: str | None = Field(None, description="the experiment variant the user is assigned to")


class RelatedResponse(BaseModel):
    item_id: str
    items: list[RecommendedItem]
    model_version: str
    recommendation_id: str
    policy: str
    variant: str | None = None


class PolicyOut(BaseModel):
    model_version: str
    ranking: dict = Field(description="re-rank rules, exploration policy and pool, experiment (RankingConfig)")


class EventIn(Body):
    user_id: str = ID
    item_id: str = ID
    event_type: EventType
    value: float | None = Field(None, allow_inf_nan=False)
    timestamp: float | None = Field(None, ge=0, allow_inf_nan=False, description="seconds since the epoch; default now")
    recommendation_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN,
                                          description="the recommendation the user acted on (attribution)")
    position: int | None = Field(None, ge=0, lt=1000, description="its slot in that recommendation, 0 = the top")


class EventsIn(Body):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


# one event, or {"events": [...]}: told apart by the "events" key, so errors name the fields of the shape sent
UNION_TAGS = ("one", "batch")
EventsBody = Annotated[
    Annotated[EventIn, Tag("one")] | Annotated[EventsIn, Tag("batch")],
    Discriminator(lambda v: "batch" if (v.get("events") if isinstance(v, dict) else getattr(v, "events", None)) is not None else "one"),
]


class EventsAccepted(BaseModel):
    accepted: int


class ItemIn(Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    # scalar values only (stored as JSON); a multi-valued attribute belongs in the text or one key per value
    attributes: dict[str, Scalar] = Field(default_factory=dict, max_length=64)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be blank: the item is encoded from it")
        return v


class ItemUpserted(BaseModel):
    item_id: str
    item_version: int


class ItemWithId(ItemIn):
    item_id: str = ID


class ItemsIn(Body):
    items: list[ItemWithId] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class ItemsUpserted(BaseModel):
    accepted: int
    item_version: int = Field(description="the version of the last item written (an id repeated in the request: its last entry wins)")


class ItemOut(BaseModel):
    item_id: str
    text: str
    attributes: dict[str, Scalar]
    # catalog: the id came with the model (its text may since have been replaced through the API); posted: it did not
    source: Literal["catalog", "posted"]


class ItemRemoved(BaseModel):
    item_id: str
    item_version: int


class ItemsRemove(Body):
    item_ids: list[Annotated[str, ID]] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class ItemsRemoved(BaseModel):
    accepted: int
    item_version: int = Field(description="the version of the last tombstone written")


class HistoryEventOut(BaseModel):
    item_id: str
    event_type: str
    value: float | None
    timestamp: float
    text: str | None = None


class HistoryOut(BaseModel):
    user_id: str
    events: list[HistoryEventOut]


class UserSummary(BaseModel):
    user_id: str
    events: int


class UsersOut(BaseModel):
    users: list[UserSummary]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class UserDeleted(BaseModel):
    user_id: str
    deleted: bool


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: list[dict] = Field(default_factory=list)
    request_id: str | None = Field(None, description="on unexpected errors: the server log has the details under it")


class ErrorResponse(BaseModel):
    error: ErrorBody
