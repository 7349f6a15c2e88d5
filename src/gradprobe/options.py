"""The options of :func:`gradprobe.check`, listed once.

:data:`OPTIONS` is the table: each option's name, default, validator (its kind), one line of
help, whether a suite file may set it and how to write it there, and how ``gradprobe check``
reads it from a ``--flag``. Everything else derives from it:

- :func:`validate_options` turns the raw keyword arguments of ``check`` into a
  :class:`CheckOptions` (the only validator: ``check``, suite files, the command line and
  ``sweep`` all call into it, so one rule gives one message everywhere);
- :data:`OPTION_NAMES` (what ``Problem`` accepts) and :data:`SUITE_KEYS` (what a suite table
  accepts besides ``target``, ``args`` and ``isolate``);
- :func:`option_problem` (what a suite file or a flag gets wrong, for messages that name the
  file, line and key, or the flag);
- :func:`settings` (the options in force, as ``report.settings`` records them).

``samples=`` has a module of its own (:mod:`gradprobe.samples`: per-parameter counts,
fractions or "all").

The signature of ``check`` is written by hand (for readers and IDEs); a test holds its defaults
to this table's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import InvalidInputError
from .numerics.steps import METHODS
from .samples import (
    CHECK_ALL_UP_TO,
    DEFAULT_SAMPLES,
    FIRST_SAMPLE,
    SampleSpec,
    samples_from_text,
    validate_samples,
)
from .validators import (
    DEFAULT_NONDET_TOL,
    DEFAULT_PROBES,
    _atol,
    _backend,
    _budget,
    _flag,
    _method,
    _n_jobs,
    _nondet_tol,
    _positive,
    _probes,
    _progress,
    _promote,
    _rtol,
    _seed,
)


# -- reading a --flag -------------------------------------------------------------------------
def _n_jobs_from_text(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an int or 'auto', found {text!r}") from None


# -- the table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One option of :func:`gradprobe.check`.

    Attributes
    ----------
    name : str
        The keyword (and, in a suite file, the key).
    default : object
        The default of ``check``'s signature.
    validate : callable
        ``validate(value, names)`` returns the validated value or raises
        :class:`InvalidInputError` (``"name: expected ..., found ..."``); ``names`` are the
        parameter names, or None where no parameter exists yet (a suite file).
    help : str
        One line: the command line's ``--help`` for the flag.
    suite_key : bool
        A suite file (``[defaults]``, ``[checks.NAME]``) may set it.
    toml_example : str
        How to write it in a suite file (the "Fix:" of a config error).
    from_text : callable or None
        Reads the value of ``gradprobe check``'s ``--flag`` (raises ``ValueError``); None where
        the option has no flag.
    """

    name: str
    default: Any
    validate: Callable[[Any, Sequence[str] | None], Any]
    help: str
    suite_key: bool = True
    toml_example: str = ""
    from_text: Callable[[str], Any] | None = None

    @property
    def flag(self) -> str:
        """The command-line flag: ``--n-jobs`` for ``n_jobs``."""
        return "--" + self.name.replace("_", "-")


_TABLE = (
    Option(
        "seed",
        0,
        _seed,
        "seed of the sample",
        toml_example="seed = 0",
        from_text=int,
    ),
    Option(
        "samples",
        None,
        validate_samples,
        "entries per parameter checked one by one: N, a fraction, or 'all'",
        toml_example='samples = 64, samples = 0.1, samples = "all" or samples = { W1 = 32 }',
        from_text=samples_from_text,
    ),
    Option("eps", None, _positive("eps"), "relative step", toml_example="eps = 1e-5"),
    Option("rtol", None, _rtol, "relative tolerance (< 1)", toml_example="rtol = 1e-5"),
    Option("atol", None, _atol, "absolute tolerance", toml_example="atol = 0.0"),
    Option(
        "method",
        "central",
        _method,
        f"finite-difference scheme: {', '.join(METHODS)}",
        toml_example='method = "richardson"',
    ),
    Option(
        "n_jobs",
        "auto",
        _n_jobs,
        "parallel workers: 'auto' (default: workers where they pay off), 1 serial, -1 all cores",
        toml_example="n_jobs = 2 or -1",
        from_text=_n_jobs_from_text,
    ),
    Option(
        "batched",
        False,
        _flag("batched"),
        "the loss evaluates a batch of perturbed parameters per call",
        toml_example="batched = true",
    ),
    Option(
        "timeout",
        None,
        _positive("timeout"),
        "seconds before stopping",
        toml_example="timeout = 60",
        from_text=float,
    ),
    Option(
        "budget",
        None,
        _budget,
        "loss evaluations before stopping",
        toml_example="budget = 10000",
        from_text=int,
    ),
    Option(
        "progress",
        None,
        _progress,
        "progress(done, total) called as loss evaluations are spent",
        suite_key=False,  # a callable: the runner passes its own
    ),
    Option(
        "promote",
        "auto",
        _promote,
        "cast parameters below float64 to float64 for the check (True), only to recheck what "
        'a float32 check left at the round-off floor ("auto"), or never (False)',
        toml_example='promote = true or promote = "auto"',
    ),
    Option(
        "probes",
        DEFAULT_PROBES,
        _probes,
        "random directions probed per parameter (0 or false: none; true: the default)",
        toml_example="probes = 4 or probes = 0",
    ),
    Option(
        "slice_probes",
        False,
        _flag("slice_probes"),
        "also probe each slice along the leading axis",
        toml_example="slice_probes = true",
    ),
    Option(
        "backend",
        None,
        _backend,
        "joblib backend of the workers: loky (processes), threading, dask (the active "
        "distributed.Client) or another registered name",
        toml_example='backend = "threading"',
        from_text=str,
    ),
    Option(
        "nondet_tol",
        None,
        _nondet_tol,
        f"relative jitter accepted between repeated evaluations (default {DEFAULT_NONDET_TOL:g})",
        toml_example="nondet_tol = 1e-10",
        from_text=float,
    ),
    Option(
        "thread_safe",
        False,
        _flag("thread_safe"),
        "the loss may run in several threads at once (n_jobs='auto' may then use threads)",
        toml_example="thread_safe = true",
    ),
)

#: Every option of :func:`gradprobe.check`, by name, in the order of its signature.
OPTIONS: Mapping[str, Option] = MappingProxyType({o.name: o for o in _TABLE})
#: The keyword options :func:`gradprobe.check` (and :class:`gradprobe.Problem`) accept.
OPTION_NAMES: tuple[str, ...] = tuple(OPTIONS)
#: The options a suite file may set.
SUITE_KEYS: tuple[str, ...] = tuple(o.name for o in _TABLE if o.suite_key)


# -- validation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckOptions:
    """Validated options of one check (see :func:`gradprobe.check` for each)."""

    seed: int
    samples: Mapping[str, SampleSpec]
    eps: float | None
    rtol: float | None
    atol: float | None
    method: str
    n_jobs: int | str
    batched: bool
    timeout: float | None
    budget: int | None
    progress: Callable[[int, int], None] | None
    promote: bool | str
    probes: int
    slice_probes: bool
    backend: str | None
    nondet_tol: float | None
    thread_safe: bool


def check_option(name: str, value: Any, names: Sequence[str] | None = None) -> Any:
    """Validate one option (``names``: the parameter names, when known); return its value.

    Raises
    ------
    InvalidInputError
        ``"name: expected ..., found ..."``; also for a name that is not an option.
    """
    option = OPTIONS.get(name)
    if option is None:
        raise InvalidInputError(
            f"{name}: not an option of gradprobe.check; expected one of {list(OPTION_NAMES)}."
        )
    return option.validate(value, names)


def option_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for option ``name`` (without the leading ``"name: "`` and
    the final period, for messages that name the place themselves), or None when it is fine.
    Parameter names are unknown here, so a mapping's keys are not checked."""
    try:
        check_option(name, value)
    except InvalidInputError as exc:
        text = str(exc)
        return text.removeprefix(f"{name}: ").removesuffix(".")
    return None


def validate_options(layout_names: Sequence[str], **raw: Any) -> CheckOptions:
    """Validate the options of one check (defaults for those not given).

    Parameters
    ----------
    layout_names : sequence of str
        The parameter names (``samples`` may be a mapping over them).
    **raw
        Options of :func:`gradprobe.check`, by name.

    Raises
    ------
    InvalidInputError
        The first bad option, named, with what was expected and found.
    """
    unknown = [k for k in raw if k not in OPTIONS]
    if unknown:
        raise InvalidInputError(
            f"unknown option(s) {unknown}; gradprobe.check accepts {list(OPTION_NAMES)}."
        )
    values = {
        o.name: o.validate(raw.get(o.name, o.default), layout_names) for o in OPTIONS.values()
    }
    conflict = options_conflict(values)
    if conflict is not None:
        raise InvalidInputError(f"{conflict[0]}: {conflict[1]}.")
    return CheckOptions(**values)


def options_conflict(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(option, problem)`` when options valid one by one contradict each other, else None
    (``values``: validated or suite-file values; suite files call it when they are read)."""
    probes = values.get("probes", DEFAULT_PROBES)
    probes = DEFAULT_PROBES if probes is True else int(probes or 0)
    if values.get("slice_probes") and not probes:
        return "slice_probes", "True needs probes; found probes=0. Pass probes=1 or more"
    samples = values.get("samples")
    specs = samples.values() if isinstance(samples, Mapping) else [samples]
    if not probes and any(s == 0 or s == SampleSpec("count") for s in specs):
        return "samples", (
            "0 entries checked one by one with probes=0 would check nothing; keep the probes "
            "(samples=0 means probes only) or check some entries"
        )
    return None


def settings(options: CheckOptions, executor: str) -> dict[str, Any]:
    """The options in force as ``report.settings`` records them (``executor``: where the loss
    ran, from the evaluator)."""

    def spec(s: SampleSpec) -> Any:
        if s.mode == "default":
            return (
                f"adaptive (all up to {CHECK_ALL_UP_TO}, else {FIRST_SAMPLE}, grown to "
                f"{DEFAULT_SAMPLES} where the evidence disagrees)"
                if options.probes
                else f"default (all up to {DEFAULT_SAMPLES}, else {DEFAULT_SAMPLES})"
            )
        if s.mode == "all":
            return "all"
        return int(s.value) if s.mode == "count" else s.value

    return {
        "method": options.method,
        "eps": options.eps,
        "rtol": options.rtol,
        "atol": options.atol,
        "samples": {k: spec(v) for k, v in options.samples.items()},
        "n_jobs": options.n_jobs,
        "executor": executor,
        "timeout": options.timeout,
        "budget": options.budget,
        "probes": options.probes,
        "slice_probes": options.slice_probes,
        "nondet_tol": options.nondet_tol,
        "thread_safe": options.thread_safe,
    }
