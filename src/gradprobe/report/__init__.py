"""Results of a check: the frozen result classes (:mod:`.model`), their text (:mod:`.text`) and
pictures (:mod:`.plot`). Nothing here computes a verdict."""

from __future__ import annotations

from .model import SCHEMA_VERSION, Coverage, Diagnosis, EntryCheck, ParamReport, Report

__all__ = ["SCHEMA_VERSION", "Coverage", "Diagnosis", "EntryCheck", "ParamReport", "Report"]
