"""Small helpers shared by every layer."""

from __future__ import annotations

from collections.abc import Iterable


def parse_int_list(s) -> list[int] | None:
    """'1,2,5-10' -> [1, 2, 5, 6, 7, 8, 9, 10]; lists, tuples and ints pass through; None -> None.

    Ranges are inclusive, as in the reference (``id_list="0-9"`` is ten items).
    """
    if s is None:
        return None
    if isinstance(s, int):
        return [s]
    if isinstance(s, Iterable) and not isinstance(s, str):
        return [int(v) for v in s]
    out: list[int] = []
    for part in str(s).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
            lo, hi = int(lo), int(hi)
            if hi < lo:
                raise ValueError(f"bad range {part!r} in id list {s!r}: end before start")
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(part))
    return out
