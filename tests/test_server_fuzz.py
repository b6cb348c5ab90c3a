"""Fuzz the explorer's API from its own OpenAPI schema (schemathesis + hypothesis).

Every operation gets generated requests, valid and invalid; none may answer 5xx, and
every JSON error must be ``{"detail": "<one line>"}``. Bounded: a few examples per
operation, no deadline per example (the model is real and the machine may be busy).
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

from cnnscope.models import load_model  # noqa: E402
from cnnscope.server import create_app  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    gallery = tmp_path_factory.mktemp("fuzz-gallery")
    (gallery / "broken.png").write_bytes(b"not a png")
    app = create_app(
        load_model(),
        data_dir=tmp_path_factory.mktemp("fuzz-data"),
        gallery_dir=gallery,
        max_upload_mb=0.5,
        synthesis_steps=2,  # a fuzzed POST may start a rendering: keep it short
        synthesis_size=32,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_never_answers_5xx(case):
    response = case.call(timeout=300)
    assert response.status_code < 500, (case.as_curl_command(), response.text[:300])
    ctype = response.headers.get("content-type", "")
    ctype = ctype[0] if isinstance(ctype, list) and ctype else str(ctype)
    if response.status_code >= 400 and ctype.startswith("application/json"):
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail and "\n" not in detail, response.text[:300]
