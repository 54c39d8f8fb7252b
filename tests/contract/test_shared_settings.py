"""The settings the Python parts and the Rust ingestor both read: the same default and the same accepted values,
compared setting by setting (Python: visiontrack.config.SETTINGS; Rust: the built ingestor's
`--print-settings`), and the Python side names the ingestor among their users exactly for those."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from stack.services import INGESTOR_BINARY, ROOT
from visiontrack import config

INGESTOR_SOURCES = [ROOT / "rust-ingestor" / name for name in ("src", "Cargo.toml", "Cargo.lock")]


def _newest_source() -> float:
    files = [p for src in INGESTOR_SOURCES for p in ([src] if src.is_file() else src.rglob("*.rs"))]
    return max(p.stat().st_mtime for p in files)


@pytest.fixture(scope="module")
def rust() -> dict[str, dict]:
    """The ingestor's settings by name, from the release binary (`make ingestor-build`)."""
    if not INGESTOR_BINARY.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
        pytest.skip(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
    if INGESTOR_BINARY.stat().st_mtime < _newest_source():
        pytest.fail(f"{INGESTOR_BINARY} is older than rust-ingestor/src: run `make ingestor-build`")
    out = subprocess.run([str(INGESTOR_BINARY), "--print-settings"], capture_output=True, text=True, timeout=30,
                         check=True, env={"PATH": os.environ.get("PATH", "")}).stdout
    return {spec["name"]: spec for spec in json.loads(out)}


def _shared(rust: dict) -> list[config.Setting]:
    return [s for s in config.SETTINGS if s.name in rust]


def test_the_python_parts_name_the_ingestor_for_exactly_the_settings_it_reads(rust):
    assert {s.name for s in config.SETTINGS if "ingestor" in s.parts} == {s.name for s in _shared(rust)}
    assert len(_shared(rust)) >= 14


def test_every_shared_setting_has_one_default(rust):
    differ = [f"{s.name}: Python {s.default!r}, Rust {rust[s.name]['default']!r}" for s in _shared(rust)
              if s.default != str(rust[s.name]["default"])]
    assert not differ, "\n".join(differ)


def _range_problem(setting: config.Setting, spec: dict) -> str | None:
    parse = setting.parse
    if isinstance(parse, config.IntRange):
        python, ingestor = (parse.lo, parse.hi), (spec.get("min"), spec.get("max"))
        return None if spec["kind"] == "integer" and python == ingestor else f"Python {python}, Rust {ingestor}"
    if isinstance(parse, config.Choice):
        extra = set(parse.options) - set(spec.get("choices", ()))
        return f"the ingestor refuses {sorted(extra)}" if spec["kind"] != "choice" or extra else None
    if spec["kind"] != "text":
        return f"Python takes text, Rust a {spec['kind']}"
    return None


def test_every_shared_setting_accepts_the_same_values(rust):
    """Integers the same range, text both, choices the Python parts take all taken by the ingestor (it also
    takes its own names, trace and warn)."""
    differ = [f"{s.name}: {problem}" for s in _shared(rust) if (problem := _range_problem(s, rust[s.name]))]
    assert not differ, "\n".join(differ)


def test_text_settings_are_trimmed_and_never_blank_on_both_sides(rust):
    for s in _shared(rust):
        if rust[s.name]["kind"] == "text" and "format" not in rust[s.name]:
            assert s.parse("  x  ") == "x", s.name
            with pytest.raises(ValueError):
                s.parse("   ")


def test_the_comparison_fails_on_a_drift(rust):
    """The check itself: another default or another bound on either side is a difference."""
    shards = config.setting("VT_STREAM_SHARDS")
    assert _range_problem(shards, rust["VT_STREAM_SHARDS"]) is None
    assert _range_problem(shards, {**rust["VT_STREAM_SHARDS"], "max": 1025}) is not None
    assert _range_problem(shards, {**rust["VT_STREAM_SHARDS"], "kind": "text"}) is not None
