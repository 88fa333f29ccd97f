"""What each route answers, as models for ``/openapi.json``.

Routes build their answers as plain dicts (the renderers in ``server/schemas.py``
and the services) and FastAPI checks them as ``dict[str, Any]``, as cheaply as
before these models existed. A route's return type is
``Annotated[dict[str, Any], Documented(SomeOut)]``: the published schema shows
``SomeOut``, while nothing validates or reshapes the answer at run time, so
every key and value a client sees is exactly what the route built, and the hot
routes pay nothing. What keeps the models true is the schemathesis test
(``tests/server/test_schemathesis.py``), which checks every answer it gets
against them (``response_schema_conformance``).

Error answers share one shape (``server/errors.py``): ``error`` (a stable
code), ``message`` and whatever the error names (``field``, ``id``, ``node``...);
a body that failed validation adds ``details``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from pydantic_core import core_schema as cs


class Documented:
    """``Annotated`` metadata: show ``model``'s schema (by reference) for a
    value validated as what it annotates."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    def __get_pydantic_json_schema__(
        self, _: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        model = self.model.__pydantic_core_schema__
        if model["type"] == "definitions":  # a model that refers to itself
            return handler(model)
        # Through a definition reference: a $ref to the model's component,
        # not its properties copied inline under a generated title.
        ref = cs.definition_reference_schema(schema_ref=model["ref"])
        return handler(cs.definitions_schema(ref, [model]))


class Out(BaseModel):
    """An answer's shape: every key listed (``additionalProperties: false``),
    so the schemathesis test notices a key the documentation lacks."""

    model_config = ConfigDict(extra="forbid")


class FieldErrorOut(Out):
    field: str = Field(
        description="the field, dotted ('resources.cpu'); empty for a body that is not JSON"
    )
    message: str


class ErrorOut(BaseModel):
    """Every error answer. Besides ``error`` and ``message`` it carries what
    the error is about (``field``, ``id``, ``node``, ``limit``...)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"error": "node_not_found", "message": "node n9 does not exist", "node": "n9"},
                {
                    "error": "invalid_input",
                    "message": "resources.cpu: Input should be a valid string",
                    "details": [
                        {"field": "resources.cpu", "message": "Input should be a valid string"}
                    ],
                },
            ]
        },
    )

    error: str = Field(description="a stable code: node_not_found, invalid_input, ...")
    message: str = Field(description="what went wrong, for a person")
    details: list[FieldErrorOut] = Field(
        default_factory=list, description="each bad field of a body that failed validation"
    )


_WHY = {
    400: "the body is not JSON",
    401: "no token, or a token that is not valid",
    403: "the token's role may not do this",
    404: "what the path names does not exist",
    409: "refused in the current state (not enough capacity, in use, exists...)",
    413: "the body is over the limit",
    422: "a field is invalid (``details`` names each)",
    429: "too many failed authentications from this address (see Retry-After)",
    502: "the cloud provider failed",
    503: "the store is unavailable, or this server does not lead",
}
AUTHED = (401, 429, 503)
"""What any authenticated route may answer."""
BODY = (400, 413, 422)
"""What a route that reads a JSON body may answer besides."""


def errors(*statuses: int, json_only: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for these error statuses, all with the error shape.
    ``json_only``: for a route whose success is not JSON (FastAPI would list
    the error shape under the success's media type too)."""
    if json_only:
        ref = {"$ref": "#/components/schemas/ErrorOut"}
        return {
            s: {"description": _WHY[s], "content": {"application/json": {"schema": ref}}}
            for s in sorted(set(statuses))
        }
    return {s: {"model": ErrorOut, "description": _WHY[s]} for s in sorted(set(statuses))}
