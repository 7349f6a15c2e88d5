"""Starts the command line the way the installed ``gradprobe`` script does (tests/helpers.py:
``run_cli_script``): this file's folder, not the current one, is first on ``sys.path``."""

import sys

from gradprobe.cli import main

if __name__ == "__main__":
    sys.exit(main())
