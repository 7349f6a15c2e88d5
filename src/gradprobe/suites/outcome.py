"""How a check can end, and the exit code of each ending: defined once, for the runner, the
JSON schema, JUnit and the command line.

A run exits with the largest code among its checks: 0 gradients match, 1 a gradient mismatch
(or a regression against a baseline), 2 a usage, configuration or input error, 3 a check crashed
or stopped early (timeout, budget), 130 interrupted by Ctrl-C (128 + SIGINT, as shells report
it) after writing what finished; 143 for SIGTERM, handled as Ctrl-C (:mod:`.stopping`).
"""

from __future__ import annotations

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_CRASH, EXIT_INTERRUPT = 0, 1, 2, 3, 130

#: Exit code of each status of a check, in the order reports list them.
EXIT_CODES = {
    "passed": EXIT_OK,
    "failed": EXIT_MISMATCH,  # a gradient mismatch
    "error": EXIT_USAGE,  # bad options or inputs
    "aborted": EXIT_CRASH,  # timeout or budget; the report is partial
    "crashed": EXIT_CRASH,  # the loss, grad or target raised, or the worker was killed
    "interrupted": EXIT_INTERRUPT,  # Ctrl-C; the report is partial
}
STATUSES = tuple(EXIT_CODES)
