"""Reading a rate card: the labour and travel rate for a claim, a region's rate first.

A card (`{"labour": [...], "travel": [...]}`, as loaded from finance's CSV) says `*` where a
rate holds everywhere (or for every category); a row for the claim's province wins over it.
"""

from __future__ import annotations


def labour_rate(card: dict | None, order_type: str, category: str, region: str) -> int | None:
    if not card:
        return None
    found = {(r["order_type"], r["category"], r["region"]): r["cents"] for r in card["labour"]}
    for key in ((order_type, category, region), (order_type, category, "*"),
                (order_type, "*", region), (order_type, "*", "*")):
        if key in found:
            return found[key]
    return None


def travel_rate(card: dict | None, km: int, region: str) -> int | None:
    """The first band reaching `km` (the last band beyond them), from the region's bands if
    it has any, else the bands for everywhere."""
    if not card:
        return None
    for wanted in (region, "*"):
        bands = sorted((r["up_to_km"], r["cents"]) for r in card["travel"]
                       if r["region"] == wanted)
        if bands:
            return next((cents for up_to, cents in bands if km <= up_to), bands[-1][1])
    return None
