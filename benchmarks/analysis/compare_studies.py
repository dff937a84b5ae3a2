"""Two runs of one study against each other (say 1 GPU and 2): the same pieces and the same metric rows.

    python -m benchmarks.analysis.compare_studies DIR_A DIR_B [--rtol 1e-5]

Each DIR is a study's ``--study.output`` (pieces in DIR/pieces). Prints, and exits 1 unless all hold:
the same piece keys; every score sum equal within ``rtol`` on its tensor's scale (|b - a| / max|a|: what decides
a ranking; the largest entry-wise relative difference is printed too, float32 sums of small entries reach
1e-5 when the thread count or reduction order changes); every sampled answer identical (an answer piece's key holds the digest of its masks: the same keys mean the same masks); the metric rows of metrics.csv in the same order with SMDs equal to 1e-9 relative.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from biasprune.study.pieces import PieceStore


def _keys(root: Path, kind: str) -> list[str]:
    folder = root / "pieces" / kind
    return sorted(p.name.split(".")[0] for p in folder.iterdir()) if folder.is_dir() else []


def compare(a: Path, b: Path, rtol: float = 1e-5) -> tuple[bool, list[str]]:
    lines, ok = [], True
    sa, sb = PieceStore(a / "pieces"), PieceStore(b / "pieces")
    for kind in ("scores", "answers"):
        ka, kb = _keys(a, kind), _keys(b, kind)
        if ka != kb:
            ok = False
            lines.append(f"{kind} pieces differ: {len(set(ka) - set(kb))} only in {a}, {len(set(kb) - set(ka))} only in {b}")
    worst = scaled = 0.0
    for key in sorted(set(_keys(a, "scores")) & set(_keys(b, "scores"))):
        x, y = sa.read_scores(key), sb.read_scores(key)
        for group in x:
            for unit, t in x[group].items():
                u = y[group][unit].to(t.dtype)
                if t.numel():
                    d = (u - t).abs()
                    worst = max(worst, float((d / t.abs().clamp(min=1e-30)).max()))
                    scaled = max(scaled, float(d.max()) / max(float(t.abs().max()), 1e-30))
    ok &= scaled <= rtol
    lines.append(f"score pieces: {len(_keys(a, 'scores'))}; largest difference on the tensor's scale {scaled:.1e} (rtol {rtol:g}),"
                 f" entry-wise relative {worst:.1e}")
    same = differ = 0
    for key in sorted(set(_keys(a, "answers")) & set(_keys(b, "answers"))):
        ra, rb = sa.read_answers(key), sb.read_answers(key)
        if [r["responses"] for r in ra] == [r["responses"] for r in rb]:
            same += 1
        else:
            differ += 1
    ok &= differ == 0
    lines.append(f"answer pieces: {same} identical, {differ} different")
    rows = [list(csv.DictReader(open(d / "metrics.csv"))) for d in (a, b)]
    ident = [[(r["arm"], r["variation"], r["split"]) for r in rs] for rs in rows]
    smd = 0.0
    if ident[0] == ident[1]:
        for x, y in zip(*rows):
            fx, fy = float(x["smd"]), float(y["smd"])
            if math.isnan(fx) != math.isnan(fy):
                smd = math.inf
            elif not math.isnan(fx):
                smd = max(smd, abs(fx - fy) / max(abs(fx), 1e-12))
        lines.append(f"metric rows: {len(rows[0])}, same order; largest relative SMD difference {smd:.1e}")
    else:
        lines.append(f"metric rows differ: {len(rows[0])} vs {len(rows[1])} (arm, variation, split)")
    ok &= ident[0] == ident[1] and smd <= 1e-9
    return ok, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--rtol", type=float, default=1e-5)
    args = p.parse_args()
    ok, lines = compare(args.a, args.b, args.rtol)
    print("\n".join(lines))
    print("equal" if ok else "NOT equal")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
