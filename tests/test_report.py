"""The audit report: one fit run of the tiny model (in-process), then validate/study/planted/failed variants of it."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from biasprune.cli import main as cli_main
from biasprune.report import ReportError, build_report, plots, write_report
from biasprune.report.load import layer_and_kind, num
from biasprune.report.pruned import layer_counts
from biasprune.report.screenshot import chromium_path, compress_png, render

VOID = {"meta", "img", "br", "hr", "input", "link", "col", "source", "wbr"}


class Page(HTMLParser):
    """Collects tags, URLs and text; checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset", "poster", "data")]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    assert not p.errors and not p.stack, (p.errors[:5], p.stack)
    return p


def external(urls: list[str]) -> list[str]:
    """URLs that are not an inline PNG, an in-page anchor or a relative path inside the run directory."""
    def inside(u: str) -> bool:
        if u.startswith("data:image/png;base64,"):
            return all(c.isalnum() or c in "+/=" for c in u.removeprefix("data:image/png;base64,"))
        return u.startswith("#") or ("//" not in u and ":" not in u and not u.startswith(("/", "..")))

    return [u for u in urls if not inside(u)]


def table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def fit_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A fit run of the tiny model; the CLI writes report.html at its end."""
    root = tmp_path_factory.mktemp("report_fit")
    cli_main([
        "fit", "--model.model_name_or_path", tiny_model_dir, "--data.scoring", "[purchase/car]",
        "--data.evaluation", "[purchase/car, purchase/piano]", "--model.generation.samples", "3",
        "--model.generation.max_new_tokens", "6", "--model.targets.max_new_tokens", "6",
        "--model.evaluation.bootstrap_samples", "200", "--model.evaluation.permutation_samples", "200",
        "--trainer.logger.init_args.save_dir", str(root / "runs"), "--trainer.enable_progress_bar", "false",
        "--trainer.accelerator", "cpu", "--pruning.p", "0.2", "--pruning.q", "0.3", "--pruning.random_draws", "2",
    ])  # fmt: skip
    run = root / "runs" / "biasprune" / "version_0"
    assert (run / "report.html").is_file()
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    (dest / "report.html").unlink()
    return dest


def relist(run: Path) -> Path:
    """Record the run's files as they are now in its manifest (a test that builds another kind of run from a copy)."""
    from biasprune.pipeline.manifest import list_artifacts

    manifest = json.loads((run / "manifest.json").read_text())
    manifest["artifacts"], manifest["checkpoints"] = list_artifacts(run)
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return run


def test_fit_report_is_self_contained_and_complete(fit_run):
    html = (fit_run / "report.html").read_text()
    page = parse(html)
    assert not external(page.urls)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert "url(" not in html and "@import" not in html
    # Every image is inline, and the page has every figure: the per-arm summary and the per-variation panel of each bias
    # measure (scale-free and the paper's), the answer distribution and the layer x module heat map.
    imgs = [u for u in page.urls if u.startswith("data:image/png;base64,")]
    assert len(imgs) == html.count("<img") == 6
    assert html.count("<svg") == 0
    # Every variation of the run, with its SMD as in metrics.csv, and the sections in the order a reviewer asks.
    text = " ".join(page.text)
    rows = table(fit_run / "metrics.csv")
    for r in rows:
        assert f"{r['scenario']}/{r['variation']}" in text
        assert f"{float(r['smd']):.3f}" in text and f"{float(r['rank_smd']):.3f}" in text
    heads = [t for t in ("The question", "The model", "Bias before and after", "What was pruned", "Claims", "Limits", "Artifacts")]
    positions = [html.index(f">{h}") for h in heads]
    assert positions == sorted(positions)
    # The headline numbers are summary.csv's; the claim's sentence is claims.csv's; every artifact is linked.
    summary = {r["arm"]: r for r in table(fit_run / "summary.csv")}
    assert f"{float(summary['unpruned']['mean_abs_smd']):.3f}" in text and f"{float(summary['unpruned']['mean_abs_rank_smd']):.3f}" in text
    assert "utility" in text and summary["pruned"]["utility"] in text
    assert f"{float(summary['pruned']['mde']):.2f}" in text
    claim = table(fit_run / "claims.csv")[0]
    assert claim["sentence"] in text
    for name in ("metrics.csv", "summary.csv", "claims.csv", "answers.jsonl", "masks.safetensors", "manifest.json"):
        assert name in page.urls
    manifest = json.loads((fit_run / "manifest.json").read_text())
    assert manifest["model"]["base_sha256"] in text
    for n in manifest["data"]["splits"]["test"]:
        assert n["name"] in text


def test_figures_go_to_tensorboard(fit_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(fit_run), size_guidance={"images": 0})
    ea.Reload()
    assert {"report/mean_abs_smd", "report/per_variation", "report/distribution", "report/pruned_by_layer"} <= set(ea.Tags()["images"])


def test_report_of_a_copied_run_is_the_same_page(fit_run, tmp_path, capsys):
    copy = copy_run(fit_run, tmp_path / "elsewhere")
    cli_main(["report", str(copy)])
    assert "report:" in capsys.readouterr().out
    assert (copy / "report.html").read_bytes() == (fit_run / "report.html").read_bytes()


def test_refuses_missing_failed_and_foreign_directories(fit_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli_main(["report", str(tmp_path / "nope")])
    assert err.value.code == 2
    assert f"run directory '{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ReportError, match=r"has no manifest.json; expected a biasprune run directory.*found \['notes.txt'\]"):
        write_report(tmp_path / "foreign")
    failed = copy_run(fit_run, tmp_path / "failed")
    (failed / "FAILED").write_text("RuntimeError: out of memory\n")
    with pytest.raises(SystemExit) as err:
        cli_main(["report", str(failed)])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "is marked FAILED (RuntimeError: out of memory)" in msg and "no report" in msg
    assert not (failed / "report.html").exists()
    bad = copy_run(fit_run, tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps(manifest | {"kind": "train"}))
    with pytest.raises(ReportError, match=r"field 'kind' is 'train'; valid choices: \['fit', 'validate', 'study'\]"):
        write_report(bad)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (bad / "metrics.csv").unlink()
    with pytest.raises(ReportError, match=r"\(a fit run\) lacks \['metrics.csv'\]"):
        write_report(bad)


def test_validate_run_without_masks(fit_run, tmp_path):
    run = copy_run(fit_run, tmp_path / "validate")
    for name in ("metrics.csv", "summary.csv"):
        rows = table(run / name)
        with open(run / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if r["arm"] == "unpruned")
    for name in ("masks.safetensors", "claims.csv", "answers.jsonl"):
        (run / name).unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(manifest | {"kind": "validate"}))
    html = (write_report(relist(run), tensorboard=False)).read_text()
    page = parse(html)
    assert html.count("<img") == 4  # per bias measure, the per-arm summary and per-variation panel; no answers, no masks
    text = " ".join(page.text)
    assert "has no masks.safetensors, so nothing was pruned" in text
    assert "answers.jsonl is not in this run" in text
    assert "No claim was tested" in text
    assert "validate run" in text


def test_tolerates_missing_columns_and_undefined_values(fit_run, tmp_path):
    run = copy_run(fit_run, tmp_path / "old")
    rows = table(run / "metrics.csv")
    rows[0] |= {"smd": "nan", "abs_smd": "nan", "bounds_degenerate": "True"}
    keep = [c for c in rows[0] if c not in ("smd_ci_low", "smd_ci_high", "smd_p_value", "n_answers")] + ["a_new_column"]
    with open(run / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(r | {"a_new_column": "x"} for r in rows)
    (run / "summary.csv").unlink()
    html, figs = build_report(relist(run))
    text = " ".join(parse(html).text)
    undefined_rank = sum(1 for r in rows if r["rank_smd"] in ("", "nan"))
    assert f"Of {len(rows)} results (split × arm × variation), {undefined_rank} an undefined scale-free SMD, 1 an undefined paper SMD" in text
    assert "1 have degenerate inlier bounds" in text
    assert [f[0] for f in figs] == ["per_variation", "per_variation_smd", "distribution", "pruned_by_layer"]


def test_planted_control_is_labelled_at_the_top(fit_run, tmp_path):
    run = copy_run(fit_run, tmp_path / "planted")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["model"] |= {"plant": "purchase", "plant_provenance": {"spec": {"factor": 0.5, "sigma": 0.3, "target_group": "black"},
                                                                    "planted_variations": ["purchase/car"]}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    html, _ = build_report(run)
    banner = html.index("Planted control.")
    assert banner < html.index("<section")
    assert "multiplied by 0.5" in html[banner:banner + 600] and "purchase/car" in html[banner:banner + 600]


def _study_dir(fit_run: Path, dest: Path) -> tuple[Path, int]:
    """A study output directory built from the fit run's tables (the study's own columns added), with figures."""
    dest.mkdir()
    manifest = json.loads((fit_run / "manifest.json").read_text())
    manifest |= {"kind": "study", "study": {"strategies": ["prompt_specific"], "units": ["neurons"], "grid": {"p": [0.2], "q": [0.3]}}}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    arm = "neurons/prompt_specific/p=0.2 q=0.3"
    rename = {"unpruned": "unpruned", "pruned": arm, "random/0": f"{arm}/random 0", "random/1": f"{arm}/random 1"}
    labels = {"units": "neurons", "strategy": "prompt_specific", "context": "", "point": "p=0.2 q=0.3", "p": "0.2", "q": "0.3", "budget": ""}
    for src, out in (("metrics.csv", "metrics.csv"), ("summary.csv", "results.csv")):
        rows = table(fit_run / src)
        with open(dest / out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[*labels, *rows[0]])
            w.writeheader()
            for r in rows:
                w.writerow((labels if r["arm"] != "unpruned" else dict.fromkeys(labels, "")) | r | {"arm": rename[r["arm"]]})
    shutil.copy(fit_run / "claims.csv", dest / "claims.csv")
    with open(dest / "grid.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["split", "units", "strategy", "context", "point", "mean_abs_smd", "inlier_ratio", "chosen"])
        w.writeheader()
        w.writerows({"split": s, "units": "neurons", "strategy": "prompt_specific", "context": "", "point": "p=0.2 q=0.3",
                     "mean_abs_smd": 0.1, "inlier_ratio": 0.8, "chosen": True} for s in ("dev", "test"))
    names = ["fig2_strategies_neurons", "fig3_overlap", "fig4_layers", "fig5_grid_neurons_dev", "fig5_grid_neurons_test", "fig9_new"]
    for n in names:
        fig = Figure(figsize=(2, 1))
        fig.subplots().plot([0, 1], [0, 1])
        plots.save(fig, dest / f"{n}.png")
    return relist(dest), len(names)


def test_study_report_embeds_its_figures_and_tables(fit_run, tmp_path):
    study, n_png = _study_dir(fit_run, tmp_path / "study")
    out = write_report(study)
    html = out.read_text()
    page = parse(html)
    assert html.count("<img") == n_png + 4  # the study's PNGs and, per bias measure, the per-arm and per-variation figures
    text = " ".join(page.text)
    for r in table(study / "metrics.csv"):
        assert f"{r['scenario']}/{r['variation']}" in text
    assert "neurons · prompt_specific · p=0.2 q=0.3" in text and "dev names" in text and "test names" in text
    assert (study / "tensorboard").is_dir()
    assert not external(page.urls)


def test_pure_helpers_against_hand_counts():
    masks = {"neuron/model.layers.0.mlp.up_proj": np.array([1, 0, 0, 1], np.uint8),
             "neuron/model.layers.1.mlp.up_proj": np.array([0, 1, 1, 1], np.uint8),
             "neuron/model.layers.1.self_attn.q_proj": np.array([1, 1], np.uint8),
             "head/model.layers.1.self_attn": np.array([1, 0, 1], np.uint8)}
    kinds, counts, sizes = layer_counts(masks)
    assert kinds == ["up_proj", "q_proj", "heads"]
    np.testing.assert_array_equal(counts, [[2, 1], [0, 0], [0, 1]])
    np.testing.assert_array_equal(sizes, [[4, 4], [0, 2], [0, 3]])
    assert layer_and_kind("head/model.layers.12.self_attn") == (12, "heads")
    assert num({"a": "0.5"}, "a") == 0.5 and math.isnan(num({"a": ""}, "a")) and math.isnan(num({}, "a"))
    assert num({"a": "True"}, "a") == 1.0 and math.isnan(num({"a": "nan"}, "a"))


def test_new_figures_use_the_object_api():
    figs = [
        plots.arm_summary(["unpruned", "pruned"], [0.3, 0.1], [0.2, 0.05], [0.4, 0.2], (0.1, 0.2), {"pruned": [0.2, 0.3]}, "t"),
        plots.variation_panel(["a/b", "a/c"], [{"label": "unpruned", "smd": [0.1, -0.2], "low": [0, -0.4], "high": [0.2, 0.0],
                                               "inlier": [0.9, 0.8], "parse": [1, 1]}], 0.1, "t"),
        plots.answer_distributions([("before", {"x": [1, 10, 100, 1000, np.nan], "y": [2, 20]})], (1.0, 1000.0), "USD", "t"),
        plots.layer_module_heatmap(["up_proj"], np.array([[1.0, 2.0]]), np.array([[4.0, 4.0]]), "t", annotate=True),
    ]
    assert all(type(f) is Figure for f in figs)
    assert figs[2].axes[0].get_xscale() == "log"


@pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")
def test_chromium_screenshot_is_not_blank(fit_run, tmp_path):
    from PIL import Image

    png = render(fit_run / "report.html", tmp_path / "shot.png", width=1280, height=2000)
    size = compress_png(png, max_bytes=300_000)
    assert size <= 300_000
    with Image.open(png) as im:
        assert im.size == (1280, 2000)
        grey = np.asarray(im.convert("L"))
    assert grey.std() > 10  # text and figures, not a blank or one-colour page
    assert (grey < 100).mean() > 0.005 and (grey > 200).mean() > 0.5  # dark text on a light page


# ------------------------------------------------------------------- a run checked against its manifest
def test_the_manifest_lists_every_file_with_its_size_checksum_and_rows(fit_run):
    import hashlib

    manifest = json.loads((fit_run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["stage"] == "finished"
    assert [s["stage"] for s in manifest["stages"]] == ["setup", "target_responses", "scoring", "evaluation", "results", "finished"]
    assert manifest["pid"] > 0 and manifest["host"] and manifest["command"][:2] == ["biasprune", "fit"]
    assert manifest["config"]["model"]["model_name_or_path"] == manifest["model"]["id"]
    files = {p.relative_to(fit_run).as_posix() for p in fit_run.rglob("*") if p.is_file()}
    expected = {f for f in files if not f.startswith("checkpoints/") and "tfevents" not in f} - {"manifest.json", "report.html"}
    assert set(manifest["artifacts"]) == expected and {"masks.safetensors", "answers.jsonl", "summary.csv"} <= expected
    for name, rec in manifest["artifacts"].items():  # against hashlib and csv/json, file by file
        data = (fit_run / name).read_bytes()
        assert rec["bytes"] == len(data) and rec["sha256"] == hashlib.sha256(data).hexdigest(), name
        if name.endswith(".csv"):
            assert rec["rows"] == len(table(fit_run / name)), name
        if name.endswith(".jsonl"):
            assert rec["rows"] == len([json.loads(x) for x in data.decode().splitlines() if x.strip()]), name
    assert set(manifest["checkpoints"]) == {f for f in files if f.startswith("checkpoints/")}
    # the tiny model's pools are smaller than 1/0.5%: the default budget was rounded up, and the manifest says so
    assert any("rounded up to 1 neuron" in n for n in manifest["pruning"]["budget_notes"])


def test_result_files_follow_the_umask(fit_run):
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.relative_to(fit_run).as_posix(): oct(p.stat().st_mode & 0o777) for p in fit_run.rglob("*") if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def _damage(fit_run: Path, dest: Path, how: str) -> Path:
    run = copy_run(fit_run, dest)
    if how == "truncated csv":
        text = (run / "summary.csv").read_text()
        cut = text.index("\n", text.index("\n") + 1) + 40  # the header, a row and part of the next
        (run / "summary.csv").write_text(text[:cut])
    elif how == "cut at a line":
        lines = (run / "summary.csv").read_text().splitlines(keepends=True)
        (run / "summary.csv").write_text("".join(lines[:2]))
    elif how == "deleted mask":
        (run / "masks.safetensors").unlink()
    elif how == "garbage jsonl line":
        lines = (run / "answers.jsonl").read_text().splitlines(keepends=True)
        lines[6] = "{garbage: 1}\n"
        (run / "answers.jsonl").write_text("".join(lines))
    elif how == "edited checksum":
        text = (run / "manifest.json").read_text()
        sha = json.loads(text)["artifacts"]["metrics.csv"]["sha256"]
        (run / "manifest.json").write_text(text.replace(sha, "0" * 64))
    return run


def _manifest_line(run: Path, needle: str) -> int:
    return next(i for i, line in enumerate((run / "manifest.json").read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("how", ["truncated csv", "cut at a line", "deleted mask", "garbage jsonl line", "edited checksum"])
def test_a_damaged_run_is_refused_naming_the_file_and_line(fit_run, tmp_path, capsys, how):
    run = _damage(fit_run, tmp_path / "damaged", how)
    with pytest.raises(SystemExit) as err:
        cli_main(["report", str(run)])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    expected = {
        "truncated csv": lambda: "summary.csv:3: ",
        "cut at a line": lambda: f"summary.csv:2: the file ends after 1 row(s) at line 2; manifest.json:{_manifest_line(run, 'summary.csv')} lists",
        "deleted mask": lambda: f"masks.safetensors: missing (manifest.json:{_manifest_line(run, 'masks.safetensors')} lists it",
        "garbage jsonl line": lambda: "answers.jsonl:7: not valid JSON (Expecting property name enclosed in double quotes, column 2)",
        "edited checksum": lambda: f"metrics.csv: its sha256 is not the one manifest.json:{_manifest_line(run, '0' * 64)} records",
    }[how]()
    assert expected in msg, msg
    assert not (run / "report.html").exists()
    # --force renders what is there, with a banner naming the problem
    cli_main(["report", "--force", "--no-tensorboard", str(run)])
    html = (run / "report.html").read_text()
    page = parse(html)
    banner = html[html.index("banner problems"):html.index("</div>", html.index("banner problems"))]
    assert expected.split(" (")[0].split(";")[0] in banner
    assert "nothing was pruned" not in " ".join(page.text)  # a mask was given, even when its file is gone


def test_a_run_that_did_not_finish_is_explained(fit_run, tmp_path, capsys):
    run = copy_run(fit_run, tmp_path / "failed-state")
    manifest = json.loads((run / "manifest.json").read_text())
    cases = [
        (manifest | {"status": "failed", "stage": "evaluation", "error": "RuntimeError: CUDA out of memory"},
         "this run did not finish (last stage: evaluation): it failed (RuntimeError: CUDA out of memory)"),
        (manifest | {"status": "interrupted", "stage": "scoring", "signal": "SIGTERM", "resume": {"command": "biasprune fit --x"}},
         "this run did not finish (last stage: scoring): it was interrupted (SIGTERM); resume it with: biasprune fit --x"),
        (manifest | {"status": "running", "stage": "scoring", "host": "another-machine"},
         f"its process {manifest['pid']} ran on host another-machine, which this is not"),
    ]
    for state, expected in cases:
        (run / "manifest.json").write_text(json.dumps(state, indent=2))
        with pytest.raises(SystemExit):
            cli_main(["report", str(run)])
        assert expected in capsys.readouterr().err
    html, _ = build_report(run, force=True)
    assert "This report was forced" in html and "another-machine" in html


def test_validate_with_a_masks_file_copies_and_names_it_everywhere(fit_run, tiny_model_dir, tmp_path, capsys, caplog):
    """The printed table, summary.csv, claims.csv and report.html name the same arm: the masks file's."""
    import hashlib

    masks = fit_run / "masks.safetensors"
    cli_main([
        "validate", "--model.model_name_or_path", tiny_model_dir, "--pruning.masks_file", str(masks),
        "--data.evaluation", "[purchase/car]", "--model.generation.samples", "3", "--model.generation.max_new_tokens", "6",
        "--model.evaluation.bootstrap_samples", "200", "--model.evaluation.permutation_samples", "200", "--pruning.random_draws", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
    ])  # fmt: skip
    printed = capsys.readouterr()
    run = tmp_path / "runs" / "biasprune" / "version_0"
    arm = f"pruned[{fit_run.parent.name}/{fit_run.name}]"
    assert (run / "masks.safetensors").read_bytes() == masks.read_bytes()
    source = json.loads((run / "manifest.json").read_text())["pruning"]["masks_source"]
    assert source == {"path": str(masks.resolve()), "sha256": hashlib.sha256(masks.read_bytes()).hexdigest(),
                      "copy": "masks.safetensors", "arm": arm}
    summary_arms = {r["arm"] for r in table(run / "summary.csv")}
    claims = table(run / "claims.csv")
    assert summary_arms == {"unpruned", arm, "random/0", "random/1"}
    assert claims and all(arm in c["claim"] for c in claims)
    table_lines = [line for line in (printed.out + printed.err + caplog.text).splitlines() if line.startswith(arm)]
    assert table_lines, "the printed table names the arm"
    html = (run / "report.html").read_text()
    text = " ".join(parse(html).text)
    assert arm in text and source["sha256"][:16] in text and "nothing was pruned" not in text
    for c in claims:
        assert c["claim"] in text


@pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")
@pytest.mark.parametrize("width", [1280, 390])
def test_report_layout_in_chromium(fit_run, tmp_path, width):
    """In a real browser: nothing sticks out of the page, wide tables scroll inside their box, at 1280 and 390 px."""
    from biasprune.report.screenshot import layout

    wide = copy_run(fit_run, tmp_path / "wide")
    rows = table(wide / "metrics.csv")
    for r in rows:  # a variation id far wider than any screen
        r["variation"] = r["variation"] + "_" + "x" * 160
    with open(wide / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for run in (fit_run, relist(wide)):
        page = run / "report.html" if run == fit_run else write_report(run, tensorboard=False)
        found = layout(page, width)
        assert found["viewport"] <= width and found["page_width"] <= found["viewport"], found
        assert found["beyond"] == [] and found["clipped"] == [], found
        assert found["tables"] > 3
        if run != fit_run:
            assert found["scrolling"] >= 1, found


def test_results_tables_of_a_fit_run(fit_run):
    """benchmarks.analysis.results_tables on a fit run: per scenario and arm, both measures against their floors, and its claim."""
    from benchmarks.analysis.results_tables import render

    sections = render([fit_run])
    assert set(sections) == {"checks"}
    text = sections["checks"]
    claim = table(fit_run / "claims.csv")[0]
    assert claim["sentence"] in text and f"**{claim['verdict']}**" in text
    lines = [line for line in text.splitlines() if line.startswith("| biasprune |")]
    assert {line.split(" | ")[3] for line in lines} == {"unpruned", "pruned"}  # random draws are the controls, not rows
    assert all(line.count(" [") == 2 for line in lines)  # both bias measures with their intervals
    # a pruned arm carries its random controls' mean |SMD| (in parentheses), the unpruned arm has none
    assert all((line.split(" | ")[3] == "pruned") == (line.count("] (") == 2) for line in lines)


def test_results_tables_recompute_checks_without_the_random_column(fit_run, tmp_path):
    """An older scenario_checks.csv (no random column) is recomputed from answers.jsonl; without answers it is shown as it is."""
    from benchmarks.analysis.results_tables import render
    from biasprune.plant.checks import COLUMNS, scenario_checks

    run = copy_run(fit_run, tmp_path / "version_0")
    fresh = scenario_checks(run)
    old = [c for c in COLUMNS if not c.endswith("_random_mean_abs")]
    with open(run / "scenario_checks.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, old, extrasaction="ignore")
        w.writeheader()
        w.writerows(fresh)
    recomputed = render([run])["checks"]
    pruned = next(r for r in fresh if r["arm"] == "pruned")
    assert f"({pruned['rank_smd_random_mean_abs']:.3f})" in recomputed
    assert set(COLUMNS) <= set(table(run / "scenario_checks.csv")[0])  # written again with every column
    with open(run / "scenario_checks.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, old, extrasaction="ignore")
        w.writeheader()
        w.writerows(fresh)
    (run / "answers.jsonl").unlink()
    kept = render([run])["checks"]
    lines = [line for line in kept.splitlines() if line.startswith(f"| {tmp_path.name} |")]
    assert len(lines) == len(fresh) and not any("] (" in line for line in lines)
    assert f"{pruned['rank_smd_min_abs']:.3f}" in kept
