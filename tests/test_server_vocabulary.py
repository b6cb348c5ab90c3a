"""``/api/vocabulary`` serves the library's own lists, and the routes accept just those.

The expected values are read from the library modules that obey each list (the engine's
rules, the tree's options, the attribution registry, the page routes), never restated.
"""

from __future__ import annotations

import inspect

import pytest
from fastapi.testclient import TestClient

from cnnscope.attribution import METHODS
from cnnscope.attribution.registry import DEFAULT_METHOD, PICKER_ORDER
from cnnscope.cli import build_parser
from cnnscope.engine.rules import DEFAULT_RULE, RULE_TERMS, RULES
from cnnscope.server import create_app
from cnnscope.server.routers.pages import PAGES
from cnnscope.server.store import SOURCE_TERMS, SOURCES
from cnnscope.tree import Explorer
from cnnscope.tree.options import (
    DEFAULT_GAIN,
    DEFAULT_K,
    DEFAULT_SCORING,
    DEFAULT_SIGN,
    EXPLORER_SIGNS,
    GAIN_TERMS,
    GAINS,
    SCORING_TERMS,
    SCORINGS,
    SIGN_TERMS,
    SIGNS,
)
from cnnscope.views import NORMALIZE_MODES, ORDER_METHODS, kmeans_slice
from cnnscope.views.mosaic import DEFAULT_NORMALIZE, NORMALIZE_TERMS
from cnnscope.views.ordering import DEFAULT_CLUSTERS, NO_ORDER, ORDER_TERMS
from cnnscope.vocabulary import CALL_SUFFIX, URL_CALL_SUFFIX


@pytest.fixture(scope="module")
def client(model, tmp_path_factory):
    app = create_app(model, data_dir=tmp_path_factory.mktemp("vocabulary"))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def words(client) -> dict:
    r = client.get("/api/vocabulary")
    assert r.status_code == 200, r.text
    return r.json()


def as_json(terms) -> list[dict]:
    return [{"name": t.name, "title": t.title, "help": t.help} for t in terms]


def test_the_lists_are_the_librarys(words):
    assert words["rules"] == as_json(RULE_TERMS)
    assert [t["name"] for t in words["rules"]] == list(RULES)
    assert words["gains"] == as_json(GAIN_TERMS) and [t["name"] for t in words["gains"]] == list(
        GAINS
    )
    assert words["scorings"] == as_json(SCORING_TERMS)
    assert [t["name"] for t in words["scorings"]] == list(SCORINGS) and "seed" in SCORINGS
    # the explorer asks for a subset of the signs, and the library says which
    assert set(EXPLORER_SIGNS) < set(SIGNS)
    assert words["signs"] == as_json(t for t in SIGN_TERMS if t.name in EXPLORER_SIGNS)
    assert (
        words["call_suffix"]
        == {"name": CALL_SUFFIX, "url": URL_CALL_SUFFIX}
        == {
            "name": "#",
            "url": "~",
        }
    )
    assert words["orders"] == as_json((NO_ORDER, *ORDER_TERMS))
    assert [t["name"] for t in words["orders"]][1:] == list(ORDER_METHODS)
    assert words["normalizations"] == as_json(NORMALIZE_TERMS)
    assert [t["name"] for t in words["normalizations"]] == list(NORMALIZE_MODES)
    assert words["sources"] == as_json(SOURCE_TERMS)
    assert [t["name"] for t in words["sources"]] == list(SOURCES)
    assert all(
        t["title"] and t["help"]
        for key in ("rules", "gains", "scorings", "signs", "orders", "normalizations", "sources")
        for t in words[key]
    )


def test_defaults_are_the_librarys_and_the_routes(client, words):
    defaults = words["defaults"]
    assert defaults == {
        "rule": DEFAULT_RULE,
        "gain": DEFAULT_GAIN,
        "scoring": DEFAULT_SCORING,
        "sign": DEFAULT_SIGN,
        "k": DEFAULT_K,
        "method": DEFAULT_METHOD,
        "order": NO_ORDER.name,
        "normalize": DEFAULT_NORMALIZE,
        "clusters": DEFAULT_CLUSTERS,
    }
    assert (defaults["rule"], defaults["gain"], defaults["scoring"], defaults["sign"]) == (
        "guided",
        "auto",
        "path",
        "pos",
    )
    # each default is a name of its served list
    for key, listed in (
        ("rule", "rules"),
        ("gain", "gains"),
        ("scoring", "scorings"),
        ("sign", "signs"),
        ("method", "methods"),
        ("order", "orders"),
        ("normalize", "normalizations"),
    ):
        assert defaults[key] in [t["name"] for t in words[listed]], key
    # the library's functions start from them
    signature = inspect.signature(Explorer.children).parameters
    for key in ("k", "rule", "scoring", "gain", "sign"):
        assert signature[key].default == defaults[key], key
    assert inspect.signature(kmeans_slice).parameters["k"].default == defaults["clusters"]
    # the routes' query defaults are the served ones
    paths = client.get("/openapi.json").json()["paths"]

    def query_defaults(route: str) -> dict:
        return {
            p["name"]: p["schema"].get("default")
            for p in paths[route]["get"]["parameters"]
            if p["in"] == "query"
        }

    children = query_defaults("/api/images/{image_id}/children")
    for key in ("k", "rule", "scoring", "gain", "sign"):
        assert children[key] == defaults[key], key
    faithfulness = query_defaults("/api/images/{image_id}/faithfulness")
    assert {key: faithfulness[key] for key in ("k", "rule", "scoring", "gain", "sign")} == {
        key: children[key] for key in ("k", "rule", "scoring", "gain", "sign")
    }
    recon = query_defaults("/api/images/{image_id}/reconstruction.png")
    assert (recon["rule"], recon["gain"], recon["scoring"]) == (
        defaults["rule"],
        defaults["gain"],
        defaults["scoring"],
    )
    assert query_defaults("/api/images/{image_id}/overview")["rule"] == defaults["rule"]
    assert query_defaults("/api/images/{image_id}/parents")["rule"] == defaults["rule"]
    assert query_defaults("/api/images/{image_id}/attribution.png")["method"] == defaults["method"]
    mosaic = query_defaults("/api/images/{image_id}/layers/{layer}/mosaic")
    assert (mosaic["order"], mosaic["normalize"]) == (defaults["order"], defaults["normalize"])
    # an image's source is a name of the served sources
    image = client.get("/openapi.json").json()["components"]["schemas"]["ImageOut"]
    assert image["properties"]["source"]["enum"] == [t["name"] for t in words["sources"]]


def test_the_cli_offers_the_librarys_terms_and_defaults():
    parser = build_parser()
    tree = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "tree")[
        1
    ]
    actions = {a.dest: a for a in tree._actions}
    for dest, terms, default in (
        ("rule", RULE_TERMS, DEFAULT_RULE),
        ("gain", GAIN_TERMS, DEFAULT_GAIN),
        ("scoring", SCORING_TERMS, DEFAULT_SCORING),
        ("sign", SIGN_TERMS, DEFAULT_SIGN),
    ):
        action = actions[dest]
        assert list(action.choices) == [t.name for t in terms] and action.default == default
        for term in terms:  # each choice is explained by the library's help line
            assert f"{term.name}: {term.help}" in action.help, (dest, term.name)
        assert f"(default: {default})" in action.help
    assert actions["k"].default == DEFAULT_K


def test_methods_carry_the_registrys_titles_and_cost(words):
    got = {m["name"]: m for m in words["methods"]}
    assert len(got) == len(words["methods"]) and set(got) == set(METHODS)
    for name, method in METHODS.items():
        assert got[name]["title"] == method.title and got[name]["slow"] is method.slow
    # the picker's order is the registry's, its first the default
    listed = [m["name"] for m in words["methods"]]
    assert listed[: len(PICKER_ORDER)] == [n for n in PICKER_ORDER if n in METHODS]
    assert listed[len(PICKER_ORDER) :] == sorted(set(METHODS) - set(PICKER_ORDER))
    assert listed[0] == DEFAULT_METHOD == words["defaults"]["method"] == "grad_cam"
    assert {m["name"] for m in words["methods"] if m["slow"]} >= {"score_cam", "guided_ig"}


def test_pages_are_the_page_routes_and_each_answers_the_shell(client, words):
    assert words["pages"] == PAGES
    fill = {"image": "chelsea", "unit": "blocks.15:120", "class": "tabby"}
    for name, template in words["pages"].items():
        r = client.get(template.format(**fill), headers={"Accept": "text/html"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), name
    # the /api/models lists agree with the vocabulary
    model = client.get("/api/models").json()["models"][0]
    assert model["rules"] == list(RULES) and model["gains"] == list(GAINS)
    assert list(model["attribution_methods"]) == [m["name"] for m in words["methods"]]


def test_the_routes_accept_the_served_choices_only(client, words):
    schema = client.get("/openapi.json").json()
    vocabulary = schema["paths"]["/api/vocabulary"]["get"]["responses"]["200"]
    assert vocabulary["content"]["application/json"]["schema"]["$ref"].endswith("VocabularyOut")
    params = {
        p["name"]: p["schema"]
        for p in schema["paths"]["/api/images/{image_id}/children"]["get"]["parameters"]
    }
    for param, key in (
        ("rule", "rules"),
        ("gain", "gains"),
        ("scoring", "scorings"),
        ("sign", "signs"),
    ):
        assert params[param]["enum"] == [t["name"] for t in words[key]], param
    r = client.get("/api/images/chelsea/children?path=logits:285&sign=abs")
    assert r.status_code == 422 and "sign" in r.json()["detail"]
