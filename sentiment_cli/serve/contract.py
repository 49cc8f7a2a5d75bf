"""The HTTP contract of /predict: the request body and its JSON schema, the response types.

The schema is generated from the same msgspec type the server decodes with, so what the OpenAPI
document promises and what the server accepts cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from sentiment_cli.web import ModelInfo

JSON_TYPES = ("application/json",)
# "At least one visible character", spelled out as code points: `\S` means different things to
# Python's re (which the server validates with) and to JSON Schema's ECMA regex (which clients and
# schema tools read), e.g. for U+001E or U+FEFF. Controls, spaces, zero-width and format characters
# (BOM included) are not visible; anything else is.
VISIBLE = ("[^\\u0000-\\u0020\\u007f-\\u00a0\\u00ad\\u1680\\u180e\\u2000-\\u200f"
           "\\u2028-\\u202f\\u205f-\\u2064\\u3000\\ufeff]")


class PredictionOut(msgspec.Struct):
    label: str
    label_id: int
    score: float
    probabilities: dict[str, float]


class PredictResponse(msgspec.Struct):
    predictions: list[PredictionOut]
    model: ModelInfo


def request_type(max_texts: int, max_text_chars: int) -> type[msgspec.Struct]:
    """The /predict body, {"texts": [...]} or {"text": "..."}, with the configured limits.

    A text needs at least one visible character (VISIBLE; the pattern is a search, not a full match).
    Exactly one of the two keys: minProperties/maxProperties in the schema, checked by the handler.
    """
    text = Annotated[str, msgspec.Meta(
        min_length=1, max_length=max_text_chars, pattern=VISIBLE,
        description=f"A review: 1 to {max_text_chars} characters, not only whitespace.")]
    texts = Annotated[list[text], msgspec.Meta(  # type: ignore[valid-type]
        min_length=1, max_length=max_texts, description=f"1 to {max_texts} reviews.")]
    return msgspec.defstruct(
        "PredictRequest",
        [("texts", texts | msgspec.UnsetType, msgspec.UNSET),
         ("text", text | msgspec.UnsetType, msgspec.UNSET)],
        forbid_unknown_fields=True,
    )


def request_schema(req_type: type) -> dict[str, Any]:
    """The JSON schema of the body, inlined (msgspec's is exact; Litestar's loses item limits)."""
    (ref,), components = msgspec.json.schema_components(
        [req_type], ref_template="#/components/schemas/{name}")
    schema = dict(components[ref["$ref"].rsplit("/", 1)[-1]])
    schema.update(minProperties=1, maxProperties=1,
                  examples=[{"text": "A gripping, beautifully acted film."},
                            {"texts": ["Loved it.", "A tedious mess."]}])
    return schema
