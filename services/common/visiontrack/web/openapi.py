"""What the OpenAPI documents say beyond flask-smorest's defaults, so that they state what the server checks:
the text rule of every string, free JSON objects, and schemas that finish their own document (a `oneOf`)."""
from __future__ import annotations

from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from marshmallow import fields

OPENAPI_VERSION = "3.1.0"  # JSON Schema 2020-12: propertyNames, const, type lists
# text_guard refuses U+0000 in any query argument and in any text of a JSON body (keys included).
NO_NUL = r"^[^\u0000]*$"
JSON_VALUE = "JsonValue"
_JSON_VALUE_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
_JSON_VALUE_SCHEMA = {
    "type": ["object", "array", "string", "number", "boolean", "null"],
    "description": "Any JSON value whose text, object keys included, holds no U+0000.",
    "pattern": NO_NUL,
    "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": _JSON_VALUE_REF,
    "items": _JSON_VALUE_REF,
}


def _types(prop: dict) -> set:
    kind = prop.get("type")
    return set(kind) if isinstance(kind, list) else {kind}


def text_rule(self, field, ret: dict, **_) -> dict:
    """A string without a pattern or a list of values of its own takes no U+0000."""
    if "string" in _types(ret) and "pattern" not in ret and "enum" not in ret:
        return {"pattern": NO_NUL}
    return {}


def json_object(self, field, ret: dict, **_) -> dict:
    """A Dict's keys follow its key field's pattern; a Dict of anything holds JSON values (JsonValue)."""
    if not isinstance(field, fields.Dict):
        return {}
    out = {}
    if field.key_field is not None:
        out["propertyNames"] = {"pattern": self.field2property(field.key_field).get("pattern", NO_NUL)}
    if field.value_field is None:
        if JSON_VALUE not in self.spec.components.schemas:
            self.spec.components.schema(JSON_VALUE, _JSON_VALUE_SCHEMA)
        out["additionalProperties"] = _JSON_VALUE_REF
    return out


class DocumentingPlugin(MarshmallowPlugin):
    """apispec's marshmallow plugin, where a schema class may finish its own document: its
    `finish_document(json_schema, components)` returns what the documents show for it (and may register
    further components), for what one marshmallow schema cannot say, such as a `oneOf` of kinds."""

    def init_spec(self, spec):
        super().init_spec(spec)
        self.converter.add_attribute_function(text_rule)
        self.converter.add_attribute_function(json_object)

    def schema_helper(self, name, _, schema=None, **kwargs):
        json_schema = super().schema_helper(name, _, schema=schema, **kwargs)
        finish = getattr(resolve_schema_cls(schema), "finish_document", None) if schema is not None else None
        return finish(json_schema, self.spec.components) if finish else json_schema
