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


def select_ids(id_list, n: int, source) -> list[int]:
    """The item ids a dataset of ``n`` entries (ids 0 ... n-1, in ``source``) serves: all of them
    for ``None``, else ``id_list`` ('0-9', '1,3,5-7', a list or an int). Refuses, naming
    ``source``: an empty dataset, an empty or malformed list, non-integers, repeated ids (an item
    would be solved twice) and ids outside 0 ... n-1."""
    if n <= 0:
        raise ValueError(f"{source} holds no items; check problem.data.root (or data.root)")
    if id_list is None:
        return list(range(n))
    if isinstance(id_list, bool) or (isinstance(id_list, str) and not id_list.strip()):
        raise ValueError(
            f"id_list={id_list!r} selects no item of {source}; use id_list=null for all "
            f"{n} items, or e.g. id_list=0-{min(n, 10) - 1}"
        )
    if isinstance(id_list, float) or (
        isinstance(id_list, Iterable)
        and not isinstance(id_list, str)
        and any(isinstance(v, (float, bool)) for v in id_list)
    ):
        raise ValueError(f"id_list={id_list!r} must hold integers (e.g. 0-9 or 1,3,5)")
    try:
        ids = parse_int_list(id_list)
    except ValueError as err:
        raise ValueError(
            f"id_list={id_list!r} is not a list of item ids ({err}); write e.g. 0-9 or 1,3,5-7"
        ) from None
    if not ids:
        raise ValueError(f"id_list={id_list!r} selects no item of {source}")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"id_list={id_list!r} names items {repeated[:8]} more than once")
    outside = [i for i in ids if not 0 <= i < n]
    if outside:
        raise ValueError(
            f"id_list={id_list!r}: ids {outside[:8]} are outside the {n} entries (0-{n - 1}) "
            f"of {source}"
        )
    return ids
