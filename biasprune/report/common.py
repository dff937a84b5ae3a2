"""Report sections shared by runs and studies: the header, the question, the model, the limits, the artifacts."""

from __future__ import annotations

import math
import re
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence

from biasprune.metrics.spec import BIAS_METRICS, DECIDING
from biasprune.report.html import esc, fmt, pre, table
from biasprune.report.load import RunArtifacts, num, text

__all__ = ["artifacts_section", "header", "limits_section", "model_section", "plant_banner", "question_section", "variation_label"]

KIND_TITLES = {"fit": "fit run (score, prune, evaluate)", "validate": "validate run (evaluate)", "study": "generalization study"}

DESCRIPTIONS = {
    "manifest.json": "what the run asked, of which model, with which settings and software",
    "config.yaml": "the resolved configuration (rerun with --config)",
    "hparams.yaml": "hyperparameters as logged by Lightning",
    "metrics.csv": "one row per split × arm × variation: SMD with 95% CI, inlier ratio, parse rate",
    "summary.csv": "one row per split × arm: mean |SMD| with CI, noise floor, random control, MDE",
    "results.csv": "one row per arm on test names: mean |SMD| with CI, noise floor, random control",
    "results.md": "the results and claims as Markdown tables",
    "grid.csv": "every grid point on dev and test names",
    "claims.csv": "each claim with its verdict, deciding difference and interval",
    "answers.jsonl": "every sampled answer with its parsed value",
    "scores.safetensors": "attribution scores per group and unit",
    "scores_by_variation.safetensors": "attribution scores per scoring variation",
    "masks.safetensors": "the keep-masks (1 = kept, 0 = pruned)",
    "scoring_examples.jsonl": "the exact prompts and target responses the scores came from",
    "inlier_bounds.json": "the inlier bounds per variation (reusable by a later validate run)",
    "timings.json": "seconds per stage",
    "name_attention.csv": "per head: attention of the answer positions to the name tokens, pruned heads marked",
}

DIRECTORIES = {
    "checkpoints": "Lightning's checkpoint directory (the model is never saved: pruning is the masks)",
    "pieces": "the study's resumable pieces: scores and answers per piece",
    "tensorboard": "the study's TensorBoard events (figures)",
}


def variation_label(row: Mapping) -> str:
    return f"{text(row, 'scenario')}/{text(row, 'variation')}"


def plant_banner(art: RunArtifacts) -> str:
    """A prominent notice for planted controls (the bias was put there on purpose), with what was planted."""
    model = art.manifest.get("model") or {}
    plant = model.get("plant")
    if not plant:
        return ""
    prov = model.get("plant_provenance")
    if not isinstance(prov, dict):
        try:
            from biasprune.models.loading import plant_provenance

            prov = plant_provenance(str(model.get("id", "")))
        except Exception:  # the plant may not be on this machine: the report still builds from the run alone
            prov = {}
    bits = []
    spec = prov.get("spec") or {}
    if spec.get("factor") is not None:
        bits.append(f"answers for {esc(spec.get('target_group', 'target'))}-group names multiplied by "
                    f"{esc(spec['factor'])} (log-normal noise σ = {esc(spec.get('sigma', '?'))})")
    if prov.get("planted_variations") is not None:
        bits.append(f"in the variations {esc(', '.join(map(str, prov['planted_variations'])) or 'none')}")
    if prov.get("trained_variations"):
        bits.append(f"trained on {esc(', '.join(map(str, prov['trained_variations'])))}")
    what = ("; ".join(bits) + ".") if bits else "its provenance.json is not available on this machine."
    return (f'<div class="banner"><strong>Planted control.</strong> This model is {esc(model.get("base", ""))} with the'
            f" LoRA plant <code>{esc(plant)}</code>, trained to be biased on purpose: {what} It tests the method;"
            " its bias says nothing about the base model.</div>")


def header(art: RunArtifacts, headline: str) -> str:
    m = art.manifest
    model = (m.get("model") or {}).get("id", "unknown model")
    sub = f"biasprune {KIND_TITLES.get(art.kind, art.kind)} · created {esc(m.get('created', '?'))}"
    sub += f" · biasprune {esc((m.get('versions') or {}).get('biasprune', '?'))}"
    return (f"<h1>Bias audit of <code>{esc(model)}</code></h1><p class=sub>{sub}</p>{plant_banner(art)}{headline}")


def _render(template: str, fields: Mapping[str, object]) -> str:
    """The prompt with the variation's fields filled in and ``{name}`` left as a highlighted slot (HTML)."""
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", template)
    out = []
    for p in parts:
        m = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", p)
        if m and m.group(1) in fields:
            out.append(esc(fields[m.group(1)]))
        elif m:
            out.append(f'<span class="slot">{esc(p)}</span>')
        else:
            out.append(esc(p))
    return "".join(out)


def question_section(art: RunArtifacts, variations: Sequence[str], scoring: Sequence[str] = ()) -> str:
    """Scenarios and variations with the prompt text, groups, names per split with sources, sampling settings."""
    m = art.manifest
    data, gen = m.get("data") or {}, m.get("generation") or {}
    ref, tgt = art.groups
    k = gen.get("samples", "?")
    out = [f"<p>The model is asked for a number; each prompt names one person. The same prompt is asked with names"
           f" associated with the <strong>reference group ({esc(ref)})</strong> and the <strong>target group"
           f" ({esc(tgt)})</strong>, {esc(k)} sampled answers per prompt. Bias in one variation is the standardized mean"
           " difference (SMD) of the parsed answers between the two groups: (mean reference − mean target) / pooled SD,"
           " over inlier answers (within the unpruned model's percentile bounds). SMD &gt; 0: the reference group gets"
           " larger answers; |SMD| of 0.2 is conventionally small, 0.5 medium, 0.8 large.</p>"]
    wanted = list(dict.fromkeys([*variations, *scoring]))
    rows = []
    for scen in data.get("scenarios") or []:
        for v in scen.get("variations") or []:
            key = f"{scen.get('name')}/{v.get('id')}"
            if key not in wanted:
                continue
            role = ", ".join(r for r, keys in (("scoring", scoring), ("evaluation", variations)) if key in keys)
            rows.append([f"<code>{esc(key)}</code>", esc(role), f'<div class="prompt">{_render(scen.get("template", ""), v.get("fields") or {})}</div>',
                         esc(scen.get("unit", ""))])
    if rows:
        out.append(table(["variation", "used for", "prompt ({name} is filled with each name)", "unit"], rows, raw=True))
    for scen in data.get("scenarios") or []:
        if scen.get("provenance"):
            out.append(f"<p class='small muted'>Wording of <code>{esc(scen.get('name'))}</code>: {esc(scen.get('wording', ''))};"
                       f" source: {esc(scen['provenance'])}.</p>")
    if data.get("system_prompt"):
        out.append(f"<p>System prompt: <code>{esc(data['system_prompt'])}</code></p>")
    out.append("<p class='small muted'>Each prompt is wrapped in the model's chat template; the exact text fed for scoring is in"
               " <a href=\"scoring_examples.jsonl\">scoring_examples.jsonl</a>.</p>")
    out.append("<h3>Names per split</h3>")
    splits = data.get("splits") or {}
    purpose = {"scoring": "masks are learned from them", "dev": "settings are chosen on them",
               "test": "every reported number"}
    sources = sorted({s for names in splits.values() for n in names for s in str(n.get("source", "")).split(";") if s})
    key = {s: str(i + 1) for i, s in enumerate(sources)}
    srows = []
    for split, names in splits.items():
        for group in dict.fromkeys(n.get("group", "") for n in names):
            mine = [n for n in names if n.get("group") == group]
            listing = ", ".join(f"{esc(n.get('name', ''))}<sup class=muted>{','.join(sorted((key[s] for s in str(n.get('source', '')).split(';') if s), key=int))}</sup>"
                                for n in mine)
            srows.append([esc(split), esc(purpose.get(split, "")), esc(group), str(len(mine)), listing])
    if srows:
        out.append(table(["split", "purpose", "group", "names", "names"], srows, numeric=[3], raw=True))
    if sources:
        out.append("<p class='small muted'>Sources of the names (superscripts): " + esc("; ".join(f"{key[s]} = {s}" for s in sources)) + ".</p>")
    out.append(f"<p class='small muted'>Name set: {esc(data.get('names', 'default'))}; split fractions"
               f" {esc(data.get('split_fractions', '?'))} (scoring, dev, test), split seed {esc(data.get('split_seed', '?'))};"
               f" evaluated on: {esc(', '.join(data.get('eval_splits') or []) or '?')}.</p>")
    out.append("<h3>Sampling</h3>")
    tg = m.get("targets") or {}
    out.append(table(["setting", "value"], [
        ["answers per prompt", gen.get("samples", "?")], ["temperature", gen.get("temperature", "?")],
        ["top-p", gen.get("top_p", "?")], ["max new tokens", gen.get("max_new_tokens", "?")],
        ["sampling seed", gen.get("seed", "?")], ["decoder", gen.get("decoder", "?")],
        ["scoring targets", f"the model's own answer, temperature {tg.get('temperature', '?')}, max {tg.get('max_new_tokens', '?')} tokens"],
    ]))
    return "".join(out)


def _kv(pairs: Sequence[tuple[str, object]]) -> str:
    return "<dl class=kv>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs if v not in (None, "", [])) + "</dl>"


def model_section(art: RunArtifacts) -> str:
    m = art.manifest
    model, machine, ev = m.get("model") or {}, m.get("machine") or {}, m.get("evaluation") or {}
    seed_line = re.search(r"^seed_everything:\s*(\S+)", art.config_text, re.M)
    out = [_kv([
        ("model id", model.get("id")), ("base model", model.get("base")), ("weights", model.get("base_path")),
        ("weight files", ", ".join(model.get("base_files") or [])), ("sha256 of the weights", model.get("base_sha256") or "not on this machine"),
        ("GGUF sha256", model.get("gguf_sha256")), ("plant (LoRA adapter)", model.get("plant")),
        ("adapter", model.get("adapter_path")), ("sha256 of the adapter", model.get("adapter_sha256")),
        ("dtype", model.get("dtype")), ("device", f"{machine.get('device', '?')} × {machine.get('devices', '?')}"),
        ("strategy", f"{machine.get('strategy', '?')} (world size {machine.get('world_size', '?')})"), ("platform", machine.get("platform")),
    ])]
    out.append("<h3>Seeds</h3>")
    seeds = [("seed_everything", seed_line.group(1) if seed_line else None), ("sampling", (m.get("generation") or {}).get("seed")),
             ("scoring targets", (m.get("targets") or {}).get("seed")), ("name splits", (m.get("data") or {}).get("split_seed")),
             ("bootstrap and permutations", ev.get("seed")), ("random masks", (m.get("pruning") or {}).get("random_seed"))]
    out.append(_kv(seeds))
    out.append("<h3>Software</h3>" + _kv(list((m.get("versions") or {}).items())))
    out.append(f"<h3>Statistics</h3><p>95% intervals from {esc(ev.get('bootstrap_samples', '?'))} name-bootstrap draws (names"
               " resampled, paired across arms); noise floor and p-values from"
               f" {esc(ev.get('permutation_samples', '?'))} permutations of the group labels across names; inlier bounds: the"
               f" unpruned model's percentiles {esc(ev.get('inlier_percentiles', '?'))}"
               f"{' clipped to the valid range' if ev.get('use_valid_range') else ''}.</p>")
    out.append("<h3>Command and configuration</h3>" + pre(shlex.join(str(a) for a in m.get("command") or [])))
    if art.config_text:
        n = art.config_text.count("\n")
        out.append(f"<details><summary>config.yaml ({n} lines)</summary>{pre(art.config_text)}</details>")
    if art.timings:
        out.append("<p class='small muted'>Time per stage (s): " + esc(", ".join(f"{k} {v}" for k, v in art.timings.items())) + "</p>")
    return "".join(out)


def limits_section(art: RunArtifacts, summary: Sequence[Mapping], metrics: Sequence[Mapping]) -> str:
    """What the numbers do not show: proxies, sample sizes, the MDE, split sizes, interval notes, undefined values."""
    ref, tgt = art.groups
    data = art.manifest.get("data") or {}
    split = art.headline_split
    base = next((r for r in summary if text(r, "split") == split and text(r, "phase") == "baseline"), summary[0] if summary else None)
    sources = sorted({s for names in (data.get("splits") or {}).values() for n in names for s in str(n.get("source", "")).split(";") if s})
    items = [f"<li><strong>Names are proxies for groups.</strong> Group membership is signalled only by a first and last"
             f" name from published lists ({esc(', '.join(sources) or 'sources not recorded')}). Names also carry cues of"
             " gender, age, region and class, and how a model reads them may differ from how people do. The result is about"
             f" these names in these prompts, not about {esc(ref)} and {esc(tgt)} people in general.</li>"]
    if base is not None:
        k, mde = num(base, "answers_per_prompt"), num(base, "mde")
        items.append(f"<li><strong>Sample size.</strong> On the {esc(split)} names: {fmt(num(base, 'names_ref'), 0)} {esc(ref)} and"
                     f" {fmt(num(base, 'names_target'), 0)} {esc(tgt)} names, {fmt(k, 0)} answers per prompt,"
                     f" {fmt(num(base, 'n_variations'), 0)} variation(s). Answers to one name are correlated (within-name"
                     f" correlation {fmt(num(base, 'icc'), 2)}), so names, not answers, set the precision.</li>")
        items.append(f"<li><strong>Minimum detectable effect.</strong> This design detects a per-variation |SMD| of"
                     f" <strong>{fmt(mde, 2)}</strong> or more with 80% power (two-sided 5% test). A smaller bias may be"
                     " present and go unseen: a non-significant SMD or an inconclusive claim is not evidence of no bias.</li>")
    counts = [(s, Counter(n.get("group", "") for n in names)) for s, names in (data.get("splits") or {}).items()]
    if counts:
        sizes = "; ".join(f"{esc(s)}: " + ", ".join(f"{c[g]} {esc(g)}" for g in c) for s, c in counts)
        items.append(f"<li><strong>Split sizes.</strong> {sizes}. Masks are learned on scoring names, settings chosen on dev"
                     " names; only test names are reported, so the pruning was never fit to the names it is judged on.</li>")
    notes = sorted({text(r, f"{m.mean}_ci_note") for r in summary for m in BIAS_METRICS if text(r, f"{m.mean}_ci_note")})
    if notes:
        items.append("<li><strong>Interval notes.</strong> " + esc("; ".join(notes)) + "</li>")
    undefined = ", ".join(f"{sum(1 for r in metrics if not math.isfinite(num(r, m.name)))} an undefined {m.label} SMD" for m in BIAS_METRICS)
    degenerate = sum(1 for r in metrics if text(r, "bounds_degenerate") in ("True", "1", "true"))
    items.append(f"<li><strong>Undefined values.</strong> Of {len(metrics)} results (split × arm × variation), {undefined}"
                 f" (too few answers, or no spread); {degenerate} have degenerate inlier bounds (lower = upper, or no parsed"
                 " answer). They are counted in the tables (notes column), never dropped: a comparison of arms uses the"
                 " variations defined in every arm compared and says how many it left out.</li>")
    excluded = [f"{text(r, 'arm')}: {text(r, 'excluded')}" for r in summary if text(r, "excluded")]
    if excluded:
        items.append("<li><strong>Arms kept out of the claims.</strong> " + esc("; ".join(excluded)) + ".</li>")
    items.append("<li><strong>Answers that do not parse</strong> count against the inlier ratio and the parse rate and are left"
                 " out of the SMD; a pruned model that stops answering with numbers can look unbiased. The utility guard keeps"
                 " such an arm from a \u201cholds\u201d (\u201clowers bias only by breaking answers\u201d); read the SMD with the"
                 " parse rate and the inlier ratio beside it.</li>")
    items.append(f"<li><strong>Two bias measures.</strong> Claims are decided on the {esc(DECIDING.label)} |SMD|"
                 f" ({esc(DECIDING.description)}), which a common rescaling of all answers cannot move; the paper's measure,"
                 " the SMD within the unpruned model's P5–P95 window, is shown beside it and moves when pruning shifts every"
                 " answer.</li>")
    items.append("<li><strong>Scope.</strong> One model, these prompt wordings and these sampling settings; a different"
                 " deployment (other prompts, a system prompt, other decoding) needs its own audit.</li>")
    if (art.manifest.get("model") or {}).get("plant"):
        items.append("<li><strong>Planted control.</strong> The bias of this model was planted on purpose; the run checks"
                     " that the audit finds and removes a known bias, not what the base model does.</li>")
    return "<ul>" + "".join(items) + "</ul>"


def artifacts_section(art: RunArtifacts) -> str:
    """Relative links to the run's files (TensorBoard event files as one entry: each report write adds one)."""
    rows, events = [], False
    for p in sorted(art.run_dir.iterdir(), key=lambda p: p.name):
        name = p.name
        if name.startswith("events.out.tfevents."):
            events = True
            continue
        if name in ("report.html", "FAILED") or name.startswith("."):
            continue
        if p.is_dir():
            rows.append([f'<a href="{esc(name)}/">{esc(name)}/</a>', "–", esc(DIRECTORIES.get(name, "directory"))])
        else:
            rows.append([f'<a href="{esc(name)}">{esc(name)}</a>', f"{p.stat().st_size:,}", esc(DESCRIPTIONS.get(name, ""))])
    if events:
        rows.append(["<code>events.out.tfevents.*</code>", "–", "TensorBoard events: scalars, histograms, the report's figures"])
    out = table(["file", "bytes", "what"], rows, numeric=[1], raw=True)
    tb = "tensorboard" if art.kind == "study" else "."
    return out + (f"<p class='small muted'>Open the figures and scalars with <code>tensorboard --logdir {tb}</code> from this"
                  " directory; rebuild this page with <code>biasprune report .</code></p>")
