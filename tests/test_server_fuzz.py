"""Fuzz the explorer's API from its own OpenAPI schema (schemathesis + hypothesis).

Every operation gets generated requests, valid and invalid (over 1,000 in all, a few
minutes on two cores): none may answer 5xx, every answer must be one the schema
documents (status, content type, JSON body), every JSON error ``{"detail": "<one line>"}``,
and a request the schema calls valid is answered, or a 404 for what does not exist. The
server has a small dataset index, so that the example routes run too. No deadline per
example: the model is real and the machine may be busy.

The patterns the schema gives (image ids, units, tree paths, layers) are checked against
the parsers that the server applies: whatever the schema allows, they accept.
"""

from __future__ import annotations

import collections

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import checks  # noqa: E402

from cnnscope.engine import Unit  # noqa: E402
from cnnscope.images import load_gallery_image  # noqa: E402
from cnnscope.index import build_index  # noqa: E402
from cnnscope.server import create_app  # noqa: E402
from cnnscope.server.routers.deps import LAYER_PATTERN, PATH_PATTERN, UNIT_PATTERN  # noqa: E402
from cnnscope.server.store import ID_PATTERN, check_id  # noqa: E402
from cnnscope.tree import parse_path  # noqa: E402

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 20
#: What every answer must agree with (schemathesis' checks of responses against the schema).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
CASES: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, model):
    photos = tmp_path_factory.mktemp("fuzz-photos")
    for name in ("chelsea", "coffee"):
        load_gallery_image(name).resize((160, 120)).save(photos / f"{name}.png")
    index = build_index(
        model, photos, ["blocks.15"], top_k=2, out=photos.parent / "fuzz-index", workers=0
    )
    gallery = tmp_path_factory.mktemp("fuzz-gallery")
    (gallery / "broken.png").write_bytes(b"not a png")
    app = create_app(
        model,
        data_dir=tmp_path_factory.mktemp("fuzz-data"),
        gallery_dir=gallery,
        index=str(index),
        max_upload_mb=0.5,
        synthesis_steps=2,  # a fuzzed POST may start a rendering: keep it short
        synthesis_size=32,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_answers_what_its_schema_says(case):
    response = case.call_and_validate(checks=CHECKS, timeout=300)
    CASES[case.operation.label] += 1
    ctype = str(response.headers.get("content-type", ""))
    if response.status_code >= 400 and ctype.startswith("application/json"):
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail and "\n" not in detail, response.text[:300]
    if case.meta is not None and case.meta.generation.mode.is_positive:
        # a request the schema calls valid is accepted, or names something that does not
        # exist (404); only an upload's bytes can still be refused (not an image)
        allowed = {413, 415} if case.operation.label == "POST /api/images" else set()
        assert response.status_code < 400 or response.status_code in {404, *allowed}, (
            case.as_curl_command(),
            response.text[:300],
        )


def test_the_fuzz_run_had_at_least_1000_cases(api_schema):
    operations = sum(1 for _ in api_schema.get_all_operations())
    if len(CASES) < operations:
        pytest.skip("the fuzz run above did not run (or not for every operation)")
    assert sum(CASES.values()) >= 1000, CASES


def _fullmatch(pattern: str):
    """The strings that the schema's pattern allows."""
    return st.from_regex(pattern, fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(image_id=_fullmatch(ID_PATTERN))
def test_every_image_id_the_schema_allows_is_a_well_formed_id(image_id):
    assert check_id(image_id) == image_id


@settings(max_examples=300, deadline=None)
@given(unit=_fullmatch(UNIT_PATTERN), layer=_fullmatch(LAYER_PATTERN))
def test_every_unit_and_layer_the_schema_allows_parses(unit, layer):
    assert Unit.parse(unit.replace("~", "#")).layer == unit.split(":")[0].replace("~", "#")
    assert Unit.parse(f"{layer}:0").layer == layer


@settings(max_examples=300, deadline=None)
@given(path=_fullmatch(PATH_PATTERN))
def test_every_tree_path_the_schema_allows_parses(path):
    assert len(parse_path(path)) == path.count("/") + 1
