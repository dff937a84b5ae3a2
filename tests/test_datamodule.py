"""The paired-prompt DataModule: chat template, name splits, user dataset files, a world-size-free batch layout."""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing as mp

from biasprune.data.scenarios import AuditDataError
from biasprune.datamodules import AuditDataModule, ShardedBatches, fixed_batches
from biasprune.datamodules.audit import PromptSelection


@pytest.fixture(scope="module")
def dm(tokenizer_dir):
    d = AuditDataModule(scoring=["purchase/car", "finance"], evaluation=["purchase/car", "purchase/piano"], tokenizer=tokenizer_dir)
    d.setup("fit")
    return d


def test_rows_hold_templated_prompts(dm):
    row = dm.scoring_prompts[0]
    assert set(row) >= {"scenario", "variation", "name", "group", "gender", "pair_id", "prompt", "group_index", "key", "split"}
    assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["name"] in row["prompt"] and row["key"] == f"{row['scenario']}/{row['variation']}/{row['name']}"
    # default names: 50 per group; scoring 40% (20 per group), test 40% (20 per group)
    assert len(dm.scoring_prompts) == 4 * 40 and len(dm.eval_set) == 2 * 40
    assert dm.eval_keys() == [("test", "purchase", "car"), ("test", "purchase", "piano")]
    assert dm.scoring_variations == ["purchase/car", "finance/investments_in_stocks", "finance/private_school_tuition", "finance/childcare_expenses"]
    assert dm.split_counts() == {"scoring": {"white": 20, "black": 20}, "dev": {"white": 10, "black": 10}, "test": {"white": 20, "black": 20}}


def test_splits_are_disjoint_and_configure_prompts_changes_what_is_served(dm, tokenizer_dir):
    names = {s: {n for n, _ in dm.names_by_split[s]} for s in ("scoring", "dev", "test")}
    assert not names["scoring"] & names["dev"] and not names["scoring"] & names["test"] and not names["dev"] & names["test"]
    assert {r["name"] for r in dm.scoring_prompts} == names["scoring"] and {r["name"] for r in dm.eval_set} == names["test"]
    d = AuditDataModule(scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=tokenizer_dir)
    d.configure_prompts(PromptSelection(scoring=("chess",), eval_splits=("dev", "test")))
    assert {r["scenario"] for r in d.scoring_rows} == {"chess"}
    assert [k[0] for k in d.eval_keys()] == ["dev", "test"] and len(d.eval_rows) == 20 + 40


def test_pairs_differ_only_in_the_name(dm):
    by_pair = {}
    for r in dm.eval_set:
        by_pair.setdefault(r["pair_id"], []).append(r)
    assert len(by_pair) == len(dm.eval_set) // 2
    for a, b in by_pair.values():
        assert a["group"] != b["group"]
        assert a["prompt"].replace(a["name"], "X") == b["prompt"].replace(b["name"], "X")


def test_scoring_examples_are_tokenized_separately_and_bucketed(dm):
    examples = [dict(group=r["group"], scenario=r["scenario"], variation=r["variation"], name=r["name"], prompt=r["prompt"], response="$25,000")
                for r in dm.scoring_prompts]
    examples[0]["response"] = "   "
    dm.set_scoring_examples(examples)
    assert sum(dm.n_skipped.values()) == 1
    batch = next(iter(dm.train_dataloader()))
    resp_ids = dm.tokenizer("$25,000", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0][batch["response_mask"][0].bool()].tolist() == resp_ids
    # bucket = variation index x 2 + group index, for every example
    buckets = sorted(r["bucket"] for r in dm.scoring_set)
    expected = sorted(dm.scoring_variations.index(f"{e['scenario']}/{e['variation']}") * 2 + dm.groups.index(e["group"])
                      for e in examples if e["response"].strip())
    assert buckets == expected


def test_user_dataset_file(tmp_path, tokenizer_dir):
    people = [(f"W{i}", "white", "man") for i in range(6)] + [(f"B{i}", "black", "man") for i in range(6)]
    rows = [{"scenario": "rent", "variation": "flat", "name": n, "group": g, "gender": s, "prompt": f"Monthly rent for {n}?"} for n, g, s in people]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = AuditDataModule(dataset_file=str(path), scoring=["rent"], evaluation=["rent/flat"], tokenizer=tokenizer_dir, split_fractions=(0.34, 0.33, 0.33))
    d.setup("validate")
    assert {r["split"] for r in d.eval_set} == {"test"} and len(d.eval_set) == 4
    assert any("Monthly rent for" in r["prompt"] for r in d.eval_set)
    with_split = [dict(r, split="test" if r["name"].endswith("0") else "scoring") for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in with_split))
    d = AuditDataModule(dataset_file=str(path), scoring=["rent"], evaluation=["rent"], tokenizer=tokenizer_dir)
    assert sorted(r["name"] for r in d.eval_rows) == ["B0", "W0"] and len(d.scoring_rows) == 10
    csv = tmp_path / "prompts.csv"
    csv.write_text("scenario,variation,name,prompt\nrent,flat,A,hi\n")
    with pytest.raises(AuditDataError, match=r"missing column\(s\) \['group'\]"):
        AuditDataModule(dataset_file=str(csv), scoring=["rent"], evaluation=["rent"], tokenizer=tokenizer_dir)
    with pytest.raises(AuditDataError, match=r"data.scoring: 'food' matches no rows"):
        AuditDataModule(dataset_file=str(path), scoring=["food"], evaluation=["rent"], tokenizer=tokenizer_dir)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(AuditDataError, match=r"unknown format '.txt'"):
        AuditDataModule(dataset_file=str(tmp_path / "x.txt"), tokenizer=tokenizer_dir)
    bad_split = tmp_path / "split.jsonl"
    bad_split.write_text(json.dumps(dict(rows[0], split="evaluation")) + "\n")
    with pytest.raises(AuditDataError, match=r"column 'split' is 'evaluation'; valid: \['scoring', 'dev', 'test'\]"):
        AuditDataModule(dataset_file=str(bad_split), tokenizer=tokenizer_dir)


def test_constructor_errors(tmp_path, tokenizer_dir):
    with pytest.raises(AuditDataError, match="reference_group and target_group are both 'white'"):
        AuditDataModule(reference_group="white", target_group="white")
    with pytest.raises(AuditDataError, match="group 'hispanic' has no names"):
        AuditDataModule(target_group="hispanic")
    with pytest.raises(ValueError, match=r"data.eval_splits has \['scoring'\]"):
        AuditDataModule(eval_splits=["scoring"])
    bad = tmp_path / "examples.jsonl"
    bad.write_text(json.dumps({"group": "white", "prompt": "p"}) + "\n")
    with pytest.raises(AuditDataError, match=r"examples.jsonl:1: missing field\(s\) \['scenario', 'variation', 'name', 'response'\]"):
        AuditDataModule(scoring_examples_file=str(bad))


def test_scoring_examples_file_must_cover_every_scoring_prompt(tmp_path, tokenizer_dir):
    d = AuditDataModule(scoring=["purchase/car"], tokenizer=tokenizer_dir)
    d.setup()
    rows = [dict(group=r["group"], scenario=r["scenario"], variation=r["variation"], name=r["name"], prompt=r["prompt"], response="5")
            for r in d.scoring_prompts[1:]]
    path = tmp_path / "scoring_examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = AuditDataModule(scoring=["purchase/car"], tokenizer=tokenizer_dir, scoring_examples_file=str(path))
    with pytest.raises(AuditDataError, match=r"has no example for 1 scoring prompt\(s\)"):
        d.setup()


@pytest.mark.parametrize("sizes, batch, world", [([1], 2, 2), ([7], 2, 2), ([9, 4], 4, 4), ([10, 3, 5], 3, 3), ([4], 4, 4), ([5, 5], 2, 1)])
def test_batches_are_cut_before_they_are_dealt(sizes, batch, world):
    """Every row once over all ranks; the same global batches whatever the world size; equal steps per rank."""
    groups, start = [], 0
    for n in sizes:
        groups.append(list(range(start, start + n)))
        start += n
    rows = [{"x": i} for i in range(start)]
    batches = fixed_batches(groups, batch)
    assert all(len({i for i in b} & set(g)) in (0, len(b)) for b in batches for g in groups)  # no batch crosses groups
    seen, steps, served = [], set(), {}
    for rank in range(world):
        shard = ShardedBatches(rows, batches, batch, world, rank)
        steps.add(len(shard) // batch)
        for step in range(len(shard) // batch):
            real = [shard[step * batch + j]["index"] for j in range(batch) if shard[step * batch + j]["weight"] > 0]
            if real:
                served[step * world + rank] = real
            seen += real
    assert sorted(seen) == list(range(start))
    assert len(steps) == 1  # collectives never hang
    assert [served[b] for b in sorted(served)] == batches  # global batch b went to rank b % world, intact


def _shard_worker(rank, world, port, kwargs, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:

        class FakeTrainer:
            world_size, global_rank = world, rank

        d = AuditDataModule(**kwargs)
        d.trainer = FakeTrainer()
        d.setup("validate")
        names = [n for b in d.val_dataloader() for n, w in zip(b["name"], b["weight"]) if w > 0]
        gathered = [None] * world
        dist.all_gather_object(gathered, (names, len(d.val_dataloader())))
        if rank == 0:
            out.put(gathered)
    finally:
        dist.destroy_process_group()


def test_two_process_sharding_odd_size(tokenizer_dir, tmp_path):
    """2 gloo processes over an evaluation set of 7 test prompts: each seen exactly once, equal steps."""
    import socket

    names = tmp_path / "names.csv"
    names.write_text("name,group,gender\n" + "".join(f"N{i},{'white' if i % 2 else 'black'},man\n" for i in range(20)))
    kwargs = dict(names=str(names), scoring=["chess"], evaluation=["chess"], eval_batch_size=2, tokenizer=tokenizer_dir,
                  split_fractions=(0.3, 0.35, 0.35))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_shard_worker, args=(2, port, kwargs, q), nprocs=2, start_method="spawn")
    (names0, steps0), (names1, steps1) = q.get()
    expected = AuditDataModule(**kwargs).eval_rows
    assert sorted(names0 + names1) == sorted(r["name"] for r in expected)
    assert not set(names0) & set(names1)
    assert steps0 == steps1
