"""A backward rule is one entry of ``engine.rules.BACKWARD_RULES``; every list follows it.

Two checks. In this process, every place that offers the rules (the schemas' enum, the
tree route's OpenAPI parameter, ``/api/vocabulary``, the CLI's choices, the tree's
polarity, the docs' table) lists exactly the engine's rules, in its order. Then, in a
copy of the package whose only change is one more entry of ``BACKWARD_RULES`` (a
throwaway ``zero`` rule that blocks every gradient at each rectifier), a fresh
interpreter finds that rule everywhere: the engine applies it, ``/api/vocabulary``
serves it, the tree route expands a node under it (and still refuses a name that is no
rule, listing the new one), the CLI offers it and the tree has its polarity.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import cnnscope
from cnnscope.cli import build_parser
from cnnscope.engine import Engine
from cnnscope.engine.rules import BACKWARD_RULES, POLARITY, RULE_TERMS, RULES, RULES_TABLE
from cnnscope.errors import CnnscopeError
from cnnscope.server import create_app, schemas

ROOT = Path(__file__).resolve().parents[1]


def rule_choices(parser) -> dict[str, list[str]]:
    """``{subcommand: choices of its --rule}`` for every subcommand that has one."""
    found = {}
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            for option in sub._actions:
                if "--rule" in option.option_strings:
                    found[name] = list(option.choices)
    return found


def test_the_lists_that_offer_rules_are_the_engines(model, tmp_path):
    names = [rule.name for rule in BACKWARD_RULES]
    assert list(RULES) == names == [t.name for t in RULE_TERMS]
    assert POLARITY == {rule.name: rule.polarity for rule in BACKWARD_RULES}
    assert set(POLARITY.values()) <= {1, -1}
    assert list(typing.get_args(schemas.Rule)) == names
    choices = rule_choices(build_parser())
    assert {"tree", "graph"} <= set(choices), choices
    assert all(listed == names for listed in choices.values()), choices
    header = next(line for line in RULES_TABLE.splitlines() if line.startswith("| activation"))
    assert header.split(" | ")[1:] == [f"`{n}`" for n in names[:-1]] + [f"`{names[-1]}` |"]
    assert RULES_TABLE in (ROOT / "docs" / "methods.md").read_text(), "run make_methods_doc"
    with TestClient(create_app(model, data_dir=tmp_path)) as client:
        words = client.get("/api/vocabulary").json()
        spec = client.get("/openapi.json").json()
    assert [t["name"] for t in words["rules"]] == names
    params = spec["paths"]["/api/images/{image_id}/children"]["get"]["parameters"]
    (rule,) = [p for p in params if p["name"] == "rule"]
    assert rule["schema"]["enum"] == names


ZERO = """\
    BackwardRule(
        Term("zero", "Zero", "no gradient passes any rectifier"),
        1,
        lambda grad_in, grad_out, act: torch.zeros_like(grad_in),
        ("`0`",) * len(TABLE_ROWS),
    ),
"""

PROBE = r"""
import json, sys
import torch
from fastapi.testclient import TestClient
from cnnscope.cli import build_parser
from cnnscope.engine import Engine
from cnnscope.engine.rules import POLARITY, RULES_TABLE
from cnnscope.server import create_app
from tests.test_engine_rule_definitions import rule_choices

torch.manual_seed(0)
nn = torch.nn
net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
fwd = Engine(net).forward(torch.randn(1, 3, 8, 8))
grads = {
    rule: fwd.grad("logits", torch.ones(1, 2), to="input", rule=rule).abs().sum().item()
    for rule in ("gradient", "zero")
}
with TestClient(create_app(data_dir=sys.argv[1])) as client:
    words = client.get("/api/vocabulary").json()
    answers = {
        rule: client.get(
            "/api/images/chelsea/children", params={"path": "logits:285", "rule": rule, "k": 2}
        )
        for rule in ("zero", "nonsense")
    }
    status = {rule: [a.status_code, a.json()] for rule, a in answers.items()}
    status["zero"][1] = status["zero"][1]["rule"]
    status["nonsense"][1] = status["nonsense"][1]["detail"]
print(json.dumps({
    "module": __import__("cnnscope").__file__,
    "grads": grads,
    "rules": [t["name"] for t in words["rules"]],
    "status": status,
    "choices": rule_choices(build_parser()),
    "polarity": POLARITY.get("zero"),
    "table": "`zero`" in RULES_TABLE,
}))
"""


@pytest.mark.slow
def test_a_new_rule_is_one_entry_of_backward_rules(tmp_path):
    package = Path(cnnscope.__file__).parent
    copy = tmp_path / "src" / "cnnscope"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rules = copy / "engine" / "rules.py"
    text = rules.read_text()
    end = "\n)\n#: Each rule by its name."
    assert text.count(end) == 1, "BACKWARD_RULES no longer ends where this test adds a rule"
    rules.write_text(text.replace(end, "\n" + ZERO.rstrip("\n") + end))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'src'}{os.pathsep}{ROOT}"}
    env.setdefault("OMP_NUM_THREADS", "1")
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "data")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(got["module"]).parent == copy  # the copy ran, not the installed package
    assert got["grads"]["gradient"] > 0 and got["grads"]["zero"] == 0.0
    assert got["rules"] == [*RULES, "zero"]
    # the tree route expands a node under the new rule; a name that is no rule is refused
    assert got["status"]["zero"] == [200, "zero"]
    assert got["status"]["nonsense"][0] == 422 and "'zero'" in got["status"]["nonsense"][1]
    assert got["choices"] and all(c == [*RULES, "zero"] for c in got["choices"].values())
    assert got["polarity"] == 1 and got["table"]


def test_an_unknown_rule_is_refused_by_the_engine():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    fwd = Engine(net).forward(torch.randn(1, 3, 8, 8))
    with pytest.raises(CnnscopeError, match="unknown rule 'zero'"):
        fwd.grad("1", torch.ones(1, 4, 6, 6), to="input", rule="zero")
