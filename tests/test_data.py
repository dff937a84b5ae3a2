"""Audit data: built-in files, validation errors, prompt counts and pairing."""

from __future__ import annotations

import textwrap

import pytest

from biasprune.data import (
    AuditDataError,
    build_prompt_rows,
    builtin_scenarios,
    check_groups,
    load_names,
    load_scenario,
    load_scenarios,
    parse_selectors,
    split_names,
)

PAPER_COUNTS = {"purchase": 10, "activity": 3, "service": 3, "finance": 3}


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_builtin_scenarios_and_names():
    assert builtin_scenarios() == ["activity", "chess", "finance", "hiring", "public_office", "purchase", "service", "sports"]
    scen = load_scenarios(builtin_scenarios())
    for name, n in PAPER_COUNTS.items():
        assert len(scen[name].variations) == n
    assert {v.id for v in scen["purchase"].variations} == {
        "chair", "car", "oven", "mattress", "grill", "television", "air_conditioner", "camera", "bicycle", "piano"
    }
    assert scen["purchase"].template.startswith("I want to buy a {item} from {name}. Provide an estimate for the initial offer")
    names = load_names()
    assert len(names) == 40
    cells = {}
    for n in names:
        cells[(n.group, n.gender)] = cells.get((n.group, n.gender), 0) + 1
    assert cells == {("white", "man"): 10, ("white", "woman"): 10, ("black", "man"): 10, ("black", "woman"): 10}
    assert all(n.name.endswith(" Becker") for n in names if n.group == "white")
    assert all(n.name.endswith(" Washington") for n in names if n.group == "black")


def test_prompt_counts_and_pairs():
    scen = load_scenarios(builtin_scenarios())
    names = load_names()
    sel = parse_selectors(["purchase", "finance/childcare_expenses", "chess"], scen, "test")
    rows = build_prompt_rows(scen, sel, names, ["white", "black"])
    assert len(rows) == (10 + 1 + 1) * 40
    pairs = {}
    for r in rows:
        pairs.setdefault(r["pair_id"], []).append(r)
    assert len(pairs) == len(rows) // 2
    for members in pairs.values():
        assert {m["group"] for m in members} == {"white", "black"}
        a, b = members
        assert a["gender"] == b["gender"] and a["variation"] == b["variation"]
        # the two prompts differ only in the name
        assert a["user_prompt"].replace(a["name"], "<NAME>") == b["user_prompt"].replace(b["name"], "<NAME>")
        assert a["name"] in a["user_prompt"] and b["name"] not in a["user_prompt"]


def test_split_names_is_balanced_seeded_and_disjoint():
    names = load_names()
    s1, e1 = split_names(names, 0.5, seed=3)
    s2, e2 = split_names(names, 0.5, seed=3)
    s3, e3 = split_names(names, 0.5, seed=4)
    assert e1 == e2 and e1 != e3
    assert not {n.name for n in s1} & {n.name for n in e1}
    assert len(s1) + len(e1) == 40
    for cell in [("white", "man"), ("white", "woman"), ("black", "man"), ("black", "woman")]:
        assert sum((n.group, n.gender) == cell for n in e1) == 5


BASE = """\
name: toy
template: "Price of a {item} for {name}?"
variations:
  - {id: a, item: apple}
"""


@pytest.mark.parametrize(
    "text, match",
    [
        (BASE.replace("{id: a, item: apple}", "{id: a}"), r"variations\[0\] \(id 'a'\): placeholder\(s\) \['item'\] of the template are not given"),
        (BASE.replace("{id: a, item: apple}", "{id: a, item: apple, colour: red}"), r"variations\[0\] \(id 'a'\): unknown placeholder\(s\) \['colour'\]; the template uses \['item'\]"),
        (BASE + "  - {id: a, item: pear}\n", r"variations\[1\]: duplicate variation id 'a'"),
        (BASE + "valid_range: [10, 1]\n", r"field 'valid_range' must be two numbers \[low, high\] with low < high, got \[10, 1\]"),
        (BASE + "valid_range: [1, two]\n", r"field 'valid_range' must be two numbers"),
        (BASE + "valid_range: 5\n", r"field 'valid_range' must be two numbers"),
        (BASE.replace("{name}", "someone"), r"field 'template' must contain the placeholder \{name\}"),
        (BASE.replace("{item}", "{item"), r"field 'template' is not a valid format string"),
        (BASE.replace("name: toy\n", ""), r"missing field 'name'"),
        (BASE + "colour: red\n", r"unknown field\(s\) \['colour'\]"),
        ("- just a list\n", r"expected a mapping"),
        (BASE.replace("variations:\n  - {id: a, item: apple}\n", "variations: []\n"), r"field 'variations' must be a non-empty list"),
        (BASE.replace("{item}", "{0}"), r"placeholders must be plain identifiers"),
    ],
)
def test_scenario_validation_errors(tmp_path, text, match):
    path = write(tmp_path, "toy.yaml", text)
    with pytest.raises(AuditDataError, match=match) as info:
        load_scenario(path)
    assert str(path) in str(info.value)  # every message names the file


def test_unknown_scenario_and_selector(tmp_path):
    with pytest.raises(AuditDataError, match=r"unknown scenario 'shopping': give a path to a YAML file or one of the built-in scenarios \['activity'"):
        load_scenario("shopping")
    with pytest.raises(AuditDataError, match="scenario file .*missing.yaml' does not exist"):
        load_scenario(tmp_path / "missing.yaml")
    scen = load_scenarios(["purchase"])
    with pytest.raises(AuditDataError, match=r"data.scoring: unknown scenario 'finance' in 'finance'; loaded scenarios: \['purchase'\]"):
        parse_selectors(["finance"], scen, "data.scoring")
    with pytest.raises(AuditDataError, match=r"has no variation 'boat'; valid choices: \['chair'"):
        parse_selectors(["purchase/boat"], scen, "data.scoring")
    with pytest.raises(AuditDataError, match="is already used by"):
        load_scenarios(["purchase", "purchase"])


@pytest.mark.parametrize(
    "text, match",
    [
        ("name,group\nA,white\n", r"missing column\(s\) \['gender'\]; found columns \['name', 'group'\], required \['name', 'group', 'gender'\]"),
        ("name,group,gender\nA,white,man\nA,black,man\n", r"names.csv:3: duplicate name 'A'"),
        ("name,group,gender\nA,,man\n", r"names.csv:2: empty value in column 'group'"),
        ("name,group,gender\n", r"no names"),
    ],
)
def test_names_validation_errors(tmp_path, text, match):
    path = write(tmp_path, "names.csv", text)
    with pytest.raises(AuditDataError, match=match):
        load_names(path)


def test_group_without_names(tmp_path):
    names = load_names(write(tmp_path, "names.csv", "name,group,gender,source\nA,white,man,x\nB,asian,woman,y\n"))
    check_groups(names, ["white"], "names.csv")
    with pytest.raises(AuditDataError, match=r"names.csv: group 'black' has no names; groups present: \['asian', 'white'\]"):
        check_groups(names, ["white", "black"], "names.csv")
