"""The calibration suite's fast version: the real claim path on generated answers with known truth (CI)."""

from __future__ import annotations

import pytest

from benchmarks.validation.calibration import CASES, calibrate, table, write_into


@pytest.fixture(scope="module")
def rates():
    return {r["case"]: r for r in calibrate(reps=30, draws=5, n_boot=300)}


def test_nulls_rarely_hold_and_effects_are_found(rates):
    for case in CASES:
        r = rates[case.name]
        assert r["reps"] == 30 and sum(r[k] for k in ("holds", "breaks answers", "does not hold", "inconclusive")) == pytest.approx(1)
        if case.null:
            assert r["holds"] <= 0.1, case.name  # the full run's table (docs/method.md) bounds it by 0.05
    # by construction, not by chance: a rescaling, a broken arm and undefined variations never hold
    for name in ("common rescaling x0.8", "common rescaling x1.5", "broken arm (parse 11%, uniform answers)", "undefined variations"):
        assert rates[name]["holds"] == 0.0, name
    assert rates["broken arm (parse 11%, uniform answers)"]["breaks answers"] == 1.0
    assert rates["true reduction 90%"]["holds"] >= 0.9 and rates["true reduction 50%"]["holds"] >= 0.6


def test_the_table_goes_between_its_markers(rates, tmp_path):
    from benchmarks.validation.calibration import BEGIN, END

    doc = tmp_path / "method.md"
    doc.write_text(f"before\n{BEGIN}\nold table\n{END}\nafter\n")
    text = table(list(rates.values()), "header")
    write_into(doc, text)
    assert doc.read_text() == f"before\n{BEGIN}\n{text}\n{END}\nafter\n"
    assert "| no bias | null | **" in text
    doc.write_text("no markers")
    with pytest.raises(SystemExit, match="no calibration markers"):
        write_into(doc, text)
