"""Results of a check: the frozen result classes (:mod:`.model`), their text (:mod:`.text`) and
pictures (:mod:`.plot`). Nothing here computes a verdict. Internal: the public classes are
:class:`gradprobe.Report`, :class:`gradprobe.ParamReport`, :class:`gradprobe.Coverage`,
:class:`gradprobe.Diagnosis` and :class:`gradprobe.EntryCheck`."""
