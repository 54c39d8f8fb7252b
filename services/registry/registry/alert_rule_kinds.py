"""The kinds of alert rule and what each needs: one table, checked on every rule stored (`check_rule`) and
shown in the OpenAPI documents as a `oneOf` discriminated by `kind` (`document_kinds`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from visiontrack.errors import ApiError


@dataclass(frozen=True)
class RuleKind:
    """Fields a kind of rule must give (not null), and fields it must leave at their only value."""

    required: tuple[str, ...]
    required_message: str
    fixed: dict[str, tuple[Any, str]] = field(default_factory=dict)  # field -> (its only value, message otherwise)


DEFAULT_KIND = "threshold"
RULE_KINDS: dict[str, RuleKind] = {
    "threshold": RuleKind(
        required=("metric", "op", "threshold"), required_message="is required for a threshold rule",
        fixed={"after_seconds": (None, "applies only to inactivity rules")}),
    "inactivity": RuleKind(
        required=("after_seconds",), required_message="is required for an inactivity rule",
        fixed={"op": (None, "applies only to threshold rules"),
               "threshold": (None, "applies only to threshold rules"),
               "for_seconds": (0, "applies only to threshold rules (inactivity uses after_seconds)")}),
}
KINDS = list(RULE_KINDS)
_ONE_SCOPE = "give device_id or device_type, not both (neither: every device)"


def kind_problems(rule: dict) -> list[dict]:
    """What the rule's kind finds wrong with it: a detail per field."""
    kind = RULE_KINDS[rule["kind"]]
    details = [{"field": name, "message": kind.required_message} for name in kind.required if rule.get(name) is None]
    return details + [{"field": name, "message": message} for name, (only, message) in kind.fixed.items()
                      if rule.get(name) not in (None, only)]


def check_rule(rule: dict) -> None:
    """The checks that span fields, on the rule as it would be stored; a 400 naming each field."""
    details = kind_problems(rule)
    if rule.get("device_id") is not None and rule.get("device_type") is not None:
        details.append({"field": "device_type", "message": _ONE_SCOPE})
    if details:
        raise ApiError("validation_error", "invalid alert rule; see details", details)


# --- the same rules in the OpenAPI documents -------------------------------------------------------------------

# Both device_id and device_type given (neither null): what a rule's `not` refuses.
NOT_BOTH_SCOPES = {"required": ["device_id", "device_type"],
                   "properties": {"device_id": {"type": "integer"}, "device_type": {"type": "string"}}}


def _not_null(prop: dict) -> dict:
    out = dict(prop)
    if isinstance(out.get("type"), list):
        types = [t for t in out["type"] if t != "null"]
        out["type"] = types[0] if len(types) == 1 else types
    if "enum" in out:
        out["enum"] = [v for v in out["enum"] if v is not None]
    return out


def _only(value: Any, prop: dict) -> dict:
    """The property narrowed to its one value (null: absent or null)."""
    out = {"type": "null"} if value is None else {"type": prop["type"], "const": value}
    return {**out, **({"default": value} if "default" in prop else {})}


def _narrowed(props: dict, kind: RuleKind) -> dict:
    """The properties a kind constrains: its required ones not null, its fixed ones at their value."""
    return {**{name: _not_null(props[name]) for name in kind.required},
            **{name: _only(only, props[name]) for name, (only, _message) in kind.fixed.items()}}


def kind_variant(rule: dict, name: str, *, default_kind: str | None) -> dict:
    """`rule` (an alert rule's JSON schema, every kind at once) narrowed to kind `name`: its own `kind`, its
    required fields given and not null, its fixed ones at their value; `kind` may be left out of a rule of
    `default_kind`."""
    kind = RULE_KINDS[name]
    variant = copy.deepcopy(rule)
    props = variant["properties"]
    props.update(_narrowed(props, kind))
    props["kind"] = {"type": "string", "enum": [name], **({"default": name} if name == default_kind else {})}
    required = set(variant.get("required", ())) | set(kind.required) | ({"kind"} if name != default_kind else set())
    variant["required"] = sorted(required)
    variant["not"] = NOT_BOTH_SCOPES
    return variant


def change_rules(change: dict) -> dict:
    """`change` (the JSON schema of a rule's changes) with what a change alone can break: both scopes given, or
    a `kind` given with fields of that kind set otherwise than the kind allows. The rest depends on the stored
    rule."""
    props = change["properties"]
    return {**change, "not": NOT_BOTH_SCOPES, "allOf": [
        {"if": {"required": ["kind"], "properties": {"kind": {"const": name}}},
         "then": {"properties": _narrowed(props, kind)}} for name, kind in RULE_KINDS.items()]}


def document_kinds(rule: dict, components, suffix: str, *, default_kind: str | None = None) -> dict:
    """`rule` as a oneOf of one schema per kind (registered in `components` as ThresholdRule<suffix>, ...),
    discriminated by `kind`."""
    mapping = {}
    for name in RULE_KINDS:
        component = f"{name.capitalize()}Rule{suffix}"
        components.schema(component, kind_variant(rule, name, default_kind=default_kind))
        mapping[name] = f"#/components/schemas/{component}"
    return {"oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "kind", "mapping": mapping},
            "description": "One schema per kind of rule, discriminated by `kind`" +
                           (f" (absent: {default_kind})." if default_kind else ".") + f" {_ONE_SCOPE}."}
