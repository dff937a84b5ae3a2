"""Calibration of the claim "pruning lowers bias": how often the REAL claim path says "holds" when the truth is known.

    python -m benchmarks.validation.calibration                       # the table in docs/method.md ("Statistics"), minutes on 2 cores
    python -m benchmarks.validation.calibration --quick               # CI's version (tests/test_calibration.py): fewer replications
    python -m benchmarks.validation.calibration --write docs/method.md  # also replace the table between its markers there
    python -m benchmarks.validation.calibration --intervals           # the second part: coverage of the intervals themselves

Every replication generates answer records with known truth and runs exactly what ``biasprune fit`` runs on them:
``compute_bounds`` (the unpruned arm's P5-P95 window) -> ``variation_rows`` (every metric's row function) ->
``summarize_split`` (one name bootstrap for every arm and metric, the utility guard, the random controls compared
as one new mask, undefined variations kept out) -> ``lowers_bias``. Only what does not enter a claim is
switched off: the per-variation intervals and the noise floor's permutations.

The design (the quickstart's): 20 names per group, 8 answers per prompt, 3 variations, 5 random-mask draws
(``--draws``), 1000 bootstrap draws. One answer of arm a about name n in variation v, answer j::

    y = round2( exp(mu_v + log(f_a) [n in target] + u_an + 0.35 (0.8 z_nvj + 0.6 e_anvj)) )

* ``f_a``: the arm's bias factor (target-group answers are ``f_a`` times as high; 0.6 as the planted controls);
* ``u_an = 0.9 u_n + 0.44 u'_an``, ``u_n ~ N(0, 0.15^2)``: what the model associates with a name, shared by every
  variation and, mostly, by every arm;
* ``z_nvj``: the sampling stream of (name, variation, answer), shared by every arm (the keyed streams of
  ``biasprune.answers.streams``); ``e_anvj`` the arm's own part;
* ``round2``: two significant digits, so answers tie as real ones do; 2% of answers do not parse.

A random-mask draw r changes the bias to ``log f_r = log f (1 + tau N(0, 1))`` (tau 0.15: masks differ a little).
The cases (truth in parentheses):

* **no bias** (null): f = 1 for every arm;
* **bias unchanged by pruning** (null): f = 0.6 for every arm;
* **common rescaling x0.8 / x1.5** (null): the pruned arm's answers are the unpruned arm's times c, bias unchanged;
* **broken arm** (null): the pruned arm parses 11% of its answers, uniform between the unpruned P10 and P90 whatever
  the group;
* **undefined variations** (null): the pruned arm is the unpruned model in v2, and no target-group answer parses
  in v0 and v1;
* **random masks that vary a lot** (null): tau = 0.5, and the pruned arm is one more random mask;
* **true reduction 25% / 50% / 90%** (effect): ``log f_pruned = (1 - r) log 0.6``, random masks as above (tau 0.15),
  utility unchanged.

Printed: per case, the share of replications with each verdict; a null's "holds" is a false claim (target
<= 5%), an effect's is its power. Monte Carlo standard error of a share p over R replications: sqrt(p (1-p) / R).
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biasprune.stats.rows import EvaluationConfig, compute_bounds, variation_rows
from biasprune.stats.summary import summarize_split

K, M, V = 20, 8, 3
MU = np.log([300.0, 20000.0, 3000.0])  # a chair, a car, a piano
NAME_SD, NOISE_SD, STREAM, NAME_SHARE, PARSE_FAIL = 0.15, 0.35, 0.8, 0.9, 0.02
VERDICTS = ("holds", "breaks answers", "does not hold", "inconclusive")
BEGIN, END = "<!-- calibration table: begin (python -m benchmarks.validation.calibration --write docs/method.md) -->", "<!-- calibration table: end -->"


@dataclass(frozen=True)
class Case:
    name: str
    null: bool
    pruned: Callable  # (world, rng) -> pruned answers [V, 2K, M]
    tau: float = 0.15
    base_factor: float = 0.6


@dataclass
class World:
    """One replication's shared parts: name effects, sampling streams and the unpruned answers."""

    groups: np.ndarray  # [2K]
    u: np.ndarray  # [2K] name effects
    z: np.ndarray  # [V, 2K, M] sampling streams
    base_factor: float
    unpruned: np.ndarray | None = None

    def answers(self, rng: np.random.Generator, factor: float) -> np.ndarray:
        u = NAME_SHARE * self.u + math.sqrt(1 - NAME_SHARE**2) * rng.normal(0.0, NAME_SD, self.u.shape)
        e = rng.standard_normal(self.z.shape)
        log_y = MU[:, None, None] + (np.log(factor) * (self.groups == 1) + u)[None, :, None] \
            + NOISE_SD * (STREAM * self.z + math.sqrt(1 - STREAM**2) * e)
        y = _round2(np.exp(log_y))
        y[rng.random(y.shape) < PARSE_FAIL] = np.nan
        return y


def _round2(y: np.ndarray) -> np.ndarray:
    scale = 10.0 ** (np.floor(np.log10(y)) - 1)
    return np.round(y / scale) * scale


def _mask_factor(rng: np.random.Generator, factor: float, tau: float) -> float:
    return float(np.exp(np.log(factor) * (1.0 + tau * rng.standard_normal())))


def _rescaled(c: float) -> Callable:
    return lambda w, rng: w.unpruned * c


def _broken(w: World, rng: np.random.Generator) -> np.ndarray:
    out = np.full(w.unpruned.shape, np.nan)
    for v in range(V):
        lo, hi = np.nanpercentile(w.unpruned[v], [10, 90])
        take = rng.random(out[v].shape) < 0.11
        out[v][take] = rng.uniform(lo, hi, take.sum())
    return out


def _undefined(w: World, rng: np.random.Generator) -> np.ndarray:
    out = w.unpruned.copy()
    out[:2, w.groups == 1] = np.nan
    return out


def _reduced(r: float) -> Callable:
    return lambda w, rng: w.answers(rng, _mask_factor(rng, float(np.exp((1 - r) * np.log(w.base_factor))), 0.0))


CASES = (
    Case("no bias", True, lambda w, rng: w.answers(rng, 1.0), base_factor=1.0),
    Case("bias unchanged by pruning", True, lambda w, rng: w.answers(rng, 0.6)),
    Case("common rescaling x0.8", True, _rescaled(0.8)),
    Case("common rescaling x1.5", True, _rescaled(1.5)),
    Case("broken arm (parse 11%, uniform answers)", True, _broken),
    Case("undefined variations", True, _undefined),
    Case("random masks that vary a lot (arm = one more mask)", True, lambda w, rng: w.answers(rng, _mask_factor(rng, 0.6, 0.5)), tau=0.5),
    Case("true reduction 25%", False, _reduced(0.25)),
    Case("true reduction 50%", False, _reduced(0.50)),
    Case("true reduction 90%", False, _reduced(0.90)),
)


def _records(values: np.ndarray, arm: str, phase: str, groups: np.ndarray, draw: int = -1) -> list[dict]:
    return [{"split": "test", "arm": arm, "phase": phase, "draw": draw, "scenario": "purchase", "variation": f"v{v}",
             "name": f"n{i:02d}", "group_index": int(groups[i]), "values": values[v, i].tolist(), "pruned_neurons": 720,
             "pruned_heads": 0} for v in range(values.shape[0]) for i in range(values.shape[1])]


def replicate(case: Case, seed: int, draws: int, n_boot: int) -> str:
    """One replication through the real claim path; returns its verdict."""
    rng = np.random.default_rng(seed)
    groups = np.tile([0, 1], K)
    world = World(groups, rng.normal(0.0, NAME_SD, 2 * K), rng.standard_normal((V, 2 * K, M)), case.base_factor)
    world.unpruned = world.answers(rng, case.base_factor)
    recs = _records(world.unpruned, "unpruned", "baseline", groups)
    for d in range(draws):
        recs += _records(world.answers(rng, _mask_factor(rng, case.base_factor, case.tau)), f"random/{d}", "random", groups, d)
    recs += _records(case.pruned(world, rng), "pruned", "pruned", groups)
    config = EvaluationConfig(bootstrap_samples=n_boot, permutation_samples=0, seed=seed)
    bounds = compute_bounds(recs, config, lambda s: (1.0, 1.0e7))
    rows = variation_rows(recs, bounds, EvaluationConfig(bootstrap_samples=0, permutation_samples=0))
    (claim,) = summarize_split(recs, bounds, rows, config, "test", {"neuron": 144_000, "head": 270}).claims
    return claim.verdict


def _run(args: tuple[int, int, int, int, int]) -> tuple[int, list[str]]:
    index, reps, draws, n_boot, base_seed = args
    return index, [replicate(CASES[index], base_seed + 10_007 * index + r, draws, n_boot) for r in range(reps)]


def calibrate(reps: int = 400, draws: int = 5, n_boot: int = 1000, workers: int = 1, seed: int = 20261201) -> list[dict]:
    """Per case: its truth, the number of replications and the share of each verdict."""
    jobs = [(i, reps, draws, n_boot, seed) for i in range(len(CASES))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            done = dict(pool.map(_run, jobs))
    else:
        done = dict(map(_run, jobs))
    out = []
    for i, case in enumerate(CASES):
        v = done[i]
        out.append({"case": case.name, "truth": "null" if case.null else "effect", "reps": len(v),
                    **{k: v.count(k) / len(v) for k in VERDICTS}})
    return out


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| case | truth | holds | breaks answers | does not hold | inconclusive | target |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "holds ≤ 0.05" if r["truth"] == "null" else "power"
        lines.append(f"| {r['case']} | {r['truth']} | **{r['holds']:.3f}** | {r['breaks answers']:.3f} | {r['does not hold']:.3f}"
                     f" | {r['inconclusive']:.3f} | {target} |")
    return "\n".join(lines)


def write_into(path: Path, text: str) -> None:
    """Replace what lies between the calibration markers of ``path`` with ``text``."""
    doc = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path}: no calibration markers ({BEGIN} ... {END})")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--intervals" in argv:  # the second part: the interval method's coverage (benchmarks/validation/calibration_intervals.py)
        from benchmarks.validation.calibration_intervals import main as intervals

        intervals([a for a in argv if a != "--intervals"])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI's version: 60 replications per case, 400 bootstrap draws")
    ap.add_argument("--reps", type=int, default=None, help="replications per case (default 400; --quick 60)")
    ap.add_argument("--draws", type=int, default=5, help="random-mask draws per replication (fit's default: 5)")
    ap.add_argument("--workers", type=int, default=1, help="processes")
    ap.add_argument("--write", type=Path, default=None, help="replace the table between the markers of this file")
    args = ap.parse_args(argv)
    reps = args.reps or (60 if args.quick else 400)
    n_boot = 400 if args.quick else 1000
    started = time.perf_counter()
    rows = calibrate(reps, args.draws, n_boot, args.workers)
    took = time.perf_counter() - started
    header = (f"`python -m benchmarks.validation.calibration{' --quick' if args.quick else ''}` ({datetime.date.today()}; {took:.0f} s,"
              f" {args.workers} process(es)): {reps} replications per case, {n_boot} bootstrap draws, {args.draws} random draws;"
              f" Monte Carlo SE of a rate of 0.05: {math.sqrt(0.05 * 0.95 / reps):.3f}.")
    text = table(rows, header)
    print(text)
    if args.write is not None:
        write_into(args.write, text)


if __name__ == "__main__":
    main()
