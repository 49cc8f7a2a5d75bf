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


def _limits(max_texts: int, max_text_chars: int) -> tuple[Any, Any]:
    text = Annotated[str, msgspec.Meta(
        min_length=1, max_length=max_text_chars, pattern=VISIBLE,
        description=f"A review: 1 to {max_text_chars} characters, not only whitespace.")]
    texts = Annotated[list[text], msgspec.Meta(  # type: ignore[valid-type]
        min_length=1, max_length=max_texts, description=f"1 to {max_texts} reviews.")]
    return text, texts


def request_type(max_texts: int, max_text_chars: int) -> type[msgspec.Struct]:
    """The /predict body with the configured limits: {"texts": [...]} or {"text": "..."}, or the
    convention of MLflow's and Hugging Face's model servers, {"inputs": "..."} or {"inputs": [...]}.

    A text needs at least one visible character (VISIBLE; the pattern is a search, not a full match).
    Exactly one of the keys: minProperties/maxProperties in the schema, checked by BodyDecoder.
    `inputs` stays raw here and is decoded as `text` or `texts` by BodyDecoder: msgspec 0.22
    corrupts memory on a union of two constrained types (a double free on the error path).
    """
    text, texts = _limits(max_texts, max_text_chars)
    return msgspec.defstruct(
        "PredictRequest",
        [("texts", texts | msgspec.UnsetType, msgspec.UNSET),
         ("text", text | msgspec.UnsetType, msgspec.UNSET),
         ("inputs", msgspec.Raw | msgspec.UnsetType, msgspec.UNSET)],
        forbid_unknown_fields=True,
    )


class BodyDecoder:
    """Bytes of a /predict body → its texts, or None unless exactly one key is given. Raises
    msgspec.DecodeError / ValidationError (and UnicodeDecodeError) as msgspec does."""

    def __init__(self, max_texts: int, max_text_chars: int):
        text, texts = _limits(max_texts, max_text_chars)
        self.body = msgspec.json.Decoder(request_type(max_texts, max_text_chars))
        self.one = msgspec.json.Decoder(text)
        self.many = msgspec.json.Decoder(texts)

    def __call__(self, raw: bytes) -> list[str] | None:
        data = self.body.decode(raw)
        given = [k for k in ("text", "texts", "inputs") if getattr(data, k) is not msgspec.UNSET]
        if len(given) != 1:
            return None
        if given[0] == "text":
            return [data.text]
        if given[0] == "texts":
            return list(data.texts)
        value = bytes(data.inputs)
        as_one = value.lstrip()[:1] != b"["
        try:
            return [self.one.decode(value)] if as_one else list(self.many.decode(value))
        except msgspec.ValidationError as exc:  # say where, as for the other keys
            where = str(exc).replace("`$", "`$.inputs")
            raise msgspec.ValidationError(where if "`$" in where else f"{where} - at `$.inputs`") from None


def request_schema(req_type: type) -> dict[str, Any]:
    """The JSON schema of the body, inlined (msgspec's is exact; Litestar's loses item limits)."""
    (ref,), components = msgspec.json.schema_components(
        [req_type], ref_template="#/components/schemas/{name}")
    schema = dict(components[ref["$ref"].rsplit("/", 1)[-1]])
    props = dict(schema["properties"])
    props["inputs"] = {"anyOf": [props["text"], props["texts"]],
                       "description": "One review or a list of them, as MLflow and Hugging Face model servers "
                                      "take it."}
    schema["properties"] = props
    schema.update(minProperties=1, maxProperties=1,
                  examples=[{"text": "A gripping, beautifully acted film."},
                            {"texts": ["Loved it.", "A tedious mess."]},
                            {"inputs": ["Loved it.", "A tedious mess."]}])
    return schema


def docs_page_plugin():
    """The page at /schema: the OpenAPI document rendered on the server as plain HTML, no script
    and no asset from a CDN (Litestar's Swagger, ReDoc, Scalar, RapiDoc and Stoplight pages all load
    theirs from one), so the API docs read the same on a machine without internet."""
    from litestar.openapi.plugins import OpenAPIRenderPlugin

    class OfflineDocs(OpenAPIRenderPlugin):
        def __init__(self) -> None:
            super().__init__(path=["/", "/docs"], favicon="", style=DOCS_STYLE)

        def render(self, request: Any, openapi_schema: dict[str, Any]) -> bytes:
            return render_docs(openapi_schema, self.get_openapi_json_route(request), self.style).encode()

    return OfflineDocs()


DOCS_STYLE = ("<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
              "pre{background:#8881;padding:.6rem;overflow:auto}code{font-size:90%}"
              "td,th{text-align:left;padding:.2rem .8rem .2rem 0;vertical-align:top}</style>")


def render_docs(doc: dict[str, Any], json_url: str, style: str) -> str:
    """Every operation of an OpenAPI document as HTML: method and path, summary, request body
    schema and examples, responses; then the component schemas."""
    import html
    import json

    def pre(value: Any) -> str:
        return f"<pre><code>{html.escape(json.dumps(value, indent=2))}</code></pre>"

    info = doc.get("info", {})
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(info.get('title', ''))}"
           f" API</title>{style}</head><body><h1>{html.escape(info.get('title', ''))} "
           f"{html.escape(str(info.get('version', '')))}</h1><p>{html.escape(info.get('description', ''))}</p>"
           f"<p>The OpenAPI document itself: <a href='{html.escape(json_url)}'>{html.escape(json_url)}</a></p>"]
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            out.append(f"<h2 id='{html.escape(op.get('operationId', method + path))}'><code>{method.upper()} "
                       f"{html.escape(path)}</code></h2><p>{html.escape(op.get('summary', ''))}</p>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                out.append(f"<h3>Request body (application/json)</h3>{pre(body)}")
            rows = "".join(f"<tr><td>{html.escape(str(code))}</td><td>{html.escape(r.get('description', ''))}</td></tr>"
                           for code, r in op.get("responses", {}).items())
            out.append(f"<h3>Responses</h3><table><tr><th>status</th><th>meaning</th></tr>{rows}</table>")
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out.append(f"<details><summary>schema <code>{html.escape(name)}</code></summary>{pre(schema)}</details>")
    return "\n".join([*out, "</body></html>"])
