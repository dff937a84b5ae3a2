"""The mechanism of pruned heads: name attention against the model's own ``output_attentions``, computed sequence by
sequence; the switch to eager attention and back; the artifact, its TensorBoard scalars and the report's section."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import tiny_model

from biasprune.callbacks.mechanism import COLUMNS, head_rows, spread, write_name_attention
from biasprune.localize.attention import name_attention, name_span
from biasprune.localize.pairs import NamePair
from biasprune.models.architectures import resolve_units


def disjoint_pairs(n: int, seed: int = 0) -> tuple[list[NamePair], list[tuple[int, int, int, int]]]:
    """Pairs whose names come from token ranges of their own (prefix/suffix 1-39, target names 40-59, reference
    names 60-79), so the name span is known by construction; with each pair (prefix, len name t, len name r, ...)."""
    g = torch.Generator().manual_seed(seed)

    def toks(k: int, lo: int, hi: int) -> tuple[int, ...]:
        return tuple(torch.randint(lo, hi, (k,), generator=g).tolist())

    pairs, spans = [], []
    for _ in range(n):
        pre, post = toks(int(torch.randint(2, 5, (1,), generator=g)), 1, 40), toks(int(torch.randint(2, 6, (1,), generator=g)), 1, 40)
        nt, nr = toks(int(torch.randint(1, 4, (1,), generator=g)), 40, 60), toks(int(torch.randint(1, 4, (1,), generator=g)), 60, 80)
        pairs.append(NamePair(pre + nt + post, pre + nr + post, toks(3, 80, 96), toks(int(torch.randint(1, 3, (1,), generator=g)), 80, 96)))
        spans.append((len(pre), len(nt), len(nr), len(post)))
    return pairs, spans


def direct(model, pairs, spans) -> dict[int, torch.Tensor]:
    """Per layer ``[2P, n_heads]``: each sequence run alone with ``output_attentions=True``; the answer positions'
    attention summed over the name's tokens and averaged over those positions, by explicit loops."""
    out: dict[int, list[list[float]]] = {}
    for p, (pre, nt, nr, _) in zip(pairs, spans):
        for prompt, answer, n_name in ((p.target, p.target_answer, nt), (p.reference, p.reference_answer, nr)):
            ids = torch.tensor([prompt + answer])
            att = model(ids, output_attentions=True).attentions
            queries = range(len(prompt) - 1, len(prompt) + len(answer) - 1)
            for layer, a in enumerate(att):
                out.setdefault(layer, []).append([
                    sum(sum(float(a[0, h, q, k]) for k in range(pre, pre + n_name)) for q in queries) / len(queries)
                    for h in range(a.shape[1])])  # fmt: skip
    return {layer: torch.tensor(v, dtype=torch.float64) for layer, v in out.items()}


def test_name_span_is_the_part_that_differs():
    assert name_span((1, 2, 7, 8, 3, 4), (1, 2, 9, 3, 4)) == (2, 4)
    assert name_span((1, 2, 9, 3, 4), (1, 2, 7, 8, 3, 4)) == (2, 3)
    with pytest.raises(ValueError, match="differ in no token"):
        name_span((1, 2, 3), (1, 2, 3))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_name_attention_equals_output_attentions_sequence_by_sequence(arch):
    model = tiny_model(arch, dtype=torch.float64, seed=3)
    layout = resolve_units(model)
    pairs, spans = disjoint_pairs(5, seed=1)
    got = name_attention(model, layout, pairs, batch_size=3)  # padded batches that split a pair
    want = direct(model, pairs, spans)
    assert len(got) == len(layout.heads) == len(want)
    for h in layout.heads:
        v = got[f"head/{h.path}"]
        assert v.shape == (10, h.n_heads) and bool((v > 0).all()) and bool((v <= 1).all())
        torch.testing.assert_close(v, want[h.layer], rtol=1e-10, atol=1e-12)


def test_a_fused_kernel_model_is_measured_in_eager_mode_and_restored():
    eager = tiny_model("llama", dtype=torch.float32, seed=5)
    fused = tiny_model("llama", dtype=torch.float32, seed=5)
    fused.set_attn_implementation("sdpa")
    pairs, spans = disjoint_pairs(3, seed=2)
    got = name_attention(fused, resolve_units(fused), pairs)
    assert fused.config._attn_implementation == "sdpa"
    want = direct(eager, pairs, spans)
    for h in resolve_units(fused).heads:
        torch.testing.assert_close(got[f"head/{h.path}"], want[h.layer], rtol=1e-5, atol=1e-6)


def test_head_rows_rank_all_heads_and_mark_the_pruned_ones():
    model = tiny_model("llama", dtype=torch.float64)
    layout = resolve_units(model)
    keys = [f"head/{h.path}" for h in layout.heads]
    values = {keys[0]: torch.tensor([[0.1, 0.5, 0.2, 0.0], [0.3, 0.5, 0.2, 0.2]], dtype=torch.float64),
              keys[1]: torch.tensor([[0.9, 0.0, 0.4, 0.1], [0.7, 0.2, 0.4, 0.1]], dtype=torch.float64)}
    masks = {keys[1]: torch.tensor([0, 1, 1, 0], dtype=torch.uint8)}  # layer 0 has no mask: all kept
    rows = head_rows(values, layout, masks)
    assert [r["pruned"] for r in rows] == [0, 0, 0, 0, 1, 0, 0, 1]
    assert [r["rank"] for r in rows] == [4, 2, 5, 6, 1, 7, 3, 8]  # means .2 .5 .2 .1 .8 .1 .4 .1: ties keep order
    assert rows[1]["name_attention"] == pytest.approx(0.5) and rows[0]["sd"] == pytest.approx(0.1414213562, rel=1e-8)
    assert {r["layer"] for r in rows[4:]} == {layout.heads[1].layer} and set(rows[0]) == set(COLUMNS)
    assert spread(list(range(10)), 4) == [0, 2, 5, 7] and spread([1, 2], 4) == [1, 2]


def test_the_artifact_the_scalars_and_the_report(tiny_model_dir, tmp_path):
    """From scoring examples (chat-rendered prompts, responses, pair ids) to ``name_attention.csv``, the same
    numbers as name_attention on those pairs; TensorBoard gets the scalars; the report draws the section."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from biasprune.report.load import RunArtifacts
    from biasprune.report.pruned import mechanism_section

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64, attn_implementation="sdpa").eval()
    layout = resolve_units(model)
    examples = []
    for i, (w, b) in enumerate([("Greg Becker", "Jamal Washington"), ("Anne Walsh", "Latoya Jackson"), ("Jay Baker", "Tyrone Banks")]):
        for name, group, response in ((w, "white", "$ 120"), (b, "black", "$ 95")):
            prompt = tok.apply_chat_template([{"role": "user", "content": f"I am {name}. What should I pay for a car?"}],
                                             tokenize=False, add_generation_prompt=True)
            examples.append({"name": name, "group": group, "pair_id": f"p{i}", "scenario": "purchase", "variation": "car",
                             "prompt": prompt, "response": response})  # fmt: skip
    masks = {f"head/{layout.heads[1].path}": torch.tensor([1, 0, 1, 1], dtype=torch.uint8)}
    writer = SummaryWriter(str(tmp_path / "tb"))
    rows = write_name_attention(tmp_path, model, layout, tok, examples, ["purchase/car"], ("white", "black"), masks, 2, writer)
    writer.close()
    with open(tmp_path / "name_attention.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    assert len(written) == len(rows) == sum(h.n_heads for h in layout.heads) and list(written[0]) == list(COLUMNS)
    assert [int(r["pruned"]) for r in written] == [0] * 4 + [0, 1, 0, 0] and {int(r["n_sequences"]) for r in written} == {4}
    # the same two pairs measured directly (the pairs spread over the three: the 1st and the 2nd in length order)
    def ids(text: str) -> tuple[int, ...]:
        return tuple(tok(text, add_special_tokens=False)["input_ids"])

    # target group black (the data's second group), its twin white
    pairs = [NamePair(ids(examples[2 * i + 1]["prompt"]), ids(examples[2 * i]["prompt"]), ids("$ 95"), ids("$ 120")) for i in range(3)]
    order = sorted(range(3), key=lambda i: len(pairs[i].target) + len(pairs[i].target_answer))  # stable, as pair_items
    want = name_attention(model, layout, [pairs[order[0]], pairs[order[1]]])
    got = torch.tensor([float(r["name_attention"]) for r in written], dtype=torch.float64)
    torch.testing.assert_close(got, torch.cat([want[f"head/{h.path}"].mean(0) for h in layout.heads]), rtol=1e-9, atol=1e-12)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"mechanism/name_attention_all_heads", "mechanism/name_attention_pruned_heads"} <= set(acc.Tags()["scalars"])
    pruned_mean = acc.Scalars("mechanism/name_attention_pruned_heads")[0].value
    assert pruned_mean == pytest.approx(float(written[5]["name_attention"]), rel=1e-6)
    html, figs = mechanism_section(RunArtifacts(tmp_path, "fit", {}, [], [], []))
    assert [f[0] for f in figs] == ["name_attention"] and figs[0][2].startswith(b"\x89PNG")
    assert "over the 1 pruned heads" in html and f"{written[5]['rank']} of 8" in html


def test_a_fit_that_prunes_heads_writes_the_artifact_and_the_report_shows_it(tiny_model_dir, tmp_path):
    """``fit`` then ``validate`` in one run (what ``biasprune fit`` does), 2 heads pruned: name_attention.csv marks
    exactly the masks' pruned heads, and the report's "What was pruned" carries the mechanism figure."""
    from lightning import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from biasprune.answers.answering import TargetConfig
    from biasprune.answers.generation import GenerationConfig
    from biasprune.callbacks import PruningCallback
    from biasprune.datamodules import AuditDataModule
    from biasprune.pipeline.module import BiasPruneModule
    from biasprune.pruning.masks import load_masks
    from biasprune.report.load import RunArtifacts
    from biasprune.report.pruned import pruned_section
    from biasprune.stats.rows import EvaluationConfig

    module = BiasPruneModule(tiny_model_dir, dtype="float64", targets=TargetConfig(max_new_tokens=4),
                             generation=GenerationConfig(samples=1, max_new_tokens=4),
                             evaluation=EvaluationConfig(bootstrap_samples=20, permutation_samples=20))  # fmt: skip
    dm = AuditDataModule(scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=tiny_model_dir, batch_size=8, eval_batch_size=16)
    t = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="run"), enable_progress_bar=False,
                enable_model_summary=False, callbacks=[PruningCallback(units="heads", head_budget=2, random_draws=0, mechanism_pairs=3)])
    t.fit(module, datamodule=dm)
    t.validate(module, datamodule=dm)
    run = tmp_path / "run" / "version_0"
    masks, _ = load_masks(run / "masks.safetensors")
    with open(run / "name_attention.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = sorted((k, i) for k, m in masks.items() for i in (m == 0).nonzero().flatten().tolist())
    assert len(want) == 2 and sorted((r["key"], int(r["head"])) for r in rows if r["pruned"] == "1") == want
    assert {r["n_sequences"] for r in rows} == {"6"} and len(rows) == sum(m.numel() for k, m in masks.items() if k.startswith("head/"))
    html, figs = pruned_section(RunArtifacts(run, "fit", {}, [], [], []), {})  # the report's section (a CLI run adds the manifest)
    assert "name_attention" in [f[0] for f in figs] and "do the pruned heads attend to the name?" in html
