"""Tree paths: text form, round trip and errors."""

from __future__ import annotations

import pytest

from cnnscope.engine import Unit
from cnnscope.errors import CnnscopeError, UnitSpecError
from cnnscope.tree import format_path, parse_path


@pytest.mark.parametrize(
    "text",
    [
        "logits:285",
        "logits:285/blocks.15:120/blocks.11:33",
        "blocks.3.expand_act:12@4,5/blocks.1.expand_act:0",
        "shared~2:3/conv1:0",
        "layer4.1.relu~3:7@0,13",
    ],
)
def test_round_trip(text):
    path = parse_path(text)
    assert format_path(path) == text
    assert parse_path(format_path(path)) == path


def test_parsed_units():
    assert parse_path("logits:285/blocks.15:120") == (
        Unit("logits", 285),
        Unit("blocks.15", 120),
    )
    assert parse_path("a.b:1@2,3")[0].pos == (2, 3)
    # the call suffix may be written with # too, and comes back as ~ (URL-safe)
    assert parse_path("shared#2:3")[0].layer == "shared#2"
    assert format_path(parse_path("shared#2:3")) == "shared~2:3"
    # surrounding slashes and blanks are tolerated
    assert parse_path(" /logits:1/ ") == (Unit("logits", 1),)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "logits",
        "logits:",
        "logits:-1",
        "logits:x",
        "logits:1//head:2",
        "logits:1/head:2@1,2",  # only the root may carry a position
        "logits:1?x=1",
        "../../etc/passwd",
        "logits:1 /head:2",
        "<script>:1",
        "/".join(["a:1"] * 65),
    ],
)
def test_bad_paths_raise_one_line(bad):
    with pytest.raises(UnitSpecError) as info:
        parse_path(bad)
    assert "\n" not in str(info.value) and str(info.value)
    assert isinstance(info.value, CnnscopeError)


def test_format_rejects_empty():
    with pytest.raises(UnitSpecError):
        format_path(())
