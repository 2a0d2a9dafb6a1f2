"""The request and response models of the ranking API, for its OpenAPI docs only: requests are parsed with orjson and
checked field by field (widedeep.serve.request), never through these models, so the hot path pays nothing for them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class RecommendRequest(BaseModel):
    context: dict[str, Any] = Field(default_factory=dict, description="user and context features, transformed once")
    candidates: list[dict[str, Any]] | dict[str, list[Any]] = Field(
        description="item features of each candidate (1 to max_candidates): a list of objects, or an object of columns "
        'with one value per candidate each, e.g. {"impression_app": ["a", "b"], "app_price": [0.99, 0]}'
    )
    k: int = Field(10, ge=1, description="how many candidates to return")
    request_id: str | None = Field(None, min_length=1, max_length=128, description="the client's id (default: a fresh one)")


class RankedItem(BaseModel):
    index: int = Field(description="position in the request's candidate list")
    score: float = Field(description="P(acquisition | context, candidate)")


class RecommendResponse(BaseModel):
    request_id: str = Field(description="the client's request_id, or the one the server made; events refer to it")
    model_version: str
    arm: str = Field(description='the A/B arm that answered ("default" with one model)')
    items: list[RankedItem]


class ScoreRequest(BaseModel):
    instances: list[dict[str, Any]] | dict[str, list[Any]] = Field(
        description="full feature records: a list of objects, or an object of columns with one value per instance each"
    )
    arm: str | None = Field(None, description="the A/B arm to score with (default: the first)")


class ScoreResponse(BaseModel):
    model_version: str
    arm: str
    scores: list[float]


class Event(BaseModel):
    request_id: str = Field(min_length=1, max_length=128, description="the request_id of the /v1/recommend answer")
    index: int = Field(ge=0, description="the candidate's position in that request's candidate list")
    type: str = Field(min_length=1, max_length=128, description="what happened: install, click, ...")
    time: str | None = Field(None, description="ISO-8601 with a zone, e.g. 2026-12-01T10:00:00Z (default: when received)")


class EventsRequest(BaseModel):
    events: list[Event] = Field(description="1 to max_candidates outcomes")


class EventsResponse(BaseModel):
    accepted: int = Field(description="events queued for the event log")


class ErrorBody(BaseModel):
    field: str = Field(
        description="JSON path of the offending value, e.g. candidates[3].app_price ('' for the whole body; the header's "
        "name, e.g. Content-Type, for a header)"
    )
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


ERRORS = {status: {"model": ErrorResponse} for status in (400, 408, 413, 415, 422)}
EVENT_ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 408, 413, 415, 422, 503)}
