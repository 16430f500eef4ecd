"""The ``compat`` run key: which of two behaviours the physics, metrics and algorithms follow.

* ``reference``: the numbers of InverseBench (Zheng et al., ICLR 2025; github devzhk/InverseBench
  at b113d67) on identical inputs, to float rounding -- the quirks that change its numbers
  included, so results stand beside the paper's tables. Only crashes, state that leaks from one
  test item to the next, and results that depend on the batch stay fixed.
* ``corrected``: this project's physically and mathematically corrected versions.

Every difference between the two is listed, with its evidence and measured effect, in
``docs/deviations.md``; the parity fixtures under ``tests/fixtures/reference/`` hold the
reference's own outputs. The paper-size problem configs default to ``reference``, the project's
own (every ``-small`` config, gmm, grf, navier-stokes-grf) to ``corrected``.
"""

from __future__ import annotations

MODES = ("reference", "corrected")


def check_compat(value, who: str = "compat") -> str:
    """``value`` if it is one of ``MODES``; a clear error otherwise."""
    if value not in MODES:
        raise ValueError(
            f"{who}={value!r} is not a compat mode; use compat=reference (InverseBench's numbers) "
            "or compat=corrected (this project's corrected versions); see docs/deviations.md"
        )
    return value
