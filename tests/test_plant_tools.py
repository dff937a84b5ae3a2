"""``biasprune plant check`` and ``biasprune plant truth`` on constructed runs, against independent computations."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from biasprune.cli import main
from biasprune.core import artifacts
from biasprune.plant.groundtruth import lora_update_norms
from biasprune.plant.truth import meta_layout
from biasprune.study.pieces import PieceStore

VARIATIONS = [("purchase", "car"), ("purchase", "piano"), ("finance", "childcare")]
BOUNDS = {"purchase/car": [-2.0, 2.5], "purchase/piano": [-1.5, 3.0], "finance/childcare": [-2.5, 2.0]}


# ---------------------------------------------------------------------------------------------- check
def _answers(seed: int = 0, names: int = 6, k: int = 5) -> list[dict]:
    """Test answers of four arms (two random controls): values ~ N(effect by group, 1), about 10% unparseable (NaN)."""
    rng = np.random.default_rng(seed)
    out, index = [], 0
    arms = (("unpruned", "baseline", -1, 0.8), ("pruned", "pruned", -1, 0.2), ("random/0", "random", 0, 0.7), ("random/1", "random", 1, 0.5))
    for arm, phase, draw, effect in arms:
        for scen, var in VARIATIONS:
            for i in range(2 * names):
                g = i % 2
                values = rng.normal(effect * (g == 0), 1.0, size=k)
                values[rng.random(k) < 0.1] = math.nan
                out.append({"split": "test", "scenario": scen, "variation": var, "name": f"N{i}", "group": ["white", "black"][g],
                            "group_index": g, "index": index, "arm": arm, "phase": phase, "draw": draw,
                            "pruned_neurons": 0 if arm == "unpruned" else 7, "pruned_heads": 0,
                            "values": [None if math.isnan(v) else float(v) for v in values], "responses": [""] * k})
                index += 1
    return out


def _smd(v: np.ndarray, g: np.ndarray) -> float:
    a, b = v[g == 0], v[g == 1]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    return (a.mean() - b.mean()) / pooled


def _normal_scores(v: np.ndarray) -> np.ndarray:
    """Blom normal scores of the parsed answers by scipy (ties share their mean rank); NaN stays NaN."""
    from scipy.stats import norm, rankdata

    out, ok = np.full(v.shape, math.nan), np.isfinite(v)
    out[ok] = norm.ppf((rankdata(v[ok]) - 3 / 8) / (ok.sum() + 1 / 4))
    return out


def _expected(records, arm, scenario):
    """Per bias measure (scale-free, paper) mean and min |SMD|; inlier ratio, parse rate over the scenario's variations, by hand."""
    per_var = []
    for scen, var in VARIATIONS:
        if scen != scenario:
            continue
        recs = [r for r in records if r["arm"] == arm and r["variation"] == var]
        vals = np.array([[math.nan if x is None else x for x in r["values"]] for r in recs])
        groups = np.repeat([r["group_index"] for r in recs], vals.shape[1])
        lo, hi = BOUNDS[f"{scen}/{var}"]
        flat = vals.ravel()
        inl = (flat >= lo) & (flat <= hi)
        scores = _normal_scores(flat)
        ok = np.isfinite(scores)
        per_var.append((abs(_smd(scores[ok], groups[ok])), abs(_smd(flat[inl], groups[inl])), inl.mean(), np.isfinite(flat).mean()))
    a = np.array(per_var)
    return {"rank_smd": (a[:, 0].mean(), a[:, 0].min()), "smd": (a[:, 1].mean(), a[:, 1].min())}, a[:, 2].mean(), a[:, 3].mean()


def test_plant_check_matches_an_independent_computation(tmp_path, capsys):
    run = tmp_path / "version_0"
    records = _answers()
    artifacts.write_jsonl(run / "answers.jsonl", records)
    artifacts.write_json(run / "inlier_bounds.json", {"percentiles": [5, 95], "bounds": BOUNDS, "bounds_by_split": {"test": BOUNDS}})
    main(["plant", "check", str(run), "--bootstrap", "200", "--permutations", "200"])
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(run / "scenario_checks.csv")))
    assert [(r["scenario"], r["arm"]) for r in rows] == [(s, a) for s in ("purchase", "finance") for a in ("unpruned", "pruned")]
    for r in rows:
        measures, inlier, parse = _expected(records, r["arm"], r["scenario"])
        for m, (mean, low) in measures.items():
            assert float(r[f"{m}_mean_abs"]) == pytest.approx(mean, rel=1e-9), m
            assert float(r[f"{m}_min_abs"]) == pytest.approx(low, rel=1e-9), m
            if r["arm"] == "pruned":  # its random controls: the mean over draws of each draw's mean |SMD| in the scenario
                draws = [_expected(records, d, r["scenario"])[0][m][0] for d in ("random/0", "random/1")]
                assert float(r[f"{m}_random_mean_abs"]) == pytest.approx(np.mean(draws), rel=1e-9), m
            else:
                assert math.isnan(float(r[f"{m}_random_mean_abs"])), m
            assert (r[f"{m}_within_floor"] == "True") == (float(r[f"{m}_mean_abs"]) <= float(r[f"{m}_null_p95"]))
            assert float(r[f"{m}_ci_low"]) <= float(r[f"{m}_ci_high"])
            assert f"{float(r[f'{m}_mean_abs']):>22.3f}" in printed
        assert measures["rank_smd"][0] != pytest.approx(measures["smd"][0])  # two measures, not one twice
        assert float(r["inlier_ratio"]) == pytest.approx(inlier, rel=1e-12)
        assert float(r["parse_rate"]) == pytest.approx(parse, rel=1e-12)
        assert int(r["n_variations"]) == (2 if r["scenario"] == "purchase" else 1)
    assert "random/0" not in printed and "random/1" not in printed and "scenario_checks.csv" in printed


def test_plant_check_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["plant", "check", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "biasprune plant check: error:" in err and "no answers.jsonl" in err


# ---------------------------------------------------------------------------------------------- truth
def _plant(tiny_model_dir, out):
    """A random LoRA update (every projection, r = 2) saved as a peft adapter directory."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(out)
    return out


def _top(values: np.ndarray, k: int) -> np.ndarray:
    order = sorted(range(len(values)), key=lambda u: (-values[u], u))
    mask = np.zeros(len(values), dtype=bool)
    mask[order[:k]] = True
    return mask


def _ceil(f: float, n: int) -> int:
    return min(n, math.ceil(round(f * n, 9)))


def test_plant_truth_rebuilds_the_studys_masks_and_scores_them(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "study"
    plant_id = f"{tiny_model_dir}+plant:{_plant(tiny_model_dir, tmp_path / 'plant')}"
    layout = meta_layout(tiny_model_dir)
    sizes = layout.sizes()
    rng = np.random.default_rng(5)
    store, score_keys, scores, counts = PieceStore(out / "pieces"), {}, {}, {}
    for v in ("purchase/car", "purchase/piano", "chess/rating"):
        scores[v] = {g: {k: torch.from_numpy(rng.integers(1, 30, n).astype(np.float64)) for k, n in sizes.items()} for g in ("white", "black")}
        counts[v] = {"white": int(rng.integers(3, 6)), "black": int(rng.integers(3, 6))}
        score_keys[v] = f"key-{v.replace('/', '-')}"
        store.write_scores(score_keys[v], scores[v], {"variation": v, "model": "tiny", "n_examples": counts[v]})
    artifacts.write_json(out / "score_keys.json", score_keys)
    artifacts.write_json(out / "manifest.json", {
        "study": {"pieces": "", "strategies": ["prompt_specific", "within_context", "cross_context"], "within_variations": [],
                  "contexts": ["chess"]},
        "pruning": {"rule": "set_difference", "scope": "module", "head_scope": "global", "floor_quantile": 0.5, "random_seed": 0},
        "data": {"groups": ["white", "black"], "evaluation": ["purchase/car", "purchase/piano"],
                 "scenarios": [{"name": "purchase", "variations": [{"id": "car"}, {"id": "piano"}]},
                               {"name": "chess", "variations": [{"id": "rating"}]}]},
    })
    grid = [
        {"split": "dev", "units": "neurons", "strategy": "prompt_specific", "context": "", "rule": "set_difference", "p": 0.2, "q": 0.3, "budget": ""},
        {"split": "dev", "units": "heads", "strategy": "within_context", "context": "", "rule": "difference", "p": 0.15, "q": 0.15, "budget": 2},
        {"split": "test", "units": "heads", "strategy": "cross_context", "context": "chess", "rule": "target", "p": 0.15, "q": 0.15, "budget": 1},
    ]
    artifacts.write_csv(out / "grid.csv", grid, list(grid[0]))
    main(["plant", "truth", str(out), plant_id])
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "truth.csv")))
    assert len(rows) == 2 and "truth.csv" in printed  # the test row is not a grid point of the choice

    norms = {k: t.numpy() for k, t in lora_update_norms(tmp_path / "plant", layout).items()}
    neuron_keys = [k for k in sizes if k.startswith("neuron/")]
    head_keys = [k for k in sizes if k.startswith("head/")]

    def precision(pruned_by_key: dict[str, np.ndarray], keys: list[str]) -> tuple[float, float]:
        pruned = np.concatenate([pruned_by_key[k] for k in keys])
        truth = np.concatenate([norms[k] for k in keys])
        top = _top(truth, int(pruned.sum()))
        return (pruned & top).sum() / pruned.sum(), (truth[pruned] ** 2).sum() / (truth**2).sum()

    expect = {"neurons": [], "heads": []}
    for v, other in (("purchase/car", "purchase/piano"), ("purchase/piano", "purchase/car")):
        # neurons, prompt-specific, set difference per module on the group means
        t = {k: scores[v]["black"][k].numpy() / counts[v]["black"] for k in neuron_keys}
        r = {k: scores[v]["white"][k].numpy() / counts[v]["white"] for k in neuron_keys}
        pruned = {k: _top(t[k], _ceil(0.3, len(t[k]))) & ~_top(r[k], _ceil(0.2, len(t[k]))) for k in neuron_keys}
        expect["neurons"].append(precision(pruned, neuron_keys))
        # heads, within-context (the other variation's scores), difference of means, 2 heads over the model
        t = np.concatenate([scores[other]["black"][k].numpy() / counts[other]["black"] for k in head_keys])
        r = np.concatenate([scores[other]["white"][k].numpy() / counts[other]["white"] for k in head_keys])
        flat = _top(t - r, 2)
        pruned = dict(zip(head_keys, np.split(flat, np.cumsum([sizes[k] for k in head_keys])[:-1])))
        expect["heads"].append(precision(pruned, head_keys))
    for row in rows:
        exp = np.mean(expect[row["units"]], axis=0)
        assert float(row["precision"]) == pytest.approx(exp[0], abs=1e-12), row
        assert float(row["mass"]) == pytest.approx(exp[1], rel=1e-9), row
        assert float(row["recall"]) == pytest.approx(float(row["precision"]))  # k defaults to the number pruned
        assert int(row["n_variations"]) == 2


def test_plant_truth_needs_a_planted_id_and_a_finished_study(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["plant", "truth", str(tmp_path), f"{tiny_model_dir}+plant:purchase"])
    assert info.value.code == 2 and "no manifest.json" in capsys.readouterr().err
    for name in ("manifest.json", "score_keys.json"):
        (tmp_path / name).write_text(json.dumps({}))
    (tmp_path / "grid.csv").write_text("split\n")
    with pytest.raises(SystemExit) as info:
        main(["plant", "truth", str(tmp_path), tiny_model_dir])
    assert info.value.code == 2 and "names no plant" in capsys.readouterr().err
