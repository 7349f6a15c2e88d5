"""Vector-valued functions, layer objects and second order, checked by :func:`gradprobe.check`.

Each check here reduces to ``check`` (the same engine and :class:`gradprobe.Report`, one row
per input) through one seeded random cotangent ``G``: the loss is ``sum vdot(G, f(x))``.

- :func:`gradprobe.check_vjp`: a hand-written backward ``vjp(x, G)`` (:mod:`.vjp`);
- :func:`gradprobe.check_hvp`: a Hessian-vector product, the VJP of the gradient (:mod:`.vjp`);
- :func:`gradprobe.check_jvp`: a forward-mode ``jvp(x, t)``, one call per input entry (:mod:`.jvp`);
- :func:`gradprobe.check_layer`: a stateful layer object with ``forward``/``backward`` methods, its
  parameters and its input (:mod:`.layer`);
- :func:`gradprobe.check_forward_backward`: the cs231n pair ``forward(x, w, b) -> (out, cache)``,
  ``backward(dout, cache) -> (dx, dw, db)`` (:mod:`.pair`).

:mod:`.contraction` holds what ``check`` is handed (the contraction loss and the guarded
backward) and :mod:`.reduction` the one setup and run of every check here and of the
framework adapters (:mod:`.adapted`). Internal: the public names are the five above, in
:mod:`gradprobe`.
"""
