"""Both telemetry writers answer the one 503 after which readings may be stored with the same message
(docs/api.md): clients and the load verifier (tests/load.py) tell it from the other 503s by its text."""
from __future__ import annotations

import re

from stack.services import ROOT
from visiontrack.stream_writer import MAY_BE_STORED


def test_the_ingestor_and_post_telemetry_say_may_be_stored_alike():
    source = (ROOT / "rust-ingestor" / "src" / "routes" / "ingest.rs").read_text()
    literal = re.search(r'pub const MAY_BE_STORED: &str = "((?:[^"\\]|\\.)*)";', source, re.S).group(1)
    rust = re.sub(r"\\\n\s*", "", literal)  # a Rust string's line continuation drops the newline and indent
    assert rust == MAY_BE_STORED
    assert "may be stored" in rust
