"""What an alert rule's `webhook_url` may be: an http or https URL whose port can exist.

One pattern, the server's check and the documents' `pattern` alike: the URLs marshmallow's URL check
(require_tld=False, IGNORECASE) and `urlsplit` took, spelt so that it reads the same in Python and ECMA-262
regular expressions (no flags; beyond ASCII, the Basic Multilingual Plane only). One difference: an IPv4 host
is in ASCII digits (marshmallow took other scripts' digits there, "١.٢.٣.٤", which no client can reach).
"""
from __future__ import annotations

import re
import unicodedata

from marshmallow import ValidationError, validate

from visiontrack.web.fields import WholeMatch


def _ranges(code_points) -> str:
    """A character class's body: the code points as \\uXXXX ranges."""
    out, points = [], sorted(code_points)
    start = prev = points[0]
    for c in points[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(f"\\u{start:04x}" + (f"-\\u{prev:04x}" if prev > start else ""))
        if c is not None:
            start = prev = c
    return "".join(out)


def _splits_netloc(c: int) -> bool:
    """urlsplit refuses a host with a character whose NFKC form holds a delimiter (U+2100 is "a/c")."""
    return any(d in unicodedata.normalize("NFKC", chr(c)) for d in "/?#@:")


_BEYOND_ASCII = range(0xA1, 0x10000)
_HOST_CHARS = _ranges(c for c in _BEYOND_ASCII if not 0xD800 <= c <= 0xDFFF and not _splits_netloc(c))
_LETTER = rf"A-Za-z0-9{_HOST_CHARS}"
_LABEL = rf"[{_LETTER}](?:[{_LETTER}-]{{0,61}}[{_LETTER}])?"
_HEX4 = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join((  # what ipaddress takes, without zone nor embedded IPv4 (marshmallow takes neither)
    rf"(?:{_HEX4}:){{7}}{_HEX4}", rf"(?:{_HEX4}:){{1,7}}:", rf"(?:{_HEX4}:){{1,6}}:{_HEX4}",
    *(rf"(?:{_HEX4}:){{1,{7 - n}}}(?::{_HEX4}){{1,{n}}}" for n in range(2, 7)), rf":(?:(?::{_HEX4}){{1,7}}|:)"))
_HOST = "|".join((
    rf"(?:{_LABEL}\.)+(?:[A-Za-z{_HOST_CHARS}]{{2,6}}\.?|[{_LETTER}-]{{2,}}\.?)",  # a domain name
    r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}",  # IPv4, in ASCII digits (marshmallow took any script's)
    rf"\[(?:{_IPV6})\]",
    rf"{_LABEL}\.?",  # a name without dots (localhost)
))
# IGNORECASE also matches these to ASCII letters: U+0130, U+0131 (i), U+017F (s), U+212A (k).
_USERINFO = r"(?:(?:[A-Za-z0-9._~!$&'()*+,;=:\u0130\u0131\u017f\u212a-]|%[0-9A-Fa-f]{2})*@)?"
_PORT = r"0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# Python's and ECMA-262's \s differ by these: neither engine's whitespace may follow.
_NOT_SPACE = r"[^\s\x1c-\x1f\x85\ufeff]"
_REST = rf"(?:/?|[/?#]{_NOT_SPACE}+)"


def _url(port: str) -> str:
    return rf"^[Hh][Tt][Tt][Pp][Ss]?://{_USERINFO}(?:{_HOST})(?::{port})?{_REST}$"


WEBHOOK_URL_PATTERN = _url(_PORT)
_ANY_PORT = re.compile(_url("[0-9]+"))


class _WebhookUrl(WholeMatch):
    """WEBHOOK_URL_PATTERN, with a message of its own for a port that cannot exist."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError("must be an http or https URL with a port from 1 to 65535"
                                  if _ANY_PORT.fullmatch(value) else "must be an http or https URL")
        return value


WEBHOOK_URL = [validate.Length(max=2048), _WebhookUrl(WEBHOOK_URL_PATTERN)]
