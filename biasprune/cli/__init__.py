"""The ``biasprune`` command: ``fit``, ``validate``, ``study`` (the Lightning CLI), ``plant`` and ``report``.

An error a user caused (:data:`biasprune.core.errors.USER_ERRORS`: the project's own error classes) prints one
line (``biasprune: error: ...``) and exits with status 2; any other exception is a bug and keeps its traceback;
``--debug`` (or ``BIASPRUNE_DEBUG=1``) shows the traceback of both. ``biasprune --help`` lists the subcommands
from :data:`SUBCOMMANDS` without importing torch or Lightning; each subcommand's heavy imports happen only when
it runs. A run's directory tells its own state in ``manifest.json`` (docs/failures.md).

* :mod:`.lightning`: the Lightning CLI (``fit``, ``validate``, ``study``), its help and its early checks;
* :mod:`.runstate`: the manifest through a run's life: stages, interruption, resume command, failure.

May import: everything below it; it is the top floor.
"""

from __future__ import annotations

import os
import sys

from biasprune.core.errors import USER_ERRORS

__all__ = ["SUBCOMMANDS", "main", "overview"]

#: Every subcommand with its one-line summary, in the order ``biasprune --help`` lists them.
SUBCOMMANDS: dict[str, str] = {
    "fit": "score every unit, select the masks, evaluate every arm on the test names and write the report",
    "validate": "evaluate the unpruned model, and a masks file's arms (--pruning.masks_file), on the evaluation prompts",
    "study": "prompt-specific vs within-context vs cross-context pruning, tuned on dev names, reported on test names",
    "plant": "train a planted control (a LoRA adapter that puts a known bias into a model); plant check|truth: check runs on it",
    "report": "check a run directory against its manifest and rebuild its report.html (no model is loaded)",
}
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "study")


def overview() -> str:
    """The text of ``biasprune --help``."""
    from biasprune import __version__

    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: biasprune SUBCOMMAND [--config FILE ...] [--GROUP.KEY VALUE ...] [--debug]",
        "",
        f"biasprune {__version__}: find and prune the units of an instruct LLM that drive racially biased answers, and",
        "measure whether that helps (docs/method.md).",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {summary}" for name, summary in SUBCOMMANDS.items()),
        "",
        "`biasprune SUBCOMMAND --help` lists the subcommand's options; fit, validate and study share the groups",
        "--model.*, --data.*, --pruning.* and --trainer.* (`--help trainer` shows Lightning's trainer options).",
        "An error in the configuration or an input prints one line; --debug shows the traceback. A run that",
        "stops early says so in its manifest.json and in `biasprune report` (docs/failures.md).",
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    debug = os.environ.get("BIASPRUNE_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    if argv[0] == "--version":
        from biasprune import __version__

        print(f"biasprune {__version__}")
        return
    if not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        print(f"biasprune: error: unknown subcommand {argv[0]!r}; valid choices: {list(SUBCOMMANDS)} (biasprune --help)",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        if argv[0] == "plant":
            from biasprune.plant.cli import main as plant_main

            plant_main(argv[1:])
        elif argv[0] == "report":
            from biasprune.report.cli import main as report_main

            report_main(argv[1:])
        else:
            from biasprune.cli.lightning import run_lightning_cli

            run_lightning_cli(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        message = " ".join(str(err).split())  # one line, whatever the error's own layout
        print(f"biasprune: error: {message}\n(run again with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # before a run started (a run's own interruption is recorded in its manifest)
        if debug:
            raise
        print("\nbiasprune: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
