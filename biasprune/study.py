"""The generalization study in one command: ``biasprune study --config configs/study.yaml``.

For each evaluation variation v of the evaluation scenario (Purchase by default) a mask is learned three
ways, for neurons and for heads, and v is evaluated with it:

* prompt-specific: scores of v itself;
* within-context: the sum of the scores of the other variations of v's scenario;
* cross-context: the sum of the scores of the variations of one other scenario (each context separately).

Each variation is scored once. A strategy's scores are sums of its variations' scores: S_G(u) is a sum
over examples of s_e(u), and s_e(u) depends only on example e (its prompt, its stored response and the
frozen model). Scoring the union of the variations' examples therefore adds up exactly the same terms as
adding the per-variation sums (``tests/test_study.py`` checks this to float precision).

The p/q grid is swept with the prompt-specific strategy; per unit kind the chosen point is the one with
the lowest mean |SMD| among the points whose mean inlier ratio is at least ``grid.inlier_floor`` times the
unpruned model's (if none is, the point with the highest inlier ratio). All strategies are then compared at
the chosen point.

Every piece (responses, scores, one evaluation) is written to ``<output>/pieces`` as soon as it is done
and reused when the study runs again, so an interrupted study continues where it stopped and recomputes
nothing. Results: ``metrics.csv`` (every evaluation), ``grid.csv``, ``results.csv``/``results.md``
(mean |SMD| with a paired bootstrap CI and inlier ratio per strategy and unit kind), ``claims.csv``/
``claims.md``, figures ``fig2_strategies_<units>.png``, ``fig3_overlap.png``, ``fig4_layers.png``,
``fig5_grid_<units>.png``, and TensorBoard events in ``<output>/tensorboard``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from . import artifacts
from .architectures import DEFAULT_NEURON_MODULES, check_neuron_modules, resolve_units
from .data import AuditDataError, builtin_scenarios, load_scenarios, variation_key
from .evaluation import METRIC_COLUMNS, EvaluationConfig, headline, inlier_answers, inlier_bounds, variation_row
from .generation import GenerationConfig, generate
from .masks import apply_masks
from .models import DEFAULT_MODEL, DType, load_model
from .parsing import parse_number
from .scoring import ScoreAccumulator, score_batch
from .selection import SCOPES, Scope, keep_masks
from .stats import bootstrap_mean_abs_smd

__all__ = ["GridConfig", "STRATEGIES", "Study", "main"]

STRATEGIES = ("prompt_specific", "within_context", "cross_context")
UNITS = ("neurons", "heads")
Strategy = Literal["prompt_specific", "within_context", "cross_context"]
Units = Literal["neurons", "heads"]


@dataclass(frozen=True)
class GridConfig:
    """The p/q grid (swept with the prompt-specific strategy) and the rule that picks a point.

    Attributes:
        p: neuron p values (fraction protected as most important for the reference group).
        q: neuron q values (fraction considered most important for the target group).
        head_p: head p values.
        head_q: head q values.
        scope: neuron selection pool: ``module`` or ``global``.
        head_scope: head selection pool: ``global`` or ``module``.
        inlier_floor: a point qualifies if its mean inlier ratio is >= inlier_floor x the unpruned one.
    """

    p: tuple[float, ...] = (0.35,)
    q: tuple[float, ...] = (0.40,)
    head_p: tuple[float, ...] = (0.15,)
    head_q: tuple[float, ...] = (0.15,)
    scope: Scope = "module"
    head_scope: Scope = "global"
    inlier_floor: float = 0.8

    def __post_init__(self) -> None:
        for name in ("p", "q", "head_p", "head_q"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"grid.{name} must list at least one value")
            for v in values:
                if not 0.0 <= float(v) <= 1.0:
                    raise ValueError(f"grid.{name} has {v}, which is not a fraction in [0, 1]")
        for name in ("scope", "head_scope"):
            if getattr(self, name) not in SCOPES:
                raise ValueError(f"grid.{name}={getattr(self, name)!r} is not valid; valid choices: {list(SCOPES)}")
        if not 0.0 <= self.inlier_floor <= 1.0:
            raise ValueError(f"grid.inlier_floor must be in [0, 1], got {self.inlier_floor}")

    def points(self, units: str) -> list[tuple[float, float]]:
        ps, qs = (self.p, self.q) if units == "neurons" else (self.head_p, self.head_q)
        return [(float(p), float(q)) for p, q in itertools.product(ps, qs)]


def _tag(p: float, q: float) -> str:
    return f"p{p:g}_q{q:g}"


def _fname(key: str) -> str:
    return key.replace("/", "__")


class Study:
    """Prompt-specific vs within-context vs cross-context pruning, for neurons and heads.

    Args:
        output: directory of the study (pieces, tables, figures); rerunning continues from it.
        model: Hugging Face model id or local directory, or ``embedded:SmolLM2-135M-Instruct``.
        dtype: weights dtype; ``auto`` is float32 on CPU and bfloat16 on GPU.
        device: ``auto`` (GPU if there is one), ``cpu`` or ``cuda``.
        trust_remote_code: allow custom model code from the repository.
        attn_implementation: attention kernel passed to transformers.
        neuron_modules: projections whose output channels are neurons.
        scenarios: built-in scenario names or YAML files to load.
        names: names CSV; empty for the built-in audit names.
        reference_group: group whose answers are the reference.
        target_group: group whose prompts' important units are pruned.
        eval_scenario: the scenario whose variations are evaluated.
        eval_variations: which of its variations; empty for all.
        within_variations: variations of the evaluation scenario the within-context strategy may use
            (each evaluation variation uses the others of this list); empty for all.
        contexts: other scenarios used one by one by the cross-context strategy.
        strategies: which strategies to run.
        units: which unit kinds to prune.
        holdout_names: evaluate on names not used for scoring.
        eval_name_fraction: share of each (group, gender) cell's names held out for evaluation.
        split_seed: seed of the name split.
        system_prompt: a system message before each prompt; empty for the chat template's default.
        response_max_new_tokens: longest target response of a scoring prompt (greedy).
        batch_size: scoring examples per batch.
        eval_batch_size: prompts per generation batch.
        generation: how evaluation answers are sampled.
        evaluation: how answers are judged.
        grid: the p/q grid and the rule that picks a point.
        claims_bootstrap: paired bootstrap draws for the results' CIs and the claims.
    """

    def __init__(
        self,
        output: str = "runs/study",
        model: str = DEFAULT_MODEL,
        dtype: DType = "auto",
        device: Literal["auto", "cpu", "cuda"] = "auto",
        trust_remote_code: bool = False,
        attn_implementation: str = "sdpa",
        neuron_modules: Sequence[str] = DEFAULT_NEURON_MODULES,
        scenarios: Sequence[str] = tuple(builtin_scenarios()),
        names: str = "",
        reference_group: str = "white",
        target_group: str = "black",
        eval_scenario: str = "purchase",
        eval_variations: Sequence[str] = (),
        within_variations: Sequence[str] = (),
        contexts: Sequence[str] = ("finance", "activity", "service"),
        strategies: Sequence[Strategy] = STRATEGIES,
        units: Sequence[Units] = UNITS,
        holdout_names: bool = True,
        eval_name_fraction: float = 0.5,
        split_seed: int = 0,
        system_prompt: str = "",
        response_max_new_tokens: int = 24,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        generation: GenerationConfig = GenerationConfig(),
        evaluation: EvaluationConfig = EvaluationConfig(),
        grid: GridConfig = GridConfig(),
        claims_bootstrap: int = 1000,
    ) -> None:
        from biasprune.datamodules.audit import AuditDataModule

        for name, values, valid in (("strategies", strategies, STRATEGIES), ("units", units, UNITS)):
            bad = [v for v in values if v not in valid]
            if bad or not values:
                raise ValueError(f"study.{name} has {bad or 'nothing'}; valid choices: {list(valid)}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"study.device={device!r} is not valid; valid choices: ['auto', 'cpu', 'cuda']")
        if claims_bootstrap < 1:
            raise ValueError(f"study.claims_bootstrap must be >= 1, got {claims_bootstrap}")
        self.settings = dict(locals())
        del self.settings["self"], self.settings["AuditDataModule"]
        self.output = Path(output)
        self.strategies = [s for s in STRATEGIES if s in strategies]
        self.units = [u for u in UNITS if u in units]
        self.generation, self.evaluation, self.grid = generation, evaluation, grid
        self.claims_bootstrap = claims_bootstrap
        self.eval_batch_size = eval_batch_size
        self.response_max_new_tokens = response_max_new_tokens
        self.model_name, self.dtype, self.device_name = model, dtype, device
        self.trust_remote_code, self.attn_implementation = trust_remote_code, attn_implementation
        self.neuron_modules = check_neuron_modules(neuron_modules)

        loaded = load_scenarios(scenarios)
        if eval_scenario not in loaded:
            raise AuditDataError(f"study.eval_scenario: {eval_scenario!r} is not loaded; loaded scenarios: {sorted(loaded)}")
        all_vars = [v.id for v in loaded[eval_scenario].variations]
        for name, chosen in (("eval_variations", eval_variations), ("within_variations", within_variations)):
            bad = [v for v in chosen if v not in all_vars]
            if bad:
                raise AuditDataError(f"study.{name}: {eval_scenario} has no variation(s) {bad}; valid choices: {all_vars}")
        self.eval_keys = [variation_key(eval_scenario, v) for v in (eval_variations or all_vars)]
        self.within_pool = [variation_key(eval_scenario, v) for v in (within_variations or all_vars)]
        bad = [c for c in contexts if c not in loaded or c == eval_scenario]
        if bad:
            raise AuditDataError(
                f"study.contexts: {bad} must be loaded scenarios other than {eval_scenario!r}; loaded: {sorted(loaded)}"
            )
        self.contexts = {c: [variation_key(c, v.id) for v in loaded[c].variations] for c in contexts}
        if "cross_context" in self.strategies and not self.contexts:
            raise ValueError("study.contexts is empty, but the cross_context strategy needs at least one other scenario")
        needed = list(self.eval_keys)
        if "within_context" in self.strategies:
            needed += self.within_pool
        if "cross_context" in self.strategies:
            needed += [k for keys in self.contexts.values() for k in keys]
        self.score_keys = list(dict.fromkeys(needed))
        # The data module builds prompts, applies the chat template and tokenizes exactly as `fit` does.
        self.dm = AuditDataModule(
            scenarios=scenarios,
            names=names,
            scoring=self.score_keys,
            evaluation=self.eval_keys,
            reference_group=reference_group,
            target_group=target_group,
            holdout_names=holdout_names,
            eval_name_fraction=eval_name_fraction,
            split_seed=split_seed,
            system_prompt=system_prompt,
            tokenizer=model,
            trust_remote_code=trust_remote_code,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
        )
        self.model = None
        self._layout = None
        self._scores: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        self.computed: dict[str, int] = {"responses": 0, "scores": 0, "evaluations": 0}

    # ------------------------------------------------------------------------------------ set-up
    def _fingerprint(self) -> dict:
        """The settings every piece depends on (not the grid, strategies or units: those only add pieces)."""
        keep = {k: v for k, v in self.settings.items() if k not in ("output", "grid", "strategies", "units", "claims_bootstrap", "contexts", "eval_variations", "within_variations", "batch_size", "eval_batch_size")}
        keep["generation"] = asdict(self.generation)
        keep["evaluation"] = {k: v for k, v in asdict(self.evaluation).items() if k in ("inlier_percentiles", "use_valid_range", "inlier_bounds")}
        keep["scope"] = (self.grid.scope, self.grid.head_scope)
        return json.loads(json.dumps(keep, default=list))

    def _open_output(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        path = self.output / "study_settings.json"
        mine = self._fingerprint()
        if path.is_file():
            theirs = artifacts.read_json(path)
            if theirs != mine:
                diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise ValueError(
                    f"{self.output} holds a study with other settings ({diff}); its pieces cannot be reused."
                    " Choose another --output, or restore those settings to continue it."
                )
        else:
            artifacts.write_json(path, mine)
        artifacts.write_json(self.output / "config.json", json.loads(json.dumps(self.settings, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else list(o))))

    def _load(self) -> None:
        if self.model is not None:
            return
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device_name == "auto" else self.device_name
        self.model = load_model(self.model_name, self.dtype, device, self.trust_remote_code, self.attn_implementation or None)
        self._layout = resolve_units(self.model, self.neuron_modules)
        self.dm.setup("fit")
        self.tokenizer = self.dm.tokenizer

    @property
    def layout(self):
        """Unit layout; without a loaded model it is resolved on a weightless (meta) copy of the model."""
        if getattr(self, "_layout", None) is None:
            if self.model is not None:
                self._layout = resolve_units(self.model, self.neuron_modules)
            else:
                from transformers import AutoConfig, AutoModelForCausalLM

                from .models import resolve_model_path

                config = AutoConfig.from_pretrained(resolve_model_path(self.model_name), trust_remote_code=self.trust_remote_code)
                with torch.device("meta"):
                    skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=self.trust_remote_code)
                self._layout = resolve_units(skeleton, self.neuron_modules)
        return self._layout

    def _piece(self, rel: str) -> Path:
        return self.output / "pieces" / rel

    # ------------------------------------------------------------------------------ scoring pieces
    def scores_of(self, key: str) -> dict[str, dict[str, torch.Tensor]]:
        """Float64 score sums of one variation's scoring examples: group -> unit-group key -> tensor.

        Read (or computed) once per run: every grid point and strategy reuses them.
        """
        if key in self._scores:
            return self._scores[key]
        path = self._piece(f"scores/{_fname(key)}.safetensors")
        if path.is_file():
            tensors, _ = artifacts.read_safetensors(path)
        else:
            self._load()
            examples = self._responses_of(key)
            self.dm.set_scoring_examples(examples)
            acc = ScoreAccumulator(self.layout.sizes()).to(next(self.model.parameters()).device)
            for batch in self.dm.train_dataloader():
                dev = acc.sums.device
                out = score_batch(
                    self.model,
                    self.layout,
                    batch["input_ids"].to(dev),
                    batch["attention_mask"].to(dev),
                    batch["response_mask"].to(dev),
                )
                acc.add(out, batch["group_index"].to(dev), batch["weight"].to(dev))
            per_group = acc.split(dtype=torch.float64)
            tensors = {f"{g}/{k}": t for g, d in zip(self.dm.groups, per_group) for k, t in d.items()}
            meta = {"n_examples": dict(zip(self.dm.groups, acc.n_examples.tolist())), "n_skipped": self.dm.n_skipped, "variation": key}
            artifacts.write_safetensors(path, tensors, meta)
            self.computed["scores"] += 1
        out: dict[str, dict[str, torch.Tensor]] = {g: {} for g in self.dm.groups}
        for name, t in tensors.items():
            g, k = name.split("/", 1)
            out[g][k] = t
        self._scores[key] = out
        return out

    def _responses_of(self, key: str) -> list[dict]:
        path = self._piece(f"responses/{_fname(key)}.jsonl")
        if path.is_file():
            return artifacts.read_jsonl(path)
        scen, var = key.split("/")
        rows = [r for r in self.dm.scoring_prompts if r["scenario"] == scen and r["variation"] == var]
        responses = generate(
            self.model,
            self.tokenizer,
            [r["prompt"] for r in rows],
            num_samples=1,
            temperature=0.0,
            max_new_tokens=self.response_max_new_tokens,
            batch_size=self.eval_batch_size,
        )
        examples = [
            {k: r[k] for k in ("group", "scenario", "variation", "name", "gender", "pair_id", "prompt")} | {"response": resp[0]}
            for r, resp in zip(rows, responses)
        ]
        artifacts.write_jsonl(path, examples)
        self.computed["responses"] += 1
        return examples

    def strategy_scores(self, strategy: str, key: str, context: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Summed scores that a strategy uses to build the mask for evaluation variation ``key``."""
        if strategy == "prompt_specific":
            keys = [key]
        elif strategy == "within_context":
            keys = [k for k in self.within_pool if k != key]
            if not keys:
                raise ValueError(f"within_context for {key}: study.within_variations leaves no other variation")
        else:
            keys = self.contexts[context]
        total: dict[str, dict[str, torch.Tensor]] = {}
        for k in keys:
            for g, per_key in self.scores_of(k).items():
                for unit_key, t in per_key.items():
                    total.setdefault(g, {})[unit_key] = total.get(g, {}).get(unit_key, 0) + t
        return total

    def masks_for(self, units: str, p: float, q: float, scores: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ref, tgt = self.dm.groups
        if units == "neurons":
            return keep_masks(scores[tgt], scores[ref], "neuron", p, q, self.grid.scope)
        return keep_masks(scores[tgt], scores[ref], "head", p, q, self.grid.head_scope)

    # --------------------------------------------------------------------------- evaluation pieces
    def evaluate(self, key: str, rel: str, masks: dict[str, torch.Tensor] | None) -> dict:
        """Sampled answers to variation ``key`` (cached as piece ``rel``), with ``masks`` applied."""
        path = self._piece(rel)
        if path.is_file():
            return artifacts.read_json(path)
        self._load()
        scen, var = key.split("/")
        rows = [r for r in self.dm.eval_set if r["scenario"] == scen and r["variation"] == var]
        cfg = self.generation
        # The same seed for every arm of a variation: arms see the same random streams (paired sampling).
        seed = cfg.seed * 1_000_003 + self.eval_keys.index(key)
        run = lambda: generate(  # noqa: E731
            self.model,
            self.tokenizer,
            [r["prompt"] for r in rows],
            num_samples=cfg.samples,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=self.eval_batch_size,
            seed=seed,
        )
        if masks is None:
            answers = run()
        else:
            with apply_masks(self.model, self.layout, masks):
                answers = run()
        piece = {
            "scenario": scen,
            "variation": var,
            "names": [r["name"] for r in rows],
            "groups": [int(r["group_index"]) for r in rows],
            "responses": answers,
            "values": [[parse_number(a) for a in resp] for resp in answers],
        }
        artifacts.write_json(path, piece)
        self.computed["evaluations"] += 1
        return piece

    def _row(self, piece: dict, bounds: tuple[float, float], **labels) -> dict:
        values, groups, names = self._answers(piece)
        return variation_row(
            values, groups, names, bounds, self.evaluation, scenario=piece["scenario"], variation=piece["variation"], **labels
        )

    @staticmethod
    def _answers(piece: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """A piece's parsed answers ``[n_prompts, k]``, group per prompt and name per prompt."""
        values = np.array(piece["values"], dtype=np.float64).reshape(len(piece["names"]), -1)
        return values, np.array(piece["groups"], dtype=np.int64), piece["names"]

    # ------------------------------------------------------------------------------------- the run
    def run(self) -> dict:
        """Run (or continue) the study; returns the results table rows and the claims."""
        started = time.perf_counter()
        self._open_output()
        scen_of = {s.name: s for s in self.dm.scenarios.values()}
        rows: list[dict] = []
        baseline: dict[str, dict] = {}
        bounds: dict[str, tuple[float, float]] = {}
        for key in self.eval_keys:
            baseline[key] = self.evaluate(key, f"eval/baseline/{_fname(key)}.json", None)
            scen = scen_of[key.split("/")[0]]
            valid = scen.valid_range if self.evaluation.use_valid_range else None
            bounds[key] = inlier_bounds(np.array(baseline[key]["values"], dtype=np.float64), self.evaluation.inlier_percentiles, valid)
            rows.append(self._row(baseline[key], bounds[key], phase="baseline", units="", strategy="", context="", p="", q=""))
        artifacts.write_json(self.output / "inlier_bounds.json", {"percentiles": list(self.evaluation.inlier_percentiles), "bounds": {k: list(b) for k, b in bounds.items()}})
        base_h = headline(rows)

        # The grid, swept with the prompt-specific strategy; then the chosen point per unit kind.
        grid_rows, chosen = [], {}
        arms: dict[tuple, dict[str, dict]] = {}  # (units, strategy, context) -> key -> piece, at the chosen point
        for units in self.units:
            points = []
            for p, q in self.grid.points(units):
                pieces = {}
                for key in self.eval_keys:
                    masks = self.masks_for(units, p, q, self.strategy_scores("prompt_specific", key))
                    pieces[key] = self.evaluate(key, f"eval/{units}/{_tag(p, q)}/prompt_specific/{_fname(key)}.json", masks)
                prow = [self._row(pieces[k], bounds[k], phase="pruned", units=units, strategy="prompt_specific", context="", p=p, q=q) for k in self.eval_keys]
                h = headline(prow)
                points.append({"units": units, "p": p, "q": q, "label": f"p={p:g} q={q:g}", **h, "pieces": pieces, "rows": prow})
            chosen[units] = self._choose(points, base_h)
            for pt in points:
                grid_rows.append({k: pt[k] for k in ("units", "p", "q", "mean_abs_smd", "mean_inlier_ratio", "n_nan_smd")} | {"chosen": pt is chosen[units]})
            best = chosen[units]
            rows += best["rows"]
            arms[(units, "prompt_specific", "")] = best["pieces"]
            p, q = best["p"], best["q"]
            for strategy in self.strategies:
                if strategy == "prompt_specific":
                    continue
                for context in (self.contexts if strategy == "cross_context" else [""]):
                    pieces = {}
                    for key in self.eval_keys:
                        masks = self.masks_for(units, p, q, self.strategy_scores(strategy, key, context or None))
                        rel = f"eval/{units}/{_tag(p, q)}/{strategy}{'_' + context if context else ''}/{_fname(key)}.json"
                        pieces[key] = self.evaluate(key, rel, masks)
                        rows.append(self._row(pieces[key], bounds[key], phase="pruned", units=units, strategy=strategy, context=context, p=p, q=q))
                    arms[(units, strategy, context)] = pieces
        columns = ["units", "strategy", "context", "p", "q", *METRIC_COLUMNS]
        artifacts.write_csv(self.output / "metrics.csv", rows, columns)
        artifacts.write_csv(self.output / "grid.csv", grid_rows, ["units", "p", "q", "mean_abs_smd", "mean_inlier_ratio", "n_nan_smd", "chosen"])
        results, claims = self._summarize(baseline, bounds, arms, rows)
        self._figures(rows, grid_rows, chosen, base_h, baseline, bounds)
        elapsed = time.perf_counter() - started
        artifacts.write_json(self.output / "timings.json", {"seconds": round(elapsed, 1), "computed": self.computed})
        return {"results": results, "claims": claims, "computed": dict(self.computed), "seconds": elapsed}

    def _choose(self, points: list[dict], base: dict) -> dict:
        floor = self.grid.inlier_floor * base["mean_inlier_ratio"]
        ok = [p for p in points if p["mean_inlier_ratio"] >= floor and not math.isnan(p["mean_abs_smd"])]
        if ok:
            return min(ok, key=lambda p: p["mean_abs_smd"])
        return max(points, key=lambda p: (p["mean_inlier_ratio"], -p["mean_abs_smd"] if not math.isnan(p["mean_abs_smd"]) else -math.inf))

    # ------------------------------------------------------------------------------- aggregation
    def _summarize(self, baseline, bounds, arms, rows):
        """Results per (units, strategy) with paired bootstrap CIs, and the claims."""
        names = [("baseline", "", "")] + list(arms)
        pieces_of = {("baseline", "", ""): baseline, **arms}
        data = [[inlier_answers(*self._answers(pieces_of[a][k]), bounds[k]) for k in self.eval_keys] for a in names]
        draws = bootstrap_mean_abs_smd(data, n_boot=self.claims_bootstrap, seed=self.evaluation.seed)
        draw_of = dict(zip(names, draws))

        def point(arm) -> tuple[float, float]:
            if arm[0] == "baseline":
                rs = [r for r in rows if r["phase"] == "baseline"]
            else:
                rs = [r for r in rows if r["phase"] == "pruned" and (r["units"], r["strategy"], r["context"]) == arm]
            h = headline(rs)
            return h["mean_abs_smd"], h["mean_inlier_ratio"]

        # cross-context: averaged over contexts (each context's draws are paired with the others'),
        # listed right after that unit kind's contexts
        ordered: dict[tuple, np.ndarray] = {}
        for arm, d in draw_of.items():
            ordered[arm] = d
            ctx = [a for a in arms if a[0] == arm[0] and a[1] == "cross_context"]
            if ctx and arm == ctx[-1]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ordered[(arm[0], "cross_context", "mean")] = np.nanmean(np.stack([draw_of[a] for a in ctx]), axis=0)
        draw_of = ordered
        results, point_of = [], {}
        for arm, d in draw_of.items():
            if arm[2] == "mean":
                members = [a for a in arms if a[0] == arm[0] and a[1] == "cross_context"]
                pts = [point(a) for a in members]
                est = (float(np.nanmean([p[0] for p in pts])), float(np.nanmean([p[1] for p in pts])))
            else:
                est = point(arm)
            point_of[arm] = est[0]
            lo, hi = np.nanpercentile(d, [2.5, 97.5]) if np.isfinite(d).any() else (math.nan, math.nan)
            results.append(
                {
                    "units": arm[0] if arm[0] != "baseline" else "",
                    "strategy": arm[1] if arm[0] != "baseline" else "unpruned",
                    "context": arm[2],
                    "mean_abs_smd": est[0],
                    "ci_low": float(lo),
                    "ci_high": float(hi),
                    "mean_inlier_ratio": est[1],
                }
            )
        claims = self._claims(draw_of, point_of)
        cols = ["units", "strategy", "context", "mean_abs_smd", "ci_low", "ci_high", "mean_inlier_ratio"]
        artifacts.write_csv(self.output / "results.csv", results, cols)
        artifacts.write_csv(self.output / "claims.csv", claims, ["claim", "verdict", "difference", "ci_low", "ci_high", "detail"])
        md = ["| units | strategy | context | mean abs SMD | 95% CI | inlier ratio |", "|---|---|---|---|---|---|"]
        for r in results:
            md.append(f"| {r['units']} | {r['strategy']} | {r['context']} | {r['mean_abs_smd']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['mean_inlier_ratio']:.3f} |")
        md += ["", "| claim | verdict | difference (95% CI) | detail |", "|---|---|---|---|"]
        for c in claims:
            md.append(f"| {c['claim']} | **{c['verdict']}** | {c['difference']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}] | {c['detail']} |")
        artifacts.atomic_write_bytes(self.output / "results.md", ("\n".join(md) + "\n").encode())
        return results, claims

    def _claims(self, draw_of: dict, point_of: dict) -> list[dict]:
        """Each claim is a difference of mean |SMD| (observed) whose paired-bootstrap 95% CI decides the
        verdict: holds if the CI lies above 0, does not hold if below, inconclusive if it contains 0."""

        def diff(worse, better, claim, detail):
            d = draw_of[worse] - draw_of[better]
            ok = np.isfinite(d)
            observed = point_of[worse] - point_of[better]
            if not ok.any():
                return {"claim": claim, "verdict": "inconclusive", "difference": observed, "ci_low": math.nan, "ci_high": math.nan, "detail": detail + " (undefined SMDs)"}
            lo, hi = np.percentile(d[ok], [2.5, 97.5])
            verdict = "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"
            return {"claim": claim, "verdict": verdict, "difference": observed, "ci_low": float(lo), "ci_high": float(hi), "detail": detail}

        claims = []
        kind = self.units[0]
        if ("prompt_specific" in self.strategies) and (kind, "prompt_specific", "") in draw_of:
            claims.append(diff(("baseline", "", ""), (kind, "prompt_specific", ""), "pruning lowers bias", f"unpruned minus prompt-specific {kind}"))
        if len(self.units) == 2:
            claims.append(diff(("heads", "prompt_specific", ""), ("neurons", "prompt_specific", ""), "neurons beat heads", "prompt-specific heads minus neurons"))
        chain = [a for a in ((kind, "prompt_specific", ""), (kind, "within_context", ""), (kind, "cross_context", "mean")) if a in draw_of]
        if len(chain) == 3:
            first = diff(chain[1], chain[0], "", "")
            second = diff(chain[2], chain[1], "", "")
            verdicts = {first["verdict"], second["verdict"]}
            verdict = "does not hold" if "does not hold" in verdicts else "holds" if verdicts == {"holds"} else "inconclusive"
            claims.append(
                {
                    "claim": "prompt-specific > within-context > cross-context",
                    "verdict": verdict,
                    "difference": first["difference"],
                    "ci_low": first["ci_low"],
                    "ci_high": first["ci_high"],
                    "detail": f"{kind}: within minus prompt {first['difference']:.3f} [{first['ci_low']:.3f}, {first['ci_high']:.3f}];"
                    f" cross minus within {second['difference']:.3f} [{second['ci_low']:.3f}, {second['ci_high']:.3f}]",
                }
            )
        return claims

    # ---------------------------------------------------------------------------------- figures
    def _figures(self, rows, grid_rows, chosen, base_h, baseline, bounds) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from . import plots

        writer = SummaryWriter(str(self.output / "tensorboard"))
        try:
            variations = [k.split("/")[1] for k in self.eval_keys]
            base = {k: r for k, r in zip(self.eval_keys, [r for r in rows if r["phase"] == "baseline"])}
            for units in self.units:
                bars, dots = {"unpruned": [base[k]["abs_smd"] for k in self.eval_keys]}, {"unpruned": [base[k]["inlier_ratio"] for k in self.eval_keys]}
                for strategy in self.strategies:
                    rs = [r for r in rows if r["phase"] == "pruned" and r["units"] == units and r["strategy"] == strategy]
                    per = {}
                    for r in rs:
                        per.setdefault(variation_key(r["scenario"], r["variation"]), []).append(r)
                    bars[strategy] = [float(np.nanmean([r["abs_smd"] for r in per[k]])) if k in per else math.nan for k in self.eval_keys]
                    dots[strategy] = [float(np.nanmean([r["inlier_ratio"] for r in per[k]])) for k in self.eval_keys] if per else [math.nan] * len(self.eval_keys)
                fig = plots.strategy_bars(variations, bars, dots, f"|SMD| by strategy ({units}, p={chosen[units]['p']:g}, q={chosen[units]['q']:g})")
                self._save(writer, fig, f"fig2_strategies_{units}")
                pts = [g for g in grid_rows if g["units"] == units]
                for g in pts:
                    g["label"] = f"p={g['p']:g} q={g['q']:g}"
                fig = plots.grid_tradeoff(pts, base_h, chosen[units], f"p/q grid, prompt-specific {units}")
                self._save(writer, fig, f"fig5_grid_{units}")
                for r in rows:
                    if r["phase"] == "pruned" and r["units"] == units and not math.isnan(r["abs_smd"]):
                        tag = f"{units}/{r['strategy']}{'_' + r['context'] if r['context'] else ''}"
                        writer.add_scalar(f"abs_smd/{tag}/{r['scenario']}/{r['variation']}", r["abs_smd"], 0)
            if "neurons" in self.units:
                p, q = chosen["neurons"]["p"], chosen["neurons"]["q"]
                masks = {k: self.masks_for("neurons", p, q, self.strategy_scores("prompt_specific", k)) for k in self.eval_keys}
                others = [k for keys in self.contexts.values() for k in keys]
                if others:
                    other_masks = {k: self.masks_for("neurons", p, q, self.scores_of(k)) for k in others}
                    overlap = np.array([[_overlap(masks[v], other_masks[u]) for u in others] for v in self.eval_keys])
                    fig = plots.overlap_heatmap(self.eval_keys, others, overlap, "pruned-neuron overlap (prompt-specific masks)")
                    self._save(writer, fig, "fig3_overlap")
                kinds = list(dict.fromkeys(u.kind for u in self.layout.neurons))
                n_layers = max(u.layer for u in self.layout.neurons) + 1
                counts, sizes = np.zeros((len(kinds), n_layers)), np.zeros((len(kinds), n_layers))
                for m in masks.values():
                    for u in self.layout.neurons:
                        counts[kinds.index(u.kind), u.layer] += int((m[f"neuron/{u.path}"] == 0).sum())
                        sizes[kinds.index(u.kind), u.layer] += u.size
                fig = plots.layer_module_heatmap(kinds, counts, sizes, "pruned neurons by layer and module (prompt-specific)")
                self._save(writer, fig, "fig4_layers")
        finally:
            writer.close()

    def _save(self, writer, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        from .plots import save

        save(fig, self.output / f"{name}.png")
        writer.add_figure(name, fig, 0)
        plt.close(fig)


def _overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|S_a ∩ S_b| / |S_b| over pruned units (mask value 0)."""
    inter = sum(int(((a[k] == 0) & (b[k] == 0)).sum()) for k in b)
    total = sum(int((b[k] == 0).sum()) for k in b)
    return inter / total if total else math.nan


def main(argv: Sequence[str] | None = None) -> dict:
    """``biasprune study``: parse the configuration, run the study, print the results table."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="biasprune study", description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of study settings")
    parser.add_class_arguments(Study, nested_key=None, fail_untyped=True)
    cfg = parser.parse_args(list(argv) if argv is not None else None)
    init = parser.instantiate_classes(cfg)  # builds the nested GenerationConfig, EvaluationConfig, GridConfig
    study = Study(**{k: v for k, v in init.items() if k != "config"})
    out = study.run()
    print((study.output / "results.md").read_text())
    print(f"study finished in {out['seconds']:.0f} s; computed {out['computed']}; outputs in {study.output}")
    return out

