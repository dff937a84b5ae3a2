"""The ``biasprune`` command: ``fit``, ``validate``, ``study`` (the Lightning CLI), ``plant`` and ``report``.

Errors in the configuration or the input files print one line (``biasprune: error: ...``) and exit with
status 2; ``--debug`` (or ``BIASPRUNE_DEBUG=1``) shows the traceback. A run that fails after its directory
was created leaves a ``FAILED`` file there with the reason, so that nobody takes it for a result. Heavy
imports (Lightning, torch) happen only for the subcommands that need them.

* :mod:`.lightning`: the Lightning CLI (``fit``, ``validate``, ``study``);
* :mod:`.errors`: the errors a user can cause, printed in one line.

May import: everything below it; it is the top floor.
"""

from __future__ import annotations

import os
import sys

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    debug = os.environ.get("BIASPRUNE_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    from biasprune.cli.errors import USER_ERRORS

    try:
        if argv and argv[0] == "plant":
            from biasprune.plant.cli import main as plant_main

            plant_main(argv[1:])
        elif argv and argv[0] == "report":
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


if __name__ == "__main__":
    main()
