"""Localized plants: the unit list, the confined LoRA update (exactly zero outside the units), stacked plants as
model ids, and the unit-level ground truth with precision/recall against brute force."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from biasprune.models.architectures import NEURON_MODULE_CHOICES, resolve_units
from biasprune.models.identity import model_identity
from biasprune.models.loading import ModelLoadError, load_model, plant_chain, plant_training_names
from biasprune.plant.cli import main, make_cli
from biasprune.plant.groundtruth import (
    MLP_NEURON,
    lora_update_norms,
    planted_units,
    truth_keep_masks,
    unit_precision_recall,
)
from biasprune.plant.module import PlantModule
from biasprune.plant.units import PlantUnits, PlantUnitsError

ROOT = Path(__file__).resolve().parents[1]
# The tiny Llama of conftest: 2 layers, 4 query heads of head_dim 8 in 2 key/value groups, MLP width 48.
HEADS = {"model.layers.0.self_attn": [1], "model.layers.1.self_attn": [0, 3]}
NEURONS = {"model.layers.0.mlp": [2, 17, 40], "model.layers.1.mlp": [5]}
D = 8


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _argv(base: str, out: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--model.model_name_or_path", base, "--trainer.accelerator", "cpu", "--trainer.max_steps", "6",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
        "--model.lr", "0.02",
        "--model.warmup_fraction", "0", "--data.plant.scenarios", "[purchase/car, finance/childcare_expenses]",
        "--data.plant.planted", "[purchase/car]", "--data.plant.factor", "0.5",
        "--data.plant.examples_per_variation", "16", "--data.batch_size", "8", "--output", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def format_plant(tiny_model_dir, tmp_path_factory):
    """A short plain plant on the tiny model: the base the localized plants are stacked on."""
    root = tmp_path_factory.mktemp("format")
    torch.set_num_threads(1)
    main(_argv(tiny_model_dir, root / "format", root, "--data.plant.factor", "1.0", "--data.plant.planted", "[]"))
    return root / "format"


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().double().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------ unit lists
def test_unit_list_errors(tiny_model_dir):
    with pytest.raises(PlantUnitsError, match=r"model.units.heads\['a'\] is empty"):
        PlantUnits(heads={"a": []})
    with pytest.raises(PlantUnitsError, match=r"indices must be integers >= 0, got \[-1\]"):
        PlantUnits(mlp_neurons={"a": [-1]})
    with pytest.raises(PlantUnitsError, match="lists an index twice"):
        PlantUnits(heads={"a": [1, 1]})
    model = load_model(tiny_model_dir)
    layout = resolve_units(model, NEURON_MODULE_CHOICES)
    with pytest.raises(PlantUnitsError, match=r"'model.layers.9.self_attn' is no attention module.*valid choices"):
        PlantUnits(heads={"model.layers.9.self_attn": [0]}).resolve(layout)
    with pytest.raises(PlantUnitsError, match=r"\[4\] out of range; the module has 4 query heads \(valid: 0 to 3\)"):
        PlantUnits(heads={"model.layers.0.self_attn": [4]}).resolve(layout)
    with pytest.raises(PlantUnitsError, match=r"'model.layers.0.mlp.up_proj' is no MLP module"):
        PlantUnits(mlp_neurons={"model.layers.0.mlp.up_proj": [0]}).resolve(layout)
    with pytest.raises(PlantUnitsError, match=r"allows none of its projections; add some of \['q_proj', 'o_proj'\]"):
        PlantUnits(heads=HEADS).resolve(layout, ["k_proj", "v_proj", "gate_proj"])
    with pytest.raises(TypeError, match="model.units must be a PlantUnits"):
        PlantModule(tiny_model_dir, units={"heads": HEADS})


def test_resolved_slices_and_ground_truth(tiny_model_dir):
    layout = resolve_units(load_model(tiny_model_dir), NEURON_MODULE_CHOICES)
    r = PlantUnits(heads=HEADS, mlp_neurons=NEURONS).resolve(layout)
    assert set(r.slices) == {f"model.layers.{i}.{p}" for i in (0, 1) for p in
                             ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}  # fmt: skip
    q1 = r.slices["model.layers.1.self_attn.q_proj"]
    assert q1.columns is None and q1.rows.nonzero().flatten().tolist() == [*range(0, 8), *range(24, 32)]
    o0 = r.slices["model.layers.0.self_attn.o_proj"]
    assert o0.rows is None and o0.columns.nonzero().flatten().tolist() == list(range(8, 16))
    down0 = r.slices["model.layers.0.mlp.down_proj"]
    assert down0.rows is None and down0.columns.nonzero().flatten().tolist() == [2, 17, 40]
    assert r.ground_truth() == {
        "head/model.layers.0.self_attn": [1], "head/model.layers.1.self_attn": [0, 3],
        "neuron/model.layers.0.mlp.gate_proj": [2, 17, 40], "neuron/model.layers.0.mlp.up_proj": [2, 17, 40],
        "neuron/model.layers.1.mlp.gate_proj": [5], "neuron/model.layers.1.mlp.up_proj": [5],
    }  # fmt: skip
    only_q = PlantUnits(heads=HEADS).resolve(layout, ["q_proj", "k_proj"])
    assert set(only_q.slices) == {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"}


def test_both_configs_instantiate_with_their_units():
    for name, kind, count in (("heads", "heads", 4), ("neurons", "mlp_neurons", 32)):
        cli = make_cli(["--config", str(ROOT / "configs" / "plant" / f"{name}.yaml"), "--trainer.accelerator", "cpu",
                        "--trainer.logger", "false"])  # fmt: skip
        units = cli.model.units
        assert units.count()[kind] == count and sum(units.count().values()) == count
        assert cli.model.hparams.model_name_or_path == "embedded:SmolLM2-135M-Instruct+plant:format"
        assert cli.datamodule.spec.factor == 0.6 and cli.datamodule.spec.names == "scoring"
        assert {s for s, _ in cli.datamodule.resolved.planted} == {"purchase"}
        layers = {int(p.split(".")[2]) for p in getattr(units, kind)}
        assert len(layers) == (2 if name == "heads" else 3)


# ------------------------------------------------------------------------------- the confined update
@pytest.mark.parametrize("units", [{"heads": HEADS}, {"mlp_neurons": NEURONS}, {"heads": HEADS, "mlp_neurons": NEURONS}])
def test_merged_update_is_exactly_zero_outside_the_units(tiny_model_dir, format_plant, tmp_path, units, one_thread):
    """Train a localized plant on the stacked base, merge it as a model id, and compare every weight with the base."""
    base_id = f"{tiny_model_dir}+plant:{format_plant}"
    out = tmp_path / "localized"
    main(_argv(base_id, out, tmp_path, "--model.units", json.dumps(units)))
    before = _weights(load_model(base_id))
    model = load_model(f"{base_id}+plant:{out}")
    after = _weights(model)
    layout = resolve_units(model, NEURON_MODULE_CHOICES)
    allowed = {name: torch.zeros_like(w, dtype=torch.bool) for name, w in before.items()}

    def own(path: str, rows=None, cols=None) -> None:
        a = allowed[f"{path}.weight"]
        if rows is not None:
            a[rows] = True
        if cols is not None:
            a[:, cols] = True

    inside: list[torch.Tensor] = []
    for path, heads in units.get("heads", {}).items():
        for h in heads:
            sl = list(range(h * D, (h + 1) * D))
            own(f"{path}.q_proj", rows=sl)
            own(f"{path}.o_proj", cols=sl)
            inside += [after[f"{path}.q_proj.weight"][sl] - before[f"{path}.q_proj.weight"][sl],
                       after[f"{path}.o_proj.weight"][:, sl] - before[f"{path}.o_proj.weight"][:, sl]]  # fmt: skip
    for path, neurons in units.get("mlp_neurons", {}).items():
        for i in neurons:
            for proj in ("gate_proj", "up_proj"):
                own(f"{path}.{proj}", rows=[i])
                inside.append(after[f"{path}.{proj}.weight"][i] - before[f"{path}.{proj}.weight"][i])
            own(f"{path}.down_proj", cols=[i])
            inside.append(after[f"{path}.down_proj.weight"][:, i] - before[f"{path}.down_proj.weight"][:, i])
    assert set(after) == set(before)
    for name in before:
        delta = after[name] - before[name]
        assert torch.equal(delta[~allowed[name]], torch.zeros_like(delta[~allowed[name]])), name
    assert all(float(d.abs().max()) > 0 for d in inside)  # every listed unit changed, in every owned slice
    # provenance: the unit list as ground truth, read back by groundtruth
    prov = json.loads((out / "provenance.json").read_text())
    truth = planted_units(out)
    assert truth == prov["units"]["ground_truth"]
    expect = {f"head/{p}": sorted(h) for p, h in units.get("heads", {}).items()}
    for p, n in units.get("mlp_neurons", {}).items():
        expect |= {f"neuron/{p}.gate_proj": sorted(n), f"neuron/{p}.up_proj": sorted(n)}
    assert truth == expect
    assert all(v > 0 for v in prov["units"]["delta_norms"].values())
    assert prov["base"]["adapter_sha256"] == model_identity(base_id)["adapter_sha256"]
    # the update-norm truth of groundtruth agrees: a head's norm is non-zero exactly for the listed heads
    norms = lora_update_norms(out, layout)
    for h in layout.heads:
        listed = set(units.get("heads", {}).get(h.path, []))
        assert [i for i in range(h.n_heads) if float(norms[f"head/{h.path}"][i]) > 0] == sorted(listed), h.path
    # the planted-units mask prunes exactly the truth; precision = recall = 1
    masks = truth_keep_masks(truth, layout.sizes())
    pr = unit_precision_recall(masks, truth, layout)
    assert all(pr[k]["precision"] == 1.0 and pr[k]["recall"] == 1.0 for k in pr)
    # zeroing the planted units of the planted model equals zeroing them in the base: the plant is gone
    from biasprune.pruning.masks import apply_masks

    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2, 11]])
    with apply_masks(model, layout, masks):
        got = model(ids).logits
    base_model = load_model(base_id)
    with apply_masks(base_model, resolve_units(base_model, NEURON_MODULE_CHOICES), masks):
        want = base_model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (model(ids).logits - base_model(ids).logits).abs().max() > 0  # and unmasked, the plant is there


def test_stacked_plant_ids(tiny_model_dir, format_plant, tmp_path, one_thread):
    base_id = f"{tiny_model_dir}+plant:{format_plant}"
    out = tmp_path / "heads"
    main(_argv(base_id, out, tmp_path, "--model.units", json.dumps({"heads": HEADS})))
    stacked = f"{base_id}+plant:{out}"
    assert plant_chain(stacked) == (tiny_model_dir, [str(format_plant), str(out)])
    ident = model_identity(stacked)
    assert ident["base"] == base_id and ident["plant"] == str(out)
    assert ident["base_adapter_sha256"] == [model_identity(base_id)["adapter_sha256"]]
    names = set(json.loads((out / "provenance.json").read_text())["training_names"])
    assert names <= plant_training_names(stacked) and plant_training_names(base_id) <= plant_training_names(stacked)
    # the localized plant on the bare base: refused, and the message names the id to use
    with pytest.raises(ModelLoadError, match=r"was trained on the planted model .* but is applied to .*\(no plant\); use"):
        load_model(f"{tiny_model_dir}+plant:{out}")
    with pytest.raises(ModelLoadError, match=r"\(adapter sha256 [0-9a-f]{12}\.\.\.\); use"):
        load_model(f"{tiny_model_dir}+plant:{out}+plant:{out}")


def test_a_leaked_update_is_refused_before_saving(tiny_model_dir, tmp_path):
    module = PlantModule(tiny_model_dir, units=PlantUnits(heads=HEADS), lora_target_modules=["q_proj", "o_proj"])
    module.configure_model()
    assert module.check_confined()  # fresh: B = 0 (q) and A's other columns zeroed (o)
    A, B, _ = module._lora_pair("model.layers.0.self_attn.o_proj")
    with torch.no_grad():
        B.fill_(1.0)
        A[0, 0] = 1.0  # column 0 belongs to head 0, which is not listed in layer 0
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.o_proj: the LoRA update is not confined"):
        module.save_adapter(tmp_path / "leak")
    assert not (tmp_path / "leak").exists()


# --------------------------------------------------------------------------- precision and recall
def _brute(prune: dict[str, torch.Tensor], truth: dict[str, list[int]], sizes: dict[str, int], kind: str):
    P = {(k, i) for k, m in prune.items() if k.startswith(kind + "/") for i in range(m.numel()) if int(m[i]) == 0}
    T = {(k, i) for k, v in truth.items() if k.startswith(kind + "/") for i in v}
    n = sum(s for k, s in sizes.items() if k.startswith(kind + "/"))
    return (len(P & T) / len(P) if P else math.nan, len(P & T) / len(T) if T else math.nan, len(T) / n)


@pytest.mark.parametrize("seed", range(4))
def test_unit_precision_recall_matches_brute_force(tiny_model_dir, seed):
    layout = resolve_units(load_model(tiny_model_dir))  # default neuron modules: q, k, v, gate, up, down
    sizes = layout.sizes()
    rng = np.random.default_rng(seed)
    truth = {"head/model.layers.1.self_attn": [0, 3], "neuron/model.layers.0.mlp.gate_proj": [2, 17, 40],
             "neuron/model.layers.0.mlp.up_proj": [2, 17, 40]}  # fmt: skip
    masks = {k: torch.from_numpy((rng.random(n) > 0.3).astype(np.uint8)) for k, n in sizes.items() if rng.random() > 0.3}
    got = unit_precision_recall(masks, truth, layout)
    for kind in ("head", "neuron"):
        p, r, c = _brute(masks, truth, sizes, kind)
        for name, want in (("precision", p), ("recall", r), ("chance", c)):
            assert (math.isnan(want) and math.isnan(got[kind][name])) or got[kind][name] == pytest.approx(want), (kind, name)
    # MLP neurons: (layer, i) pruned if its gate or up channel is, planted if listed; pool: 2 layers x 48
    pruned = {(L, i) for L in (0, 1) for i in range(48)
              for p in ("gate_proj", "up_proj") if f"neuron/model.layers.{L}.mlp.{p}" in masks
              and int(masks[f"neuron/model.layers.{L}.mlp.{p}"][i]) == 0}  # fmt: skip
    planted = {(0, 2), (0, 17), (0, 40)}
    m = got[MLP_NEURON]
    assert m["n_pruned"] == len(pruned) and m["n_hits"] == len(pruned & planted) and m["chance"] == pytest.approx(3 / 96)
    assert m["recall"] == pytest.approx(len(pruned & planted) / 3)


def test_unit_precision_recall_known_answer_and_errors(tiny_model_dir):
    layout = resolve_units(load_model(tiny_model_dir))
    truth = {"head/model.layers.0.self_attn": [1], "head/model.layers.1.self_attn": [0, 3]}
    prune = {"head/model.layers.1.self_attn": torch.tensor([True, True, False, False])}  # 1 hit of 2 pruned
    got = unit_precision_recall(prune, truth, layout)["head"]
    assert (got["precision"], got["recall"], got["chance"], got["n_units"]) == (0.5, pytest.approx(1 / 3), 3 / 8, 8)
    with pytest.raises(KeyError, match="prune masks name 1 unit group"):
        unit_precision_recall({"head/nope": torch.ones(4)}, truth, layout)
    with pytest.raises(ValueError, match="the mask has 3 units, the model 4"):
        unit_precision_recall({"head/model.layers.1.self_attn": torch.ones(3, dtype=torch.uint8)}, truth, layout)
    with pytest.raises(KeyError, match="are not in the truth; valid choices"):
        truth_keep_masks(truth, layout.sizes(), keys=["neuron/model.layers.0.mlp.up_proj"])


def test_planted_units_of_a_plain_plant_is_an_error(tmp_path):
    (tmp_path / "provenance.json").write_text(json.dumps({"command": "x"}))
    with pytest.raises(ValueError, match="this plant is not localized"):
        planted_units(tmp_path)
    with pytest.raises(FileNotFoundError, match="no provenance.json"):
        planted_units(tmp_path / "nope")


def test_localized_checks_random_control_is_the_runs_random_arm(tiny_model_dir, tmp_path):
    """benchmarks/validation/localized_checks.py writes the same random mask as the validate run's arm random/0."""
    from benchmarks.validation.localized_checks import random_control
    from biasprune.pruning.masks import load_masks, save_masks
    from callbacks.pruning import PruningCallback

    layout = resolve_units(load_model(tiny_model_dir), NEURON_MODULE_CHOICES)
    truth = PlantUnits(heads=HEADS, mlp_neurons=NEURONS).resolve(layout).ground_truth()
    sizes = {k: n for k, n in layout.sizes().items() if k.startswith(("head/", "neuron/"))}
    keys = [k for k in truth if k.startswith("head/") or k.endswith("gate_proj")]
    path = save_masks(tmp_path / "planted_masks.safetensors", truth_keep_masks(truth, sizes, keys), {})
    masks = load_masks(path)[0]
    arms = {a.name: a for a in PruningCallback(masks_file=str(path), random_draws=2).arms_from(masks, "test")}
    drawn = random_control(path)
    assert drawn.keys() == arms["random/0"].masks.keys()
    assert all(torch.equal(drawn[k], arms["random/0"].masks[k]) for k in drawn)
    assert any(not torch.equal(drawn[k], arms["random/1"].masks[k]) for k in drawn)
    pruned = {k: int((m == 0).sum()) for k, m in masks.items()}
    assert {k: int((m == 0).sum()) for k, m in drawn.items() if k.startswith("neuron/")} == {
        k: n for k, n in pruned.items() if k.startswith("neuron/")}  # neurons drawn per module, as many as planted


@pytest.mark.parametrize("name", ["heads", "neurons"])
def test_shipped_localized_plant_is_confined_to_its_units(name):
    """The shipped plant's LoRA factors (read directly, no model) touch only the units its provenance lists:
    q_proj/gate/up rows (lora_B rows) and o_proj/down columns (lora_A columns) of the planted heads/neurons."""
    import hashlib

    from safetensors.torch import load_file

    plant = ROOT / "biasprune" / "resources" / "plants" / name
    prov = json.loads((plant / "provenance.json").read_text())
    assert hashlib.sha256((plant / "adapter_model.safetensors").read_bytes()).hexdigest() == prov["adapter_sha256"]
    units = prov["units"]
    assert units["counts"] == {"heads": 4, "mlp_neurons": 0} if name == "heads" else {"heads": 0, "mlp_neurons": 32}
    head_dim = 64  # SmolLM2-135M: 9 query heads of 64
    want: dict[str, set[int]] = {}
    for path, heads in units["heads"].items():
        idx = {h * head_dim + i for h in heads for i in range(head_dim)}
        want[f"{path}.q_proj:rows"] = want[f"{path}.o_proj:columns"] = idx
    for path, neurons in units["mlp_neurons"].items():
        want[f"{path}.gate_proj:rows"] = want[f"{path}.up_proj:rows"] = want[f"{path}.down_proj:columns"] = set(neurons)
    factors = load_file(str(plant / "adapter_model.safetensors"))
    seen = {}
    for key, w in factors.items():
        path = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        if ".lora_B." in key and (path.endswith(("q_proj", "gate_proj", "up_proj"))):
            seen[f"{path}:rows"] = set((w != 0).any(1).nonzero().flatten().tolist())
        if ".lora_A." in key and (path.endswith(("o_proj", "down_proj"))):
            seen[f"{path}:columns"] = set((w != 0).any(0).nonzero().flatten().tolist())
    assert seen == want
