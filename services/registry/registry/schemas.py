"""The registry's request and response shapes: the contract of API.md, checked by marshmallow."""
from __future__ import annotations

import functools

from flask import request
from marshmallow import Schema, fields, validate

from visiontrack.errors import ApiError
from visiontrack.web.errors import ErrorSchema
from visiontrack.web.fields import QueryInteger, Timestamp
from visiontrack.web.text_guard import check_json_body


def json_body(blp, schema: type[Schema]):
    """`blp.arguments(schema)` for a JSON body, which must be labelled `application/json` (415 otherwise) and
    not be empty (400 `malformed_json`). webargs reads an unlabelled or empty body as `{}`: a PATCH would
    answer 200 having changed nothing, a POST 400 for missing fields. Nor may it hold text Postgres cannot
    store (a NUL or a lone surrogate: 400 naming the field). Endpoints that take no body (token rotation,
    DELETE) don't use this and need no Content-Type.

    All of it runs in the view, so after the blueprint's authentication: an unknown caller is told 401 without
    the body being read."""
    parse = blp.arguments(schema)

    def decorator(view):
        parsed = parse(view)

        @functools.wraps(parsed)
        def wrapper(*args, **kwargs):
            if request.mimetype != "application/json":
                raise ApiError("unsupported_media_type",
                               "the body must be JSON, sent with Content-Type: application/json")
            if not request.get_data(cache=True).strip():
                raise ApiError("malformed_json", "body is not valid JSON (it is empty)")
            check_json_body()
            return parsed(*args, **kwargs)

        return blp.alt_response(415, schema=ErrorSchema,
                                description="The body is not labelled application/json.")(wrapper)

    return decorator


_NAME = validate.Length(min=1, max=128)
_LABEL = validate.Length(max=128)


class DeviceCreateSchema(Schema):
    name = fields.String(required=True, validate=_NAME)
    type = fields.String(allow_none=True, validate=_LABEL, load_default=None)
    location = fields.String(allow_none=True, validate=validate.Length(max=256), load_default=None)
    metadata = fields.Dict(keys=fields.String(), load_default=dict)


class DeviceUpdateSchema(Schema):
    name = fields.String(validate=_NAME)
    type = fields.String(allow_none=True, validate=_LABEL)
    location = fields.String(allow_none=True, validate=validate.Length(max=256))
    metadata = fields.Dict(keys=fields.String())
    status = fields.String(validate=validate.OneOf(["active", "disabled"]))


class DeviceSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    type = fields.String(allow_none=True)
    location = fields.String(allow_none=True)
    metadata = fields.Dict()
    status = fields.String()
    created_at = Timestamp()
    updated_at = Timestamp()
    last_seen_at = Timestamp(allow_none=True)


class DeviceWithTokenSchema(DeviceSchema):
    token = fields.String(metadata={"description": "The device's token; shown only in this answer."})


class DeviceListArgsSchema(Schema):
    limit = QueryInteger(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(load_default=None)
    type = fields.String(load_default=None)
    status = fields.String(load_default=None, validate=validate.OneOf(["active", "disabled"]))
    q = fields.String(load_default=None, validate=validate.Length(min=1, max=128),
                      metadata={"description": "Name prefix."})


class DevicePageSchema(Schema):
    items = fields.List(fields.Nested(DeviceSchema))
    next_cursor = fields.String(allow_none=True)


class TokenSchema(Schema):
    token = fields.String()
