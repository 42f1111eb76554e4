"""docs/protocol.md names every message type, field, error code and close code the code uses."""

import re
from pathlib import Path

from server.protocol import MESSAGE_TYPES, CloseCode, ErrorCode, SessionInfo, StartMessage
from server.settings import Settings
from sm1.sampling import Constraints, SamplingParams

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def codes(cls) -> set:
    return {v for k, v in vars(cls).items() if not k.startswith("_")}


def test_every_error_code_is_in_the_table():
    documented = set(re.findall(r"^\| `(\w+)` \|", DOC, re.M))
    assert codes(ErrorCode) <= documented


def test_every_close_code_is_explained():
    assert all(f"**{code}**" in DOC for code in codes(CloseCode))


def test_every_message_type_and_field_is_named():
    assert all(f"`{t}`" in DOC for t in (*MESSAGE_TYPES, "ready", "events", "error", "end", "seq", "token_index"))
    for model in (StartMessage, SessionInfo, SamplingParams, Constraints):
        missing = [f for f in model.model_fields if f"`{f}`" not in DOC and f"\"{f}\"" not in DOC]
        assert not missing, f"{model.__name__}: {missing}"


def test_every_setting_is_listed():
    missing = [f for f in Settings.model_fields if f"`{f}`" not in DOC]
    assert not missing
