"""The paired-prompt DataModule: chat template, hold-out, user dataset files, sharding."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp

from biasprune.data import AuditDataError
from biasprune.datamodules import AuditDataModule, EvenShardSampler, WeightedView


@pytest.fixture(scope="module")
def dm(tokenizer_dir):
    d = AuditDataModule(scoring=["purchase/car", "finance"], evaluation=["purchase/car", "purchase/piano"], tokenizer=tokenizer_dir)
    d.setup("fit")
    return d


def test_rows_hold_templated_prompts(dm):
    row = dm.scoring_prompts[0]
    assert set(row) >= {"scenario", "variation", "name", "group", "gender", "pair_id", "prompt", "group_index"}
    assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["name"] in row["prompt"]
    # 4 variations x 20 scoring names; 2 variations x 20 held-out names
    assert len(dm.scoring_prompts) == 4 * 20 and len(dm.eval_set) == 2 * 20
    assert dm.eval_keys() == [("purchase", "car"), ("purchase", "piano")]


def test_names_held_out_by_default(dm, tokenizer_dir):
    assert not set(dm.scoring_prompts["name"]) & set(dm.eval_set["name"])
    shared = AuditDataModule(scoring=["purchase/car"], evaluation=["purchase/car"], holdout_names=False, tokenizer=tokenizer_dir)
    assert {r["name"] for r in shared.scoring_rows} == {r["name"] for r in shared.eval_rows}
    assert len(shared.eval_rows) == 40


def test_pairs_differ_only_in_the_name(dm):
    by_pair = {}
    for r in dm.eval_set:
        by_pair.setdefault(r["pair_id"], []).append(r)
    assert len(by_pair) == len(dm.eval_set) // 2
    for a, b in by_pair.values():
        assert a["group"] != b["group"]
        assert a["prompt"].replace(a["name"], "X") == b["prompt"].replace(b["name"], "X")


def test_scoring_examples_are_tokenized_separately(dm):
    examples = [dict(group=r["group"], scenario=r["scenario"], variation=r["variation"], name=r["name"], prompt=r["prompt"], response="$25,000") for r in dm.scoring_prompts]
    examples[0]["response"] = "   "
    dm.set_scoring_examples(examples)
    assert dm.n_skipped == {"white": 1, "black": 0} or dm.n_skipped == {"white": 0, "black": 1}
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    resp_ids = tok("$25,000", add_special_tokens=False)["input_ids"]
    row = batch["response_mask"][0].bool()
    assert batch["input_ids"][0][row].tolist() == resp_ids
    assert batch["attention_mask"].sum() == sum(len(r["prompt_ids"]) + len(r["response_ids"]) for r in dm.scoring_set.select(range(dm.batch_size)))


def test_user_dataset_file(tmp_path, tokenizer_dir):
    rows = [
        {"scenario": "rent", "variation": "flat", "name": n, "group": g, "gender": s, "prompt": f"Monthly rent for {n}?"}
        for n, g, s in [("A B", "white", "man"), ("C D", "black", "man"), ("E F", "white", "woman"), ("G H", "black", "woman")]
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = AuditDataModule(dataset_file=str(path), scoring=["rent"], evaluation=["rent/flat"], holdout_names=False, tokenizer=tokenizer_dir)
    d.setup("validate")
    assert len(d.eval_set) == 4 and "Monthly rent for C D?" in d.eval_set[1]["prompt"]
    csv = tmp_path / "prompts.csv"
    csv.write_text("scenario,variation,name,prompt\nrent,flat,A,hi\n")
    with pytest.raises(AuditDataError, match=r"missing column\(s\) \['group'\]"):
        AuditDataModule(dataset_file=str(csv), scoring=["rent"], evaluation=["rent"], tokenizer=tokenizer_dir)
    with pytest.raises(AuditDataError, match=r"data.scoring: 'food' matches no rows"):
        AuditDataModule(dataset_file=str(path), scoring=["food"], evaluation=["rent"], tokenizer=tokenizer_dir)
    with pytest.raises(AuditDataError, match=r"unknown format '.txt'"):
        AuditDataModule(dataset_file=str(tmp_path / "x.txt"), tokenizer=tokenizer_dir) if (tmp_path / "x.txt").write_text("a") else None


def test_constructor_errors(tmp_path, tokenizer_dir):
    with pytest.raises(AuditDataError, match="reference_group and target_group are both 'white'"):
        AuditDataModule(reference_group="white", target_group="white")
    with pytest.raises(AuditDataError, match="group 'hispanic' has no names"):
        AuditDataModule(target_group="hispanic")
    bad = tmp_path / "examples.jsonl"
    bad.write_text(json.dumps({"group": "white", "prompt": "p"}) + "\n")
    with pytest.raises(AuditDataError, match=r"examples.jsonl:1: missing field\(s\) \['scenario', 'variation', 'name', 'response'\]"):
        AuditDataModule(scoring_examples_file=str(bad))


@pytest.mark.parametrize("n, world", [(1, 2), (7, 2), (9, 4), (10, 3), (4, 4)])
def test_even_shards_cover_every_example_once(n, world):
    seen = []
    lengths = set()
    for rank in range(world):
        s = EvenShardSampler(n, world, rank)
        view = WeightedView([{"x": i} for i in range(n)], s.total_size)
        rows = [view[i] for i in s]
        lengths.add(len(rows))
        seen += [r["index"] for r in rows if r["weight"] > 0]
    assert sorted(seen) == list(range(n))
    assert len(lengths) == 1  # equal steps on every rank: collectives never hang


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
    """2 gloo processes over an evaluation set of 7 prompts: each seen exactly once."""
    import socket

    names = tmp_path / "names.csv"
    names.write_text("name,group,gender\n" + "".join(f"N{i},{'white' if i % 2 else 'black'},man\n" for i in range(7)))
    kwargs = dict(names=str(names), scoring=["chess"], evaluation=["chess"], holdout_names=False, eval_batch_size=2, tokenizer=tokenizer_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_shard_worker, args=(2, port, kwargs, q), nprocs=2, start_method="spawn")
    (names0, steps0), (names1, steps1) = q.get()
    assert sorted(names0 + names1) == [f"N{i}" for i in range(7)]
    assert not set(names0) & set(names1)
    assert steps0 == steps1 == 2
