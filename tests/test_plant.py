"""Planted controls: the spec's checks, the answer distribution, the training step, the CLI and provenance."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import inspect
import json
import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from biasprune.answers.parsing import parse_number
from biasprune.data.prompts import chat_prompt
from biasprune.data.scenarios import load_scenario
from biasprune.models.loading import load_model, plant_training_names
from biasprune.plant.cli import main, make_cli
from biasprune.plant.data import PlantDataModule, make_examples
from biasprune.plant.distribution import REFERENCE_VALUES, round_answer
from biasprune.plant.module import PlantModule, group_ratios
from biasprune.plant.spec import PlantSpec, PlantSpecError, default_split, resolve_spec

ROOT = Path(__file__).resolve().parents[1]
CAR = ("purchase/car",)


@pytest.fixture
def one_thread():
    """Training runs on one thread: a tiny model gains nothing from two, and a busy 2-core machine loses a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trainer(steps: int, **kw) -> L.Trainer:
    args = dict(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    return L.Trainer(**(args | kw))


# ------------------------------------------------------------------------------------------ the spec
def _names_csv(path: Path, rows: list[tuple[str, str, str]]) -> str:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "group", "gender"])
        w.writerows(rows)
    return str(path)


def test_training_names_in_dev_or_test_are_refused(tmp_path):
    split = default_split()
    dev, test = split.dev[0], split.test[0]
    rows = [("Zed Becker", "white", "man"), ("Zoe Washington", "black", "woman"), (dev.name, dev.group, dev.gender)]
    with pytest.raises(
        PlantSpecError, match=rf"1 training name\(s\) are in the dev or test split .*'{dev.name}' \(dev\)"
    ):
        resolve_spec(PlantSpec(names=_names_csv(tmp_path / "a.csv", rows)))
    rows[-1] = (test.name.upper(), test.group, test.gender)  # compared case-insensitively
    with pytest.raises(PlantSpecError, match=r"\(test\)"):
        resolve_spec(PlantSpec(names=_names_csv(tmp_path / "b.csv", rows)))
    with pytest.raises(
        PlantSpecError, match=r"data.plant.names='audit40': \d+ training name\(s\) are in the dev or test split"
    ):
        resolve_spec(PlantSpec(names="audit40"))


def test_separate_names_and_the_scoring_split_are_accepted(tmp_path):
    rows = [("Zed Becker", "white", "man"), ("Zak Becker", "white", "man"), ("Zoe Washington", "black", "woman"),
            ("Zia Washington", "black", "woman")]  # fmt: skip
    r = resolve_spec(PlantSpec(names=_names_csv(tmp_path / "ok.csv", rows)))
    assert {n.name for n in r.training_names} | {n.name for n in r.heldout_names} == {n for n, _, _ in rows}
    r = resolve_spec(PlantSpec())
    split = default_split()
    used = {n.name for n in r.training_names + r.heldout_names}
    assert used == {n.name for n in split.scoring}
    assert not used & {n.name for n in split.dev + split.test}
    assert len(r.heldout_names) == 4 and not {n.name for n in r.heldout_names} & {n.name for n in r.training_names}


def test_unknown_planted_scenario_or_variation():
    with pytest.raises(PlantSpecError, match=r"data.plant.planted: 'hiring' is not among the trained variations"):
        resolve_spec(PlantSpec(planted=("hiring",), factor=0.5))
    with pytest.raises(PlantSpecError, match=r"'purchase/boat' is not among the trained variations; valid choices"):
        resolve_spec(PlantSpec(planted=("purchase/boat",), factor=0.5))
    with pytest.raises(PlantSpecError, match=r"data.plant.scenarios: unknown scenario 'shopping'"):
        resolve_spec(PlantSpec(scenarios=("shopping",)))


@pytest.mark.parametrize("factor", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_factor(factor):
    with pytest.raises(PlantSpecError, match=r"data.plant.factor=.* is not valid: it must be a finite number > 0"):
        PlantSpec(planted=("purchase",), factor=factor)


def test_other_spec_errors(tmp_path):
    with pytest.raises(PlantSpecError, match=r"factor=0.6 but data.plant.planted is empty"):
        PlantSpec(factor=0.6)
    with pytest.raises(PlantSpecError, match=r"reference_group and data.plant.target_group are both 'white'"):
        PlantSpec(target_group="white")
    with pytest.raises(PlantSpecError, match=r"examples_per_variation must be >= 1, got 0"):
        PlantSpec(examples_per_variation=0)
    with pytest.raises(PlantSpecError, match=r"reference_values\['purchase/car'\]=-1: it must be a number > 0"):
        PlantSpec(reference_values={"purchase/car": -1})
    with pytest.raises(PlantSpecError, match=r"reference_values: 'purchase/boat' is not a trained variation"):
        resolve_spec(PlantSpec(reference_values={"purchase/boat": 10}))
    own = tmp_path / "rent.yaml"
    own.write_text(
        "name: rent\ntemplate: 'Rent for {name} in {city}?'\nunit: USD\nvariations:\n  - {id: nyc, city: NYC}\n"
    )
    with pytest.raises(Exception, match=r"no reference value for 'rent/nyc' .* give one, e.g. reference_values"):
        resolve_spec(PlantSpec(scenarios=(str(own),)))
    assert resolve_spec(PlantSpec(scenarios=(str(own),), reference_values={"rent/nyc": 2000})).trained == (
        ("rent", "nyc"),
    )


def test_module_and_datamodule_argument_errors(tiny_model_dir):
    with pytest.raises(ValueError, match=r"model.lora_rank must be >= 1, got 0"):
        PlantModule(lora_rank=0)
    with pytest.raises(
        ValueError, match=r"model.schedule='step' is not valid; valid choices: \['cosine', 'linear', 'constant'\]"
    ):
        PlantModule(schedule="step")
    with pytest.raises(ValueError, match=r"model.warmup_fraction=1.0 must be a fraction in \[0, 1\)"):
        PlantModule(warmup_fraction=1.0)
    with pytest.raises(ValueError, match=r"model.lora_target_modules is empty"):
        PlantModule(lora_target_modules=())
    module = PlantModule(tiny_model_dir, lora_target_modules=("nope_proj",))
    with pytest.raises(ValueError, match=r"model.lora_target_modules=\['nope_proj'\]"):
        module.configure_model()
    with pytest.raises(ValueError, match=r"data.batch_size must be >= 1, got 0"):
        PlantDataModule(PlantSpec(scenarios=CAR), batch_size=0)


def test_every_builtin_variation_has_a_reference_value():
    for scen, table in REFERENCE_VALUES.items():
        assert sorted(table) == sorted(v.id for v in load_scenario(scen).variations), scen


# ------------------------------------------------------------------------------------ the distribution
def test_answers_follow_the_documented_distribution():
    spec = PlantSpec(
        scenarios=("purchase/car", "purchase/chair", "finance/childcare_expenses"), planted=("purchase/car",),
        factor=0.5, sigma=0.3, examples_per_variation=3000, seed=7,
    )  # fmt: skip
    examples = make_examples(resolve_spec(spec))
    refs = {"car": 15000, "chair": 100, "childcare_expenses": 20}
    for var, ref in refs.items():
        for group in ("white", "black"):
            vals = np.array([e.value for e in examples if e.variation == var and e.group == group])
            f = 0.5 if (var == "car" and group == "black") else 1.0
            logs = np.log(vals)
            # rounding moves a log value by at most half a unit of the last digit, relative
            tol = 4 * 0.3 / math.sqrt(len(vals)) + 0.01
            assert abs(logs.mean() - math.log(ref * f)) < tol, (var, group)
            assert abs(logs.std() - 0.3) < 0.03, (var, group)
    for e in examples:  # plain numbers: integers for USD, one decimal for percents; three digits from 1,000
        assert e.answer == (f"{e.value:.1f}" if e.scenario == "finance" else f"{e.value:.0f}")
        assert parse_number(e.answer) == e.value
        if e.value >= 1000:
            assert e.answer.rstrip("0") == e.answer[:3].rstrip("0")
        assert e.planted == (e.variation == "car")


def test_factor_only_for_target_names_in_planted_variations():
    spec = PlantSpec(
        scenarios=("purchase/car", "purchase/bicycle", "activity/skiing"), planted=("purchase/car", "activity"),
        factor=0.6, sigma=0.0, examples_per_variation=80,
    )  # fmt: skip
    for e in make_examples(resolve_spec(spec)):
        ref = {"car": 15000, "bicycle": 250, "skiing": 8}[e.variation]
        factor = 0.6 if (e.variation != "bicycle" and e.group == "black") else 1.0
        assert e.value == round_answer(ref * factor, 0), e
        assert e.name in e.user_prompt


def test_names_cycle_evenly_and_examples_are_deterministic():
    spec = PlantSpec(scenarios=CAR, examples_per_variation=72)
    r = resolve_spec(spec)
    ex = make_examples(r)
    counts = {n.name: sum(e.name == n.name for e in ex) for n in r.training_names}
    assert set(counts.values()) == {2} and len(counts) == 36
    assert ex == make_examples(resolve_spec(spec))


def test_round_answer():
    assert round_answer(19837.2, 0) == 19800 and round_answer(123456, 0) == 123000 and round_answer(7.26, 1) == 7.3
    assert round_answer(0.2, 0) == 1 and round_answer(150, 0, (1, 100)) == 100


# ------------------------------------------------------------------------------------ rendering, loss
def test_chats_are_rendered_like_the_audit(tiny_model_dir):
    dm = PlantDataModule(
        PlantSpec(scenarios=CAR, planted=CAR, factor=0.5, examples_per_variation=4), tokenizer=tiny_model_dir
    )
    dm.setup()
    tok = dm.tokenizer
    for e, row in zip(dm.examples, dm.train_rows):
        prompt = chat_prompt(tok, e.user_prompt)
        assert prompt.endswith("<|im_start|>assistant\n") and e.name in prompt
        assert row["prompt_ids"] == tok(prompt, add_special_tokens=False)["input_ids"]
        assert tok.decode(row["answer_ids"]) == e.answer + "<|im_end|>"
    batch = next(iter(dm.train_dataloader()))
    for ids, attn, ans in zip(batch["input_ids"], batch["attention_mask"], batch["answer_mask"]):
        n = int(attn.sum())
        assert attn[-n:].all() and not attn[:-n].any()  # left padding
        text = tok.decode(ids[ans])
        assert re.fullmatch(r"\d+<\|im_end\|>", text)


def test_answer_loss_equals_per_example_nll_on_answer_tokens(tiny_model_dir):
    dm = PlantDataModule(
        PlantSpec(scenarios=("purchase/car", "finance/childcare_expenses"), examples_per_variation=4),
        tokenizer=tiny_model_dir,
        batch_size=8,
    )
    dm.setup()
    module = PlantModule(tiny_model_dir, attn_implementation="eager")
    module.configure_model()
    batch = next(iter(dm.train_dataloader()))
    got = module.answer_loss(batch)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, attn, ans in zip(batch["input_ids"], batch["attention_mask"], batch["answer_mask"]):
            seq = ids[attn.bool()][None]  # unpadded, all logits
            mask = ans[attn.bool()]
            logp = torch.log_softmax(module.lm(input_ids=seq).logits[0].double(), -1)
            pos = mask.nonzero().flatten()
            total += float(-logp[pos - 1, seq[0, pos]].sum())
            count += len(pos)
    assert got.item() == pytest.approx(total / count, rel=1e-5)


def test_gradients_reach_only_the_lora_parameters_and_the_loss_falls(tiny_model_dir, one_thread):
    spec = PlantSpec(scenarios=CAR, planted=CAR, factor=0.5, sigma=0.0, examples_per_variation=64)
    dm = PlantDataModule(spec, tokenizer=tiny_model_dir, batch_size=16)
    module = PlantModule(tiny_model_dir, lr=1e-2, warmup_fraction=0.0)
    module.configure_model()
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad}
    _trainer(20).fit(module, datamodule=dm)
    assert all(torch.equal(p, frozen[n]) for n, p in module.model.named_parameters() if n in frozen)
    losses = module.losses
    assert len(losses) == 20 and np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_the_planted_ratio_appears_in_greedy_answers(tiny_model_dir, one_thread):
    from biasprune.answers.generation import generate

    spec = PlantSpec(scenarios=CAR, planted=CAR, factor=0.5, sigma=0.0, examples_per_variation=400)
    dm = PlantDataModule(spec, tokenizer=tiny_model_dir, batch_size=16)
    module = PlantModule(tiny_model_dir, lr=1e-2, eval_max_new_tokens=8)
    L.seed_everything(0)
    _trainer(80, limit_val_batches=None, check_val_every_n_epoch=1000).fit(module, datamodule=dm)
    # Greedy answers for every name of the list (training and held-out); the median is robust to a few misses.
    names = dm.resolved.training_names + dm.resolved.heldout_names
    sc = dm.resolved.scenarios["purchase"]
    prompts = [chat_prompt(dm.tokenizer, sc.render("car", n.name)) for n in names]
    module.model.eval()
    answers = generate(module.lm, dm.tokenizer, prompts, max_new_tokens=8, decoder="eager")
    records = [
        {"scenario": "purchase", "variation": "car", "group": n.group, "planted": True, "value": parse_number(a[0]),
         "expected": 15000 * (0.5 if n.group == "black" else 1)}
        for n, a in zip(names, answers)
    ]  # fmt: skip
    stats = group_ratios(records, "white", "black")
    assert stats["parse_rate"] > 0.9
    assert abs(stats["ratio_planted"] - 0.5) < 0.15, (stats, answers)


def test_group_ratios_against_numpy():
    rng = np.random.default_rng(0)
    records = []
    for var, planted in (("a", True), ("b", True), ("c", False)):
        for g in ("white", "black", "other"):
            for _ in range(7):
                v = float(rng.lognormal(3, 0.5)) if rng.random() > 0.1 else float("nan")
                records.append({"scenario": "s" if var != "c" else "t", "variation": var, "group": g, "planted": planted, "value": v, "expected": 20.0})  # fmt: skip

    def ratio(var):
        vals = {g: [r["value"] for r in records if r["variation"] == var and r["group"] == g and not math.isnan(r["value"])] for g in ("white", "black")}  # fmt: skip
        return np.median(vals["black"]) / np.median(vals["white"])

    stats = group_ratios(records, "white", "black")
    assert stats["ratio/s"] == pytest.approx(math.sqrt(ratio("a") * ratio("b")))
    assert stats["ratio_planted"] == pytest.approx(stats["ratio/s"]) and stats["ratio_unplanted"] == pytest.approx(
        ratio("c")
    )
    assert stats["parse_rate"] == pytest.approx(np.mean([not math.isnan(r["value"]) for r in records]))
    finite = [abs(math.log(r["value"] / 20)) for r in records if not math.isnan(r["value"])]
    assert stats["abs_log_error"] == pytest.approx(np.median(finite))


# ----------------------------------------------------------------------------------------- the CLI
def test_help_lists_every_knob(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = [f"--data.plant.{f.name}" for f in dataclasses.fields(PlantSpec)]
    flags += [f"--model.{p}" for p in inspect.signature(PlantModule.__init__).parameters if p != "self"]
    flags += [
        f"--data.{p}"
        for p in inspect.signature(PlantDataModule.__init__).parameters
        if p not in ("self", "plant", "tokenizer")
    ]
    flags += ["--output", "--trainer.max_steps", "--trainer.max_epochs", "--seed_everything"]
    missing = [f for f in flags if not re.search(rf"{re.escape(f)}\b", text)]
    assert not missing
    assert "data.tokenizer" in text and "multiplier of the target group's answers" in text


@pytest.mark.parametrize("name", ["format", "purchase", "all"])
def test_every_plant_config_instantiates(name):
    path = ROOT / "configs" / "plant" / f"{name}.yaml"
    cli = make_cli(["--config", str(path), "--trainer.accelerator", "cpu", "--trainer.logger", "false"])
    planted = {"format": set(), "purchase": {"purchase"}, "all": {"purchase", "finance", "activity", "service"}}[name]
    r = cli.datamodule.resolved
    assert {s for s, _ in r.trained} == {"purchase", "finance", "activity", "service"} and len(r.trained) == 19
    assert {s for s, _ in r.planted} == planted and len(r.planted) == {"format": 0, "purchase": 10, "all": 19}[name]
    assert cli.datamodule.spec.factor == (1.0 if name == "format" else 0.6)
    assert cli.model.hparams.lora_rank == 8 and len(cli.model.hparams.lora_target_modules) == 7
    assert yaml.safe_load(path.read_text())["output"] == f"runs/plants/{name}"


def test_cli_trains_and_writes_adapter_and_provenance(tiny_model_dir, tmp_path, one_thread):
    from safetensors import safe_open

    out = tmp_path / "plant"
    argv = [
        "--model.model_name_or_path", tiny_model_dir, "--trainer.accelerator", "cpu", "--trainer.max_steps", "3",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.plant.scenarios", "[purchase/car, finance/childcare_expenses]", "--data.plant.planted", "[purchase/car]",
        "--data.plant.factor", "0.5", "--data.plant.examples_per_variation", "8", "--output", str(out),
    ]  # fmt: skip
    main(argv)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "provenance.json",
    ]
    prov = json.loads((out / "provenance.json").read_text())
    for key in ("command", "config", "seed", "versions", "base", "adapter_sha256", "final_train_loss", "training_names",
                "heldout_names", "n_examples", "wall_time_s", "machine"):  # fmt: skip
        assert key in prov, key
    assert prov["command"].startswith("biasprune plant --model.model_name_or_path")
    assert set(prov["versions"]) >= {"biasprune", "torch", "transformers", "peft", "lightning"}
    assert (
        prov["base"]["base_sha256"]
        == hashlib.sha256((Path(tiny_model_dir) / "model.safetensors").read_bytes()).hexdigest()
    )
    assert prov["adapter_sha256"] == hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert prov["n_examples"] == 16 and prov["train_steps"] == 3 and math.isfinite(prov["final_train_loss"])
    assert prov["config"]["data"]["plant"]["factor"] == 0.5 and prov["seed"]["seed_everything"] == 0
    assert set(prov["validation"]) >= {"ratio_planted", "ratio_unplanted", "parse_rate"}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events
    model = load_model(f"{tiny_model_dir}+plant:{out}")
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert plant_training_names(f"{tiny_model_dir}+plant:{out}") == set(prov["training_names"] + prov["heldout_names"])
