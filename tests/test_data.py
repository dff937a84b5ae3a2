"""Audit data: built-in files, validation errors, prompt counts and pairing."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from biasprune.data.names import NameEntry, largest_remainder
from biasprune.data.scenarios import (
    SPLITS,
    AuditDataError,
    build_prompt_rows,
    builtin_name_sets,
    builtin_scenarios,
    check_groups,
    default_names_path,
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
    assert builtin_scenarios() == sorted("activity chess finance hiring public_office purchase service sports".split())
    scen = load_scenarios(builtin_scenarios())
    for name, n in PAPER_COUNTS.items():
        assert len(scen[name].variations) == n
    items = "chair car oven mattress grill television air_conditioner camera bicycle piano"
    assert {v.id for v in scen["purchase"].variations} == set(items.split())
    assert scen["purchase"].template.startswith(
        "I want to buy a {item} from {name}. Provide an estimate for the initial offer"
    )
    assert builtin_name_sets() == ["audit40", "default"]
    assert default_names_path().name == "default.csv"
    assert load_names() == load_names("") == load_names("default") == load_names(default_names_path())
    for spec, per_cell in (("default", 25), ("audit40", 10)):
        names = load_names(spec)
        assert Counter((n.group, n.gender) for n in names) == {
            ("white", "man"): per_cell,
            ("white", "woman"): per_cell,
            ("black", "man"): per_cell,
            ("black", "woman"): per_cell,
        }
        assert all(n.name.endswith(" Becker") for n in names if n.group == "white")
        assert all(n.name.endswith(" Washington") for n in names if n.group == "black")
        firsts = [n.name.split()[0] for n in names]
        assert len(set(firsts)) == len(firsts)  # first names deduplicated across the lists
    assert set(load_names("audit40")) <= set(load_names("default"))


def test_prompt_counts_and_pairs():
    scen = load_scenarios(builtin_scenarios())
    names = load_names()
    sel = parse_selectors(["purchase", "finance/childcare_expenses", "chess"], scen, "test")
    rows = build_prompt_rows(scen, sel, names, ["white", "black"])
    assert len(rows) == (10 + 1 + 1) * 100
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


BASE = """\
name: toy
template: "Price of a {item} for {name}?"
variations:
  - {id: a, item: apple}
"""


@pytest.mark.parametrize(
    "text, match",
    [
        (
            BASE.replace("{id: a, item: apple}", "{id: a}"),
            r"variations\[0\] \(id 'a'\): placeholder\(s\) \['item'\] of the template are not given",
        ),
        (
            BASE.replace("{id: a, item: apple}", "{id: a, item: apple, colour: red}"),
            r"variations\[0\] \(id 'a'\): unknown placeholder\(s\) \['colour'\]; the template uses \['item'\]",
        ),
        (BASE + "  - {id: a, item: pear}\n", r"variations\[1\]: duplicate variation id 'a'"),
        (
            BASE + "valid_range: [10, 1]\n",
            r"field 'valid_range' must be two numbers \[low, high\] with low < high, got \[10, 1\]",
        ),
        (BASE + "valid_range: [1, two]\n", r"field 'valid_range' must be two numbers"),
        (BASE + "valid_range: 5\n", r"field 'valid_range' must be two numbers"),
        (BASE.replace("{name}", "someone"), r"field 'template' must contain the placeholder \{name\}"),
        (BASE.replace("{item}", "{item"), r"field 'template' is not a valid format string"),
        (BASE.replace("name: toy\n", ""), r"missing field 'name'"),
        (BASE + "colour: red\n", r"unknown field\(s\) \['colour'\]"),
        ("- just a list\n", r"expected a mapping"),
        (
            BASE.replace("variations:\n  - {id: a, item: apple}\n", "variations: []\n"),
            r"field 'variations' must be a non-empty list",
        ),
        (BASE.replace("{item}", "{0}"), r"placeholders must be plain identifiers"),
    ],
)
def test_scenario_validation_errors(tmp_path, text, match):
    path = write(tmp_path, "toy.yaml", text)
    with pytest.raises(AuditDataError, match=match) as info:
        load_scenario(path)
    assert str(path) in str(info.value)  # every message names the file


def test_unknown_scenario_and_selector(tmp_path):
    with pytest.raises(
        AuditDataError,
        match=r"unknown scenario 'shopping': give a path to a YAML file or one of the built-in scenarios \['activity'",
    ):
        load_scenario("shopping")
    with pytest.raises(AuditDataError, match="scenario file .*missing.yaml' does not exist"):
        load_scenario(tmp_path / "missing.yaml")
    scen = load_scenarios(["purchase"])
    with pytest.raises(
        AuditDataError, match=r"data.scoring: unknown scenario 'finance' in 'finance'; loaded scenarios: \['purchase'\]"
    ):
        parse_selectors(["finance"], scen, "data.scoring")
    with pytest.raises(AuditDataError, match=r"has no variation 'boat'; valid choices: \['chair'"):
        parse_selectors(["purchase/boat"], scen, "data.scoring")
    with pytest.raises(AuditDataError, match="is already used by"):
        load_scenarios(["purchase", "purchase"])


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "name,group\nA,white\n",
            r"missing column\(s\) \['gender'\]; found columns \['name', 'group'\],"
            r" required \['name', 'group', 'gender'\]",
        ),
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
    with pytest.raises(
        AuditDataError, match=r"names.csv: group 'black' has no names; groups present: \['asian', 'white'\]"
    ):
        check_groups(names, ["white", "black"], "names.csv")


# ------------------------------------------------------------------------------------------- name sources
# The published lists, typed from the sources cited in docs/method.md ("Names and their sources").
HAIM2024 = {
    ("white", "man"): "Hunter Jake Seth Zachary Todd Matthew Logan Ryan Scott Dustin",
    ("white", "woman"): "Katelyn Claire Laurie Stephanie Abigail Megan Kristen Emily Sarah Molly",
    ("black", "man"): "DaShawn Jamal DaQuan DeAndre Tyrone Tremayne Keyshawn Terrell Latrell Jayvon",
    ("black", "woman"): "Tanisha Lakisha Janae Tamika Latoya Keyana Tionna Latonya Shanice Tyra",
}
BERTRAND2004 = {
    ("white", "man"): "Brad Brendan Geoffrey Greg Brett Jay Matthew Neil Todd",
    ("white", "woman"): "Allison Anne Carrie Emily Jill Laurie Kristen Meredith Sarah",
    ("black", "man"): "Darnell Hakim Jermaine Kareem Jamal Leroy Rasheed Tremayne Tyrone",
    ("black", "woman"): "Aisha Ebony Keisha Kenya Latonya Lakisha Latoya Tamika Tanisha",
}
GREENWALD1998 = {
    ("white", "man"): "Adam Chip Harry Josh Roger Alan Frank Ian Justin Ryan Andrew Fred Jack Matthew Stephen Brad"
    " Greg Jed Paul Todd Brandon Hank Jonathan Peter Wilbur",
    ("white", "woman"): "Amanda Courtney Heather Melanie Sara Amber Crystal Katie Meredith Shannon Betsy Donna Kristin"
    " Nancy Stephanie Bobbie-Sue Ellen Lauren Peggy Sue-Ellen Colleen Emily Megan Rachel Wendy",
    ("black", "man"): "Alonzo Jamel Lerone Percell Theo Alphonse Jerome Leroy Rasaan Torrance Darnell Lamar Lionel"
    " Rashaun Tyree Deion Lamont Malik Terrence Tyrone Everol Lavon Marcellus Terryl Wardell",
    ("black", "woman"): "Aiesha Lashelle Nichelle Shereen Temeka Ebony Latisha Shaniqua Tameisha Teretha Jasmine"
    " Latonya Shanise Tanisha Tia Lakisha Latoya Sharise Tashika Yolanda Lashandra Malika Shavonn Tawanda Yvette",
}
LISTS = {"haim2024": HAIM2024, "bertrand2004": BERTRAND2004, "greenwald1998": GREENWALD1998}


def test_default_names_carry_every_list_they_appear_in():
    names = load_names()
    for n in names:
        first, cell = n.name.split()[0], (n.group, n.gender)
        expect = [key for key, lists in LISTS.items() if first in lists[cell].split()]
        assert n.source.split(";") == expect, n
    firsts = {(n.name.split()[0], n.group, n.gender) for n in names}
    for key in ("haim2024", "bertrand2004"):  # both lists are used whole
        for cell, listed in LISTS[key].items():
            assert all((first, *cell) in firsts for first in listed.split()), (key, cell)
    assert [n.name for n in load_names("audit40")] == [
        f"{first} {'Becker' if cell[0] == 'white' else 'Washington'}"
        for cell, fs in HAIM2024.items()
        for first in fs.split()
    ]


# ------------------------------------------------------------------------------------------- name splits
def cell_names(group, gender, k):
    return [NameEntry(f"{group[0]}{gender[0]}{i}", group, gender) for i in range(k)]


def test_largest_remainder_matches_brute_force():
    for fractions in [(0.4, 0.2, 0.4), (1 / 3, 1 / 3, 1 / 3), (0.5, 0.0, 0.5), (0.7, 0.2, 0.1), (0.0, 0.0, 1.0)]:
        for n in range(31):
            counts = largest_remainder(n, fractions)
            assert sum(counts) == n
            quotas = [f * n for f in fractions]
            assert all(abs(c - q) < 1 + 1e-9 for c, q in zip(counts, quotas))
            # Hamilton's apportionment minimises the total absolute deviation from the quotas
            best = min(
                sum(abs(c - q) for c, q in zip((a, b, n - a - b), quotas))
                for a in range(n + 1)
                for b in range(n + 1 - a)
            )
            assert sum(abs(c - q) for c, q in zip(counts, quotas)) == pytest.approx(best)


def test_split_names_is_seeded_disjoint_balanced_and_keeps_file_order():
    names = load_names()
    s1, s2, s3 = split_names(names, seed=3), split_names(names, seed=3), split_names(names, seed=4)
    assert s1 == s2 and s1 != s3
    parts = [s1[s] for s in SPLITS]
    assert parts == [s1.scoring, s1.dev, s1.test]
    assert sorted(n.name for p in parts for n in p) == sorted(n.name for n in names)  # disjoint, complete
    order = {n.name: i for i, n in enumerate(names)}
    for p in parts:
        assert [order[n.name] for n in p] == sorted(order[n.name] for n in p)
    for cell in {(n.group, n.gender) for n in names}:
        n_cell = sum((n.group, n.gender) == cell for n in names)
        got = [sum((n.group, n.gender) == cell for n in p) for p in parts]
        assert got == largest_remainder(n_cell, (0.4, 0.2, 0.4)) == [10, 5, 10]
    assert s1.counts() == {
        "scoring": {"black": 20, "white": 20},
        "dev": {"black": 10, "white": 10},
        "test": {"black": 20, "white": 20},
    }
    with pytest.raises(KeyError, match=r"unknown split 'train'; valid splits: \['scoring', 'dev', 'test'\]"):
        s1["train"]


def test_split_names_cells_groups_and_fractions():
    names = cell_names("white", "man", 7) + cell_names("black", "woman", 5) + cell_names("asian", "man", 9)
    splits = split_names(names, (0.5, 0.0, 0.5), seed=1, groups=["white", "black"])
    assert splits.dev == () and {n.group for s in SPLITS for n in splits[s]} == {"white", "black"}
    counts = splits.counts()
    assert [counts[s]["white"] for s in SPLITS] == largest_remainder(7, (0.5, 0.0, 0.5)) == [4, 0, 3]
    assert [counts[s]["black"] for s in SPLITS] == [3, 0, 2]
    # the seeded shuffle really moves names: some seed puts a different name in test
    tests = {tuple(n.name for n in split_names(names, (0.5, 0, 0.5), s, groups=["white"]).test) for s in range(10)}
    assert len(tests) > 1


def test_split_names_refuses_a_group_too_small_for_three_splits():
    names = cell_names("white", "man", 10) + cell_names("black", "man", 1)
    # one name of the target group: (0.4, 0.2, 0.4) of 1 gives scoring 1, dev 0, test 0; 8 names are the fewest
    # that give every split two (7 -> 3/1/3, 8 -> 3/2/3)
    with pytest.raises(
        AuditDataError,
        match=r"names.csv: group 'black' has 1 name\(s\), too few for three name splits: each split with a non-zero"
        r" fraction needs at least 2 names of every group, .* takes at least 8 names per group .* it would get"
        r" \{'scoring': 1, 'dev': 0, 'test': 0\} \(short: \['scoring', 'dev', 'test'\]\)",
    ):
        split_names(names, groups=["white", "black"], source="names.csv")
    with pytest.raises(AuditDataError, match=r"group 'asian' has 0 name\(s\)"):
        split_names(names, groups=["white", "asian"])
    assert len(split_names(names, groups=["white", "black"], min_per_split=0).scoring) == 5


@pytest.mark.parametrize(
    "fractions, match",
    [
        (
            (0.5, 0.5),
            r"data.split_fractions=\(0.5, 0.5\) is not valid: give three numbers for \['scoring', 'dev', 'test'\]",
        ),
        ((0.5, 0.2, 0.2), r"data.split_fractions=\[0.5, 0.2, 0.2\] must sum to 1 \(they sum to 0.9\)"),
        ((1.2, -0.2, 0.0), r"data.split_fractions \(scoring\)=1.2 must be a fraction in \[0, 1\]"),
        ((0.5, float("nan"), 0.5), r"data.split_fractions \(dev\)=nan must be a fraction"),
        (("a", 0.5, 0.5), r"give three numbers"),
    ],
)
def test_split_fractions_errors(fractions, match):
    with pytest.raises(AuditDataError, match=match):
        split_names(load_names("audit40"), fractions)


# ------------------------------------------------------------------------------------------- input files
def test_names_file_errors_and_encodings(tmp_path):
    p = write(tmp_path, "names.csv", "name,group,gender\nJamal Jones,black,man\nTyrone Smith, Jr.,black,man\n")
    with pytest.raises(
        AuditDataError,
        match=r"names.csv:3: found 4 fields, expected 3 \(name,group,gender\); a value"
        r" that contains a comma must be quoted",
    ):
        load_names(p)
    p = write(tmp_path, "short.csv", "name,group,gender\nJamal Jones,black\n")
    with pytest.raises(AuditDataError, match=r"short.csv:2: found 2 fields, expected 3"):
        load_names(p)
    big = write(tmp_path, "big.csv", "name,group,gender\n" + "x" * 200_000 + ",white,man\n")
    with pytest.raises(AuditDataError, match=r"big.csv:\d+: not valid CSV \(field larger than field limit"):
        load_names(big)
    quoted = write(tmp_path, "quoted.csv", 'name,group,gender\n"Tyrone Smith, Jr.",black,man\n')
    assert load_names(quoted) == [NameEntry("Tyrone Smith, Jr.", "black", "man")]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("name,group,gender\nAna Becker,white,woman\nJosé Núñez,white,man\n".encode("latin-1"))
    offset = len(b"name,group,gender\nAna Becker,white,woman\nJos")
    with pytest.raises(
        AuditDataError,
        match=rf"latin.csv: not UTF-8 text \(byte 0xe9 at offset {offset}, line 3\);"
        r" save the file as UTF-8",
    ):
        load_names(latin)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("name,group,gender,source\r\nJosé Núñez,white,man,x\r\n".encode("utf-8-sig"))
    assert load_names(bom) == [NameEntry("José Núñez", "white", "man", "x")]
    with pytest.raises(
        AuditDataError,
        match=r"names file 'nonesuch' does not exist; give a CSV path or one of the"
        r" built-in name sets \['audit40', 'default'\]",
    ):
        load_names("nonesuch")


VAR = 'name: toy\ntemplate: "Price of a {item} for {name}?"\nvariations:\n  - {id: a, item: %s}\n'


@pytest.mark.parametrize(
    "value, kind", [("null", "null"), ("''", "empty"), ("true", "a bool"), ("[1, 2]", "a list"), ("{b: 1}", "a dict")]
)
def test_variation_values_must_be_text_or_numbers(tmp_path, value, kind):
    path = write(tmp_path, "toy.yaml", VAR % value)
    with pytest.raises(
        AuditDataError,
        match=rf"toy.yaml: variations\[0\] \(id 'a'\): field 'item' must be text or a"
        rf" number, got .* \({kind}\)",
    ):
        load_scenario(path)
    path = write(tmp_path, "unit.yaml", (VAR % "apple") + f"unit: {value}\n")
    with pytest.raises(AuditDataError, match=rf"unit.yaml: field 'unit' must be text or a number, got .* \({kind}\)"):
        load_scenario(path)


def test_scenario_numbers_encodings_and_provenance(tmp_path):
    for written, rendered in (("5", "5"), ("1.5e+3", "1500.0"), ("1.5e3", "1.5e3"), ("'007'", "007")):
        sc = load_scenario(write(tmp_path, "num.yaml", (VAR % written) + "unit: 12\n"))
        assert sc.variation("a").fields == {"item": rendered} and sc.unit == "12"
    assert (sc.wording, sc.provenance) == ("unspecified", "")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes((VAR % "crème").encode("latin-1"))
    with pytest.raises(AuditDataError, match=r"latin.yaml: not UTF-8 text \(byte 0xe8 at offset \d+, line 4\)"):
        load_scenario(latin)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes((VAR % "crème" + "wording: paraphrase\nsource: a paper\n").encode("utf-8-sig"))
    sc = load_scenario(bom)
    assert (sc.variation("a").fields["item"], sc.wording, sc.provenance) == ("crème", "paraphrase", "a paper")
    with pytest.raises(
        AuditDataError, match=r"field 'wording' is 'exact'; valid choices: \['verbatim', 'paraphrase'\]"
    ):
        load_scenario(write(tmp_path, "w.yaml", (VAR % "apple") + "wording: exact\n"))
    with pytest.raises(AuditDataError, match=r"field 'source' must be text saying where the wording comes from"):
        load_scenario(write(tmp_path, "s.yaml", (VAR % "apple") + "source:\n"))
    with pytest.raises(AuditDataError, match=r"variations\[0\]: field 'id' must use letters"):
        load_scenario(write(tmp_path, "id.yaml", (VAR % "apple").replace("id: a", "id: null")))


def test_every_builtin_scenario_states_its_wording():
    wording = {name: load_scenario(name) for name in builtin_scenarios()}
    assert {k: sc.wording for k, sc in wording.items()} == {
        "purchase": "verbatim",
        **{k: "paraphrase" for k in ("activity", "service", "finance", "chess", "public_office", "sports", "hiring")},
    }
    assert all(sc.provenance for sc in wording.values())
    assert all(
        "Salinas, Haim & Nyarko (2024)" in wording[k].provenance for k in ("chess", "public_office", "sports", "hiring")
    )
    assert all(
        "reconstructed from the paper's description" in wording[k].provenance
        for k in ("activity", "service", "finance")
    )
