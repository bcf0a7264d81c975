"""The HTTP API's request and response bodies (pydantic; unknown fields are errors that name the field).

The OpenAPI schema generated from these models is the API's contract: every bound the service enforces on a
request is declared here (lengths, patterns, ranges, required fields), so that a request the schema allows is
accepted and one it does not is refused with a 4xx naming the field, before any stage sees it. Path and query
parameters have their types here too (:data:`ItemIdPath`, :data:`UserIdPath`, :data:`HistoryLimit`).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
)

MAX_K = 100
MAX_EVENTS_PER_REQUEST = 1000
MAX_ITEMS_PER_REQUEST = 256
MAX_TEXT_CHARS = 10_000
MAX_ID_CHARS = 256  # the store's limit (check_id)
MAX_HISTORY_LIMIT = 1000
MAX_LIST_IDS = 10_000  # allow / deny lists
MAX_ATTRIBUTES = 64

# What Python's str.isspace() calls whitespace (the store refuses an id that strip() leaves empty), spelled out
# so that a pattern means the same to the server (Rust regex), to JSON Schema (ECMA 262) and to a client's
# generator (Python re): their \s differ (U+FEFF, U+180E).
_SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTROL = r"\x00-\x1f\x7f-\x9f"  # C0, DEL and C1: never part of an id (log lines, headers, terminals)
# an id is a URL path segment too (/v1/items/{item_id}): no "/" and not "." or ".." (an item posted with one
# could never be addressed), no control characters, and at least one character that is not a space
ID_PATTERN = rf"^(?!\.\.?$)[^{_CONTROL}/]*[^{_CONTROL}{_SPACE}/][^{_CONTROL}/]*$"
# a text: anything (new lines included) with a character that is not a space (unanchored, as JSON Schema's is)
TEXT_PATTERN = rf"[^{_SPACE}]"
ID_RULE = f"1 to {MAX_ID_CHARS} characters: no control characters or '/', not only spaces, not '.' or '..'"
_CONTROL_RE, _VISIBLE_RE = re.compile(f"[{_CONTROL}]"), re.compile(TEXT_PATTERN)


def _unicode(value: str) -> str:
    """A lone UTF-16 surrogate (JSON's "\\ud800") is not text a store can keep: refused here, by name."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return value


def _id(value: str) -> str:
    """ID_PATTERN, with a message that says which rule was broken (pydantic's would print the pattern; and its
    Rust regex engine has no look-ahead)."""
    if _CONTROL_RE.search(value):
        raise ValueError("must not contain control characters")
    if not _VISIBLE_RE.search(value):
        raise ValueError("must not be only spaces")
    if "/" in value or value in (".", ".."):
        raise ValueError("must not contain '/' or be '.' or '..': ids are URL path segments too")
    return _unicode(value)


def _text(value: str) -> str:
    if not _VISIBLE_RE.search(value):
        raise ValueError("must not be blank: the item is encoded from its text")
    return _unicode(value)


def _integral(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _scalar(value: Any) -> str | int | float | bool:
    if isinstance(value, str):
        return _unicode(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if isinstance(value, (bool, int, float)):
        return value
    raise ValueError("must be a string, a number or a boolean")


def _filter_value(value: Any) -> Any:
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list matches no item: give at least one value")
        return [_scalar(v) for v in value]
    return _scalar(value)


_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": ID_PATTERN, "description": ID_RULE}
_SCALAR_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}

# a user or item id in a body
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_id), WithJsonSchema(_ID_SCHEMA)]
# ... and in a URL path: Starlette has decoded it, so %00 or %0A arrive here as control characters
ItemIdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description=ID_RULE, json_schema_extra={"pattern": ID_PATTERN}),
                       AfterValidator(_id)]
UserIdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description=ID_RULE, json_schema_extra={"pattern": ID_PATTERN}),
                       AfterValidator(_id)]
HistoryLimit = Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT, description="the most recent events to return")]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_text),
                 WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": TEXT_PATTERN,
                                 "description": "the item's text, encoded by the LM; not blank"})]
Key = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_unicode)]
Int = Annotated[int, BeforeValidator(_integral)]
# a slot in a recommendation (the schema spelled out: constraints on a validated int inside a union are not)
Position = Annotated[Int, Field(ge=0, lt=1000), WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 999})]
EventType = Literal["view", "click", "purchase", "rating"]
Field_ = Literal["text", "attributes"]  # item metadata an answer may carry
# an attribute value (str, int, float or bool; stored as JSON)
Scalar = Annotated[Any, PlainValidator(_scalar), WithJsonSchema(_SCALAR_SCHEMA)]
# a filter matches one value or any of a (non-empty) list of values
FilterValue = Annotated[Any, PlainValidator(_filter_value),
                        WithJsonSchema({"anyOf": [*_SCALAR_SCHEMA["anyOf"], {"type": "array", "items": _SCALAR_SCHEMA, "minItems": 1}]})]
Filters = dict[Key, FilterValue]
IdList = Annotated[list[str], Field(max_length=MAX_LIST_IDS)]


class Body(BaseModel):
    # strict: a value of another JSON type is refused, not converted (lax pydantic takes false for 0.0, "10" for
    # 10, 1 for true: requests the schema does not allow); integral numbers stay integers (JSON Schema: 10.0 is one)
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(Body):
    user_id: Id
    k: Int = Field(10, ge=1, le=MAX_K)
    exclude_seen: bool = True
    # attribute equality (or membership for a non-empty list), e.g. {"category": "Running", "brand": ["A", "B"]}
    filters: Filters = Field(default_factory=dict)
    allow: IdList | None = Field(None, description="only these item ids")
    deny: IdList | None = Field(None, description="never these item ids")
    explain: bool = False
    diversity: float | None = Field(None, ge=0, le=1, description="MMR trade-off; default from the service")
    fields: list[Field_] = Field(default_factory=list, max_length=2, description="item metadata to return with each item")


class RelatedRequest(Body):
    item_id: Id
    k: Int = Field(10, ge=1, le=MAX_K)
    filters: Filters = Field(default_factory=dict)
    allow: IdList | None = Field(None, description="only these item ids")
    deny: IdList | None = Field(None, description="never these item ids")
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
    models: dict[str, str] = Field(default_factory=dict, description="challenger models for experiments: name -> model version")


class _Event(Body):
    user_id: Id
    item_id: Id
    timestamp: float | None = Field(None, ge=0, allow_inf_nan=False, description="seconds since the epoch; default now")
    recommendation_id: Id | None = Field(None, description="the recommendation the user acted on (attribution)")
    position: Position | None = Field(None, description="its slot in that recommendation, 0 = the top")


class ActionIn(_Event):
    """A view, click or purchase; ``value`` optional (e.g. a purchase amount)."""

    event_type: Literal["view", "click", "purchase"]
    value: float | None = Field(None, allow_inf_nan=False)


class RatingIn(_Event):
    """A rating: ``value`` is required."""

    event_type: Literal["rating"]
    value: float = Field(allow_inf_nan=False, description="the rating")


# one event: told apart by event_type (a rating needs a value), so errors name the field of the kind sent
EventIn = Annotated[Annotated[ActionIn, Tag("action")] | Annotated[RatingIn, Tag("rating")],
                    Discriminator(lambda v: "rating" if _get(v, "event_type") == "rating" else "action")]


def _get(value, key: str):
    return value.get(key) if isinstance(value, dict) else getattr(value, key, None)


class EventsIn(Body):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


# one event, or {"events": [...]}: told apart by the "events" key, so errors name the fields of the shape sent
EventsBody = Annotated[
    Annotated[EventIn, Tag("one")] | Annotated[EventsIn, Tag("batch")],
    Discriminator(lambda v: "batch" if _get(v, "events") is not None else "one"),
]


class EventsAccepted(BaseModel):
    accepted: int


class ItemIn(Body):
    text: Text
    # scalar values only (stored as JSON); a multi-valued attribute belongs in the text or one key per value
    attributes: dict[Key, Scalar] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)


class ItemUpserted(BaseModel):
    item_id: str
    item_version: int


class ItemWithId(ItemIn):
    item_id: Id


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
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class ItemsRemoved(BaseModel):
    accepted: int
    item_version: int = Field(description="the version of the last tombstone written")


class HistoryEventOut(BaseModel):
    item_id: str
    event_type: str
    value: float | None = None  # left out when the event has none
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
