"""The `rmt` command's entry point (also `python -m rmt_cli`). It imports nothing heavy itself, so that a Ctrl-C,
SIGTERM or SIGHUP while the CLI's libraries load (typer, rich, then torch) still ends as an interrupt does:
"interrupted", exit 130, no traceback (faults T31)."""

import sys

from .errors import ignore_stop_signals, stop_like_ctrl_c


def main() -> None:
    stop_like_ctrl_c()
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        ignore_stop_signals()
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
