"""The calibration suite's second part: coverage of the mean |SMD| intervals, of paired differences and of the noise floor.

    python -m benchmarks.validation.calibration --intervals          # the interval tables of docs/method.md ("Statistics")
    python -m benchmarks.validation.calibration --intervals --quick  # smoke run: few replications, fewer draws

What this part checks is narrower than the claims' calibration (:mod:`benchmarks.validation.calibration`): normal answers of one
or two arms, no inlier window, no random controls, intervals alone. It is the evidence for the interval METHOD (the
percentile interval rather than BCa), not for the error rates of a claim.

The design's sample sizes: 20 names per group; m = 10 or 100 answers per name and variation;
within-name correlation rho = 0 or 0.2; V = 3 or 10 variations. The model of one answer about name n in
variation v (total within-group variance 1, so the population SMD of variation v is delta_v)::

    y = delta_v [n in reference group] + u_nv + e,     e ~ N(0, 1 - rho)
    u_nv = sqrt(rho) (sqrt(kappa) a_n + sqrt(1 - kappa) b_nv),    a_n, b_nv ~ N(0, 1)

kappa is the correlation of a name's effect across variations (default 1: each name carries the same
effect in every variation, the case that makes clustering across variations matter most). The
simulation draws each name's sufficient statistics exactly (mean ~ N(delta + u, (1 - rho)/m),
m2 ~ (1 - rho) chi2_{m-1}) rather than m answers; the bootstrap sees exactly what it would see from the
answers. For paired arms, arm B's name effect is ``lam * u^A + sqrt(1 - lam^2) * fresh`` (lam = 0.5).

Estimands. ``pop``: the population mean |SMD|, mean_v |delta_v| (0 under no bias). ``E``: the expected
estimate E[mean_v |d_v|], estimated by the average estimate over the replications of the cell (its Monte
Carlo error is about sd/sqrt(R)); reported for delta = 0, where ``pop`` = 0 cannot be covered by any
interval of positive numbers. For differences the estimand is the population difference.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from biasprune.stats.bootstrap import NameMoments, null_mean_abs_smd, paired_bootstrap
from biasprune.stats.intervals import arm_interval, difference_interval

K = 20  # names per group


@dataclass(frozen=True)
class Cell:
    kind: str  # "arm" | "diff" | "null"
    m: int
    rho: float
    v: int
    delta: float
    delta_b: float = 0.0
    kappa: float = 1.0
    lam: float = 0.5


def simulate(rng: np.random.Generator, cell: Cell, deltas: tuple[float, ...]) -> NameMoments:
    """Sufficient statistics of one arm per entry of ``deltas`` (the population SMD of every variation)."""
    groups = np.repeat([0, 1], K)
    names = np.array([f"n{i:02d}" for i in range(2 * K)], dtype=object)

    def effects() -> np.ndarray:  # u [V, 2K]: variance rho, correlation kappa across variations
        shared = math.sqrt(cell.kappa) * rng.standard_normal((1, 2 * K))
        return math.sqrt(cell.rho) * (shared + math.sqrt(1 - cell.kappa) * rng.standard_normal((cell.v, 2 * K)))

    base = effects()
    count = np.full((len(deltas), cell.v, 2 * K), float(cell.m))
    mean = np.empty_like(count)
    m2 = np.empty_like(count)
    for i, d in enumerate(deltas):
        u = base if i == 0 else cell.lam * base + math.sqrt(1 - cell.lam**2) * effects()
        noise = rng.standard_normal((cell.v, 2 * K)) * math.sqrt((1 - cell.rho) / cell.m)
        mean[i] = d * (groups == 0) + u + noise
        m2[i] = (1 - cell.rho) * rng.chisquare(cell.m - 1, size=(cell.v, 2 * K))
    return NameMoments(names, groups, count, mean, m2)


def run_cell(args: tuple[int, Cell, int, int]) -> dict:
    index, cell, reps, n_boot = args
    rng = np.random.default_rng([20261129, index])
    rows = []
    for r in range(reps):
        if cell.kind == "null":
            m = simulate(rng, cell, (0.0,))
            floor = null_mean_abs_smd(m, n_perm=n_boot, seed=r)
            rows.append(
                {"below_p95": floor.observed <= floor.p95, "reject": floor.p_value <= 0.05, "est": floor.observed}
            )
            continue
        deltas = (cell.delta,) if cell.kind == "arm" else (cell.delta, cell.delta_b)
        m = simulate(rng, cell, deltas)
        boot = paired_bootstrap(m, n_boot=n_boot, seed=r)
        row = {}
        for method in ("bca", "percentile"):
            iv = (
                arm_interval(boot, 0, method=method)
                if cell.kind == "arm"
                else difference_interval(boot, 0, 1, method=method)
            )
            row[method] = (iv.low, iv.high, bool(iv.note))
        row["est"] = float(boot.estimate[0] - (boot.estimate[1] if cell.kind == "diff" else 0.0))
        rows.append(row)
    return {"index": index, "cell": cell, "rows": rows}


def summarise(result: dict) -> dict:
    cell, rows = result["cell"], result["rows"]
    est = np.array([r["est"] for r in rows])
    if cell.kind == "null":
        return {
            "cell": cell,
            "below_p95": np.mean([r["below_p95"] for r in rows]),
            "reject": np.mean([r["reject"] for r in rows]),
            "mean_est": est.mean(),
            "n": len(rows),
        }
    pop = abs(cell.delta) if cell.kind == "arm" else abs(cell.delta) - abs(cell.delta_b)
    expected = est.mean()
    out = {"cell": cell, "pop": pop, "mean_est": expected, "n": len(rows)}
    for method in ("bca", "percentile"):
        lo = np.array([r[method][0] for r in rows])
        hi = np.array([r[method][1] for r in rows])
        out[method] = {
            "pop": np.mean((lo <= pop) & (pop <= hi)),
            "E": np.mean((lo <= expected) & (expected <= hi)),
            "above0": np.mean(lo > 0),
            "below0": np.mean(hi < 0),
            "width": np.mean(hi - lo),
            "excl_est": np.mean((est < lo) | (est > hi)),
        }
    return out


def cells() -> list[Cell]:
    grid = list(itertools.product((10, 100), (0.0, 0.2), (3, 10)))
    out = [Cell("arm", m, rho, v, d) for d in (0.0, 0.15, 0.3, 0.8) for m, rho, v in grid]
    out += [
        Cell("diff", m, 0.2, v, da, db)
        for da, db in ((0.0, 0.0), (0.3, 0.3), (0.3, 0.0), (0.8, 0.3))
        for m, v in itertools.product((10, 100), (3, 10))
    ]
    out += [Cell("null", m, rho, 3, 0.0) for m, rho in itertools.product((10, 100), (0.0, 0.2))]
    return out


def _params(cell: Cell, *fields: str) -> list[str]:
    return [f"{getattr(cell, f):g}" for f in fields]


def _table(header: list[str], rows: list[list[object]]) -> None:
    def fmt(x: object) -> str:
        return f"{x:.3f}" if isinstance(x, (float, np.floating)) else str(x)

    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(fmt(x) for x in row) + " |")


def print_tables(summaries: list[dict], reps: int, n_boot: int) -> None:
    se = math.sqrt(0.95 * 0.05 / reps)
    print(f"\nReplications per cell: {reps}; bootstrap draws: {n_boot}; 95% intervals.")
    print(f"Monte Carlo SE of a 95% coverage ~ {se:.3f}. 20 names per group; kappa = 1 (a name's effect is the same in")
    print("every variation).\n")
    print("Mean |SMD| of one arm. cover pop: covers the population mean |SMD|, mean_v |delta_v|; cover E: covers")
    print("E[estimate] (read it on the delta = 0 rows); excl: share of intervals that exclude their own estimate.\n")
    arms = [s for s in summaries if s["cell"].kind == "arm"]
    _table(
        ["m", "rho", "V", "delta", "E[est]", "pct cover pop", "pct cover E", "pct width", "pct excl"]
        + ["BCa cover pop", "BCa cover E", "BCa width", "BCa excl"],
        [
            [*_params(s["cell"], "m", "rho", "v", "delta"), s["mean_est"]]
            + [s[k][f] for k in ("percentile", "bca") for f in ("pop", "E", "width", "excl_est")]
            for s in arms
        ],
    )
    print("\nPaired difference mean|SMD|(A) - mean|SMD|(B), rho = 0.2, lam = 0.5. cover: covers |delta_A| - |delta_B|;")
    print(">0 / <0: share of intervals entirely above / below 0 (the 'holds' / 'does not hold' side of a claim).\n")
    diffs = [s for s in summaries if s["cell"].kind == "diff"]
    _table(
        ["m", "V", "delta_A", "delta_B", "E[est]", "pct cover", "pct >0", "pct <0", "pct width"]
        + ["BCa cover", "BCa >0", "BCa <0", "BCa width"],
        [
            [*_params(s["cell"], "m", "v", "delta", "delta_b"), s["mean_est"]]
            + [s[k][f] for k in ("percentile", "bca") for f in ("pop", "above0", "below0", "width")]
            for s in diffs
        ],
    )
    print("\nNoise floor under no bias (V = 3): share of arms whose mean |SMD| is <= the floor's p95 (target 0.95),")
    print("and share with permutation p <= 0.05 (target 0.05).\n")
    nulls = [s for s in summaries if s["cell"].kind == "null"]
    _table(
        ["m", "rho", "V", "mean est", "<= p95", "p <= 0.05"],
        [[*_params(s["cell"], "m", "rho", "v"), s["mean_est"], s["below_p95"], s["reject"]] for s in nulls],
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 replications, 400 draws")
    parser.add_argument("--reps", type=int, default=500, help="replications per cell")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws (and permutations for the floor)")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    args = parser.parse_args(argv)
    reps, n_boot = (30, 400) if args.quick else (args.reps, args.n_boot)
    start = time.perf_counter()
    jobs = [(i, c, reps, n_boot) for i, c in enumerate(cells())]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(run_cell, jobs))
    else:
        results = [run_cell(j) for j in jobs]
    summaries = [summarise(r) for r in sorted(results, key=lambda r: r["index"])]
    command = "python -m benchmarks.validation.calibration --intervals" + (" --quick" if args.quick else "")
    print(f"{command}  ({datetime.date.today()}, {time.perf_counter() - start:.0f} s, {args.workers} workers)")
    print_tables(summaries, reps, n_boot)
    return summaries


if __name__ == "__main__":
    main()
