"""Write the method the comparison chose into the configs that follow it: the default follows the evidence.

    python -m benchmarks.analysis.apply_method OUT/chosen_method.json [CONFIG.yaml ...] [--check]

``chosen_method.json`` is written by :mod:`benchmarks.analysis.methods_table` (the fixed dev-only rule of
docs/results.md, "Choosing the method"). In each config (default: :data:`CONFIGS`) every line that ends with a
marker ``# method: FIELD`` gets its value replaced, key, indentation and marker kept:

* ``objective`` -> the chosen ``--model.objective``;
* ``rule`` -> the chosen ``--pruning.rule``; ``rules`` -> ``[rule]`` (a study's ``grid.rules``: the study still
  chooses its budgets on dev, with the chosen method only);
* ``budget``, ``head_budget`` -> the chosen matched budgets (for a ``fit`` config; a study chooses its own).

Nothing else changes, so the diff is the method and nothing but the method. ``--check`` changes nothing and exits
1 when a config differs from the choice (e.g. in a test or before committing). A choice of ``null`` (no admissible
arm) leaves the configs as they are and says so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

CONFIGS = ("configs/study_purchase.yaml", "configs/study_all.yaml")
MARKER = re.compile(r"^(?P<head>\s*[A-Za-z_]+:\s*)(?P<value>.*?)(?P<tail>\s+# method: (?P<field>[a-z_]+)\s*)$")


def values(chosen: dict) -> dict[str, str]:
    """YAML values of each marker field from the choice (objective, rule, budget, head_budget)."""
    return {"objective": chosen["objective"], "rule": chosen["rule"], "rules": f"[{chosen['rule']}]",
            "budget": json.dumps(str(chosen["budget"])), "head_budget": str(chosen["head_budget"])}  # fmt: skip


def apply(text: str, chosen: dict, source: str = "config") -> str:
    """``text`` with every marked line's value replaced (module docstring); a config without markers is refused."""
    new, n = values(chosen), 0
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        m = MARKER.match(body)
        if m:
            field = m["field"]
            if field not in new:
                raise SystemExit(f"{source}: marker '# method: {field}' names no field; valid choices: {sorted(new)}")
            body = f"{m['head']}{new[field]}{m['tail']}"
            n += 1
        out.append(body + ("\n" if line.endswith("\n") else ""))
    if not n:
        raise SystemExit(f"{source}: no line ends with '# method: FIELD'; nothing to fill")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chosen", type=Path, help="chosen_method.json of methods_table")
    parser.add_argument("configs", nargs="*", type=Path, default=[Path(c) for c in CONFIGS])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a config differs from the choice")
    args = parser.parse_args(argv)
    chosen = json.loads(args.chosen.read_text())["chosen"]
    if chosen is None:
        print(f"{args.chosen}: the fixed rule chose no method (no arm admissible on every plant biased on dev); configs unchanged")
        return 0
    differ = []
    for path in args.configs:
        text = path.read_text()
        new = apply(text, chosen, str(path))
        if new != text:
            differ.append(path)
            if not args.check:
                path.write_text(new)
    what = "differ from" if args.check else "now follow"
    print(f"{len(differ)} of {len(args.configs)} config(s) {what} {chosen}: {[str(p) for p in differ]}")
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
