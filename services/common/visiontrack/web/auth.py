"""Operator API tokens (admin: everything; reader: GET only), compared in constant time."""
from __future__ import annotations

import hmac
from typing import Iterable

from flask import request

from ..errors import ApiError

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches(token: str, candidates: Iterable[str]) -> bool:
    found = False
    for candidate in candidates:  # no early exit: timing says nothing about which token matched
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


class OperatorAuth:
    def __init__(self, admin_tokens: Iterable[str], reader_tokens: Iterable[str]):
        self.admin = tuple(admin_tokens)
        self.reader = tuple(reader_tokens)

    def role(self, token: str | None) -> str | None:
        if not token:
            return None
        if _matches(token, self.admin):
            return "admin"
        if _matches(token, self.reader):
            return "reader"
        return None

    def require(self) -> str:
        """Check the request's operator token against its method; return the role."""
        role = self.role(bearer_token())
        if role is None:
            raise ApiError("unauthorized", "a valid operator token is required (Authorization: Bearer <token>)")
        if role == "reader" and request.method not in READ_METHODS:
            raise ApiError("forbidden", "reader tokens may only read")
        return role
