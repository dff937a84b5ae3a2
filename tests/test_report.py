"""The audit report: one fit run of the tiny model (in-process), then validate/study/planted/failed variants of it."""

from __future__ import annotations

import csv
import json
import math
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
    html = (write_report(run, tensorboard=False)).read_text()
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
    html, figs = build_report(run)
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
    return dest, len(names)


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
