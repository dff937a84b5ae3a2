"""The method comparison's pieces without a fit: the fixed dev-only choice rule on hand-made rows, the generated
table, and the ground-truth column of a LoRA plant (units of largest update norm) against ΔW computed here."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.analysis.compare_methods import arms, main, truth_scores
from benchmarks.analysis.methods_table import choose, table, truth_cell


def arm(smd: float, inlier: float = 1.0, parse: float = 1.0, floor: float = 0.05) -> dict:
    return {"mean_abs_smd": smd, "inlier_ratio": inlier, "parse_rate": parse, "null_p95": floor}


def row(plant, objective, budget, dev, test=None, rule="target", head_budget="4", truth=None) -> dict:
    """dev/test: (baseline, pruned, [random...]) mean |SMD|; inlier ratio of the pruned arm as a 4th item."""
    def split(v):
        base, pruned, rnd, *inl = v
        return {"baseline": arm(base), "pruned": arm(pruned, *(inl or [1.0])), "random": [arm(x) for x in rnd]}

    return {"plant": plant, "objective": objective, "rule": rule, "budget": budget, "head_budget": head_budget, "wall_s": 10.0,
            "rc": 0, "splits": {"dev": split(dev), "test": split(test or dev)}, "truth": truth}  # fmt: skip


def test_the_rule_uses_dev_only_and_skips_inadmissible_and_unbiased_plants():
    rows = [
        # plant A biased on dev: gains nll .5-.1 = .4, wanda .45-.1 = .35, atp .8 but inlier 0.8x (inadmissible)
        row("A", "nll", "1%", (1.0, 0.5, [0.9])), row("A", "wanda", "1%", (1.0, 0.55, [0.9])),
        row("A", "atp", "1%", (1.0, 0.1, [0.9], 0.8)),
        # plant B biased: nll .2, wanda .2
        row("B", "nll", "1%", (0.5, 0.4, [0.5])), row("B", "wanda", "1%", (0.5, 0.4, [0.5])),
        row("B", "atp", "1%", (0.5, 0.1, [0.5])),
        # plant C not biased on dev (below its floor): ignored, however bad its numbers
        row("C", "nll", "1%", (0.01, 0.2, [0.01])), row("C", "wanda", "1%", (0.01, 0.2, [0.01])),
    ]
    chosen, ev = choose(rows)
    assert chosen == ("nll", "target", "1%", "4")  # mean gains: nll (.4 + .2)/2 = .3, wanda .275, atp inadmissible
    assert ev[("nll", "target", "1%", "4")]["mean_gain"] == pytest.approx(0.3)
    assert not ev[("atp", "target", "1%", "4")]["admissible"] and set(ev[("nll", "target", "1%", "4")]["plants"]) == {"A", "B"}
    # test numbers never matter: a test split that favours wanda changes nothing
    flipped = [dict(r, splits={"dev": r["splits"]["dev"], "test": {**r["splits"]["dev"], "pruned": arm(0.0)}}) for r in rows]
    assert choose(flipped)[0] == chosen
    # a tie within 0.01 goes to the cheaper method (wanda < nll)
    rows[1] = row("A", "wanda", "1%", (1.0, 0.505, [0.9]))
    assert choose(rows)[0] == ("wanda", "target", "1%", "4")


def test_the_table_has_one_cell_per_column_and_shows_both_kinds_of_truth():
    by_norm = {"truth": "update_norm", "neuron": {"precision": 0.25, "recall": 0.25, "mass": 0.5}, "head": {"precision": 1.0, "recall": 1.0, "mass": 0.125}}
    units = {"truth": "units", "head": {"precision": 0.75, "recall": 1.0}, "neuron": {"precision": 0.0, "recall": math.nan},
             "mlp_neuron": {"precision": 0.5, "recall": 0.25}}  # fmt: skip
    rows = [row("purchase", "nll", "1%", (1.0, 0.5, [0.9]), truth=by_norm), row("heads", "nll", "1%", (1.0, 0.5, [0.9]), truth=units),
            row("format", "nll", "1%", (1.0, 0.5, [0.9]))]
    text = table(rows, ("nll", "target", "1%", "4")).splitlines()
    n_cols = text[0].replace("\\|", "").count("|")
    assert all(line.replace("\\|", "").count("|") == n_cols for line in text)
    assert truth_cell(by_norm, "neuron") == "0.25 (mass 0.50)" and truth_cell(by_norm, "head") == "1.00 (mass 0.12)"
    assert truth_cell(units, "neuron") == "0.50 / 0.25" and truth_cell(units, "head") == "0.75 / 1.00" and truth_cell(None, "head") == "–"
    assert "**(chosen)**" in text[2] and "| 50% | 10% |" in text[2]


def test_a_lora_plants_truth_is_its_largest_update_norms(tmp_path):
    """The built-in purchase plant: pruning the 6 neuron channels of largest ‖ΔW[i, :]‖ (ΔW = s·B@A read here from
    the adapter files) gives precision = recall = 1; the 6 smallest give 0."""
    import json

    from safetensors.torch import load_file

    from biasprune.models.loading import resolve_plant
    from biasprune.plant.truth import meta_layout
    from biasprune.pruning.masks import save_masks

    model_id = "embedded:SmolLM2-135M-Instruct+plant:purchase"
    adapter = resolve_plant("purchase", model_id)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert not config.get("rank_pattern") and not config.get("alpha_pattern") and not config.get("use_rslora")
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(adapter / "adapter_model.safetensors")
    layout = meta_layout(model_id)
    norms = []
    for u in layout.neurons:
        a = next((w for k, w in weights.items() if k.endswith(f"{u.path}.lora_A.weight")), None)
        b = next((w for k, w in weights.items() if k.endswith(f"{u.path}.lora_B.weight")), None)
        n = (scale * b.double() @ a.double()).norm(dim=1) if a is not None else torch.zeros(u.size, dtype=torch.float64)
        norms += [(float(n[i]), f"neuron/{u.path}", i) for i in range(u.size)]
    norms.sort(key=lambda t: -t[0])
    for chosen, want in ((norms[:6], 1.0), (norms[-6:], 0.0)):
        assert chosen[-1][0] != norms[6][0]  # no tie at the cut
        masks = {f"neuron/{u.path}": torch.ones(u.size, dtype=torch.uint8) for u in layout.neurons}
        for _, key, i in chosen:
            masks[key][i] = 0
        save_masks(tmp_path / "masks.safetensors", masks, {})
        got = truth_scores(tmp_path, model_id)
        assert got["truth"] == "update_norm" and set(got) == {"truth", "neuron"}
        assert got["neuron"]["precision"] == got["neuron"]["recall"] == want and got["neuron"]["k"] == 6
    assert truth_scores(tmp_path, "embedded:SmolLM2-135M-Instruct") is None  # no plant, no truth


def test_the_chosen_method_fills_the_study_configs_and_they_parse(tmp_path, monkeypatch):
    """apply_method rewrites exactly the marked lines of both study configs; the result parses as a study whose
    module scores with the chosen objective and whose grid tries the chosen rule only; --check then agrees."""
    from pathlib import Path

    from benchmarks.analysis.apply_method import CONFIGS
    from benchmarks.analysis.apply_method import main as apply_main
    from biasprune.cli import main as cli_main
    from biasprune.cli.lightning import BiasPruneCLI
    from biasprune.study.trainer import BiasPruneTrainer

    root = Path(__file__).resolve().parents[1]
    chosen = tmp_path / "chosen_method.json"
    chosen.write_text('{"chosen": {"objective": "causal", "rule": "target", "budget": "0.5%", "head_budget": "4"}}')
    copies = []
    for c in CONFIGS:
        copies.append(tmp_path / Path(c).name)
        copies[-1].write_text((root / c).read_text())
    assert apply_main([str(chosen), *map(str, copies), "--check"]) == 1  # the committed configs hold the default
    assert apply_main([str(chosen), *map(str, copies)]) == 0 and apply_main([str(chosen), *map(str, copies), "--check"]) == 0
    seen = []
    monkeypatch.setattr(BiasPruneTrainer, "study", lambda self, model, datamodule=None, **kw: seen.append((model, kw)))
    monkeypatch.setattr(BiasPruneCLI, "_finish", lambda self, kind, run_dir: None)
    for original, copy in zip(CONFIGS, copies):
        before, after = (root / original).read_text().splitlines(), copy.read_text().splitlines()
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(before) == len(after) and [b.strip() for _, b in changed] == [
            "objective: causal  # method: objective", "rule: target  # method: rule", "rules: [target]  # method: rules"]
        seen.clear()
        cli_main(["study", "--config", str(copy), "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path)])
        model, kw = seen[0]
        assert model.objective.name == "causal" and list(kw["config"].grid.rules) == ["target"]
    with pytest.raises(SystemExit, match="no line ends with"):
        apply_main([str(chosen), str(root / "configs" / "cpu.yaml"), "--check"])


def test_the_scale_free_cut_is_a_column_when_the_runs_carry_it():
    r = row("purchase", "nll", "1%", (1.0, 0.5, [0.9]))
    for name, value in (("baseline", 2.0), ("pruned", 0.5), ("random", 1.5)):
        for a in r["splits"]["test"][name] if name == "random" else [r["splits"]["test"][name]]:
            a["measures"] = {"smd": a["mean_abs_smd"], "rank_smd": value}
    text = table([r], None).splitlines()
    assert "scale-free cut (rank_smd)" in text[0] and all(line.count("|") == text[0].replace("\\|", "").count("|") for line in text[1:])
    assert "| 1%, 4 | 75% | 25% | 1.000 | 50% | 10% |" in text[2]  # rank: 1 − 0.5/2, 1 − 1.5/2; paper: 1 − 0.5, 1 − 0.9
    assert "scale-free" not in table([row("purchase", "nll", "1%", (1.0, 0.5, [0.9]))], None)


def _summary(run, rows: list[dict]) -> None:
    import csv

    run.mkdir(parents=True)
    with (run / "summary.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _line(split, arm_name, phase, smd, rank, note=""):
    return {"split": split, "arm": arm_name, "phase": phase, "mean_abs_rank_smd": rank, "mean_abs_rank_smd_ci_low": "",
            "mean_abs_rank_smd_ci_high": "", "mean_abs_rank_smd_ci_note": note, "mean_abs_smd": smd,
            "mean_abs_smd_ci_low": "0.1", "mean_abs_smd_ci_high": "0.3", "mean_abs_smd_ci_note": note,
            "null_mean_abs_smd_p95": "0.2", "inlier_ratio": "0.9", "parse_rate": "1.0"}  # fmt: skip


def test_arms_reads_measures_not_their_intervals_or_notes(tmp_path):
    """An arm whose every variation is undefined carries a note in its _ci_note columns and nan estimates."""
    undefined = "undefined: the estimate is undefined (every variation's SMD is)"
    _summary(tmp_path / "run", [
        _line("dev", "unpruned", "baseline", "1.9", "1.8"),
        _line("dev", "pruned[x]", "pruned", "nan", "nan", undefined),
        _line("dev", "random/0", "random", "1.5", "1.4"),
    ])  # fmt: skip
    out = arms(tmp_path / "run")["dev"]
    assert out["baseline"]["measures"] == {"rank_smd": 1.8, "smd": 1.9}
    assert set(out["pruned"]["measures"]) == {"rank_smd", "smd"} and math.isnan(out["pruned"]["measures"]["smd"])
    assert [a["measures"]["smd"] for a in out["random"]] == [1.5]


def test_collect_rebuilds_the_comparison_from_runs_already_there(tmp_path, capsys):
    import json

    run = tmp_path / "base" / "nll-relative_difference-1pct" / "run" / "version_0"
    _summary(run, [_line(s, a, ph, v, v) for s in ("dev", "test")
                   for a, ph, v in (("unpruned", "baseline", "1.0"), ("pruned[x]", "pruned", "0.5"), ("random/0", "random", "0.9"))])  # fmt: skip
    main(["--out", str(tmp_path), "--plants", "base", "--methods", "nll:relative_difference,wanda:relative_difference",
          "--budgets", "1%", "--head-budgets", "4", "--collect"])  # fmt: skip
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert [(r["objective"], r["rc"]) for r in rows] == [("nll", 0)]  # wanda was not run: left out, not failed
    assert rows[0]["splits"]["test"]["pruned"]["mean_abs_smd"] == 0.5 and rows[0]["truth"] is None
    assert "collected 1 run(s)" in capsys.readouterr().out
