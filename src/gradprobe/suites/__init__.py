"""Nightly jobs: problems, check targets, TOML suites, the isolated runner, baselines, JUnit
and progress. Internal: the public entry points are ``gradprobe run`` and
:class:`gradprobe.Problem`."""
