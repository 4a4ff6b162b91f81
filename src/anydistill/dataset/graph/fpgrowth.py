"""FP-growth (Han, Pei & Yin, SIGMOD 2000): every itemset contained in at least ``min_support``
transactions, with its exact support, without enumerating candidates.

The transactions are compressed into a prefix tree (FP-tree) whose paths list each transaction's
frequent items in one global order (support descending, then item ascending: a total order, so
every transaction shares the longest possible prefix). The itemsets ending in item ``i`` are then
mined from ``i``'s conditional pattern base (the tree paths above i's nodes, weighted by their
counts), recursively. Each frequent itemset is produced exactly once.

Mirage runs it per class with an absolute support threshold (the official code calls
``pyfpgrowth.find_frequent_patterns``; `tests/dataset/test_mirage_mining.py` checks that both
return the same itemsets and supports).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class TooManyItemsets(ValueError):
    """The frequent itemsets outnumber the cap (their count grows as 2^k at a low support)."""


class _Node:
    __slots__ = ("children", "count", "item", "parent")

    def __init__(self, item: Hashable | None, parent: _Node | None):
        self.item, self.count, self.parent = item, 0, parent
        self.children: dict[Hashable, _Node] = {}


def _build(weighted: Iterable[tuple[list[Hashable], int]], rank: dict[Hashable, int]) -> dict[Hashable, list[_Node]]:
    """Insert the (items, weight) paths in ``rank`` order; returns the header table item -> its nodes."""
    root = _Node(None, None)
    header: dict[Hashable, list[_Node]] = {}
    for items, weight in weighted:
        node = root
        for item in sorted((i for i in items if i in rank), key=rank.__getitem__):
            child = node.children.get(item)
            if child is None:
                child = node.children[item] = _Node(item, node)
                header.setdefault(item, []).append(child)
            child.count += weight
            node = child
    return header


def _ranked(counts: dict[Hashable, int], min_support: int) -> dict[Hashable, int]:
    """Frequent items -> position in the global order (support descending, then item ascending)."""
    frequent = sorted((item for item, n in counts.items() if n >= min_support), key=lambda i: (-counts[i], i))
    return {item: position for position, item in enumerate(frequent)}


def fp_growth(transactions: Iterable[Iterable[Hashable]], min_support: int, *, max_itemsets: int | None = None) -> dict[frozenset, int]:
    """All itemsets occurring in at least ``min_support`` transactions.

    Args:
        transactions: ``T`` iterables of comparable, hashable items (repeats within one count once).
        min_support: the absolute support threshold, ``>= 1``.
        max_itemsets: stop with `TooManyItemsets` beyond this many itemsets (``None``: no cap).

    Returns:
        ``{frozenset(itemset): support}`` for every frequent itemset (singletons included).
    """
    if min_support < 1:
        raise ValueError(f"fp_growth needs an absolute support threshold >= 1, got {min_support}.")
    rows = [set(t) for t in transactions]
    counts: dict[Hashable, int] = {}
    for row in rows:
        for item in row:
            counts[item] = counts.get(item, 0) + 1
    rank = _ranked(counts, min_support)
    found: dict[frozenset, int] = {}
    _mine(_build(((list(r), 1) for r in rows), rank), rank, frozenset(), min_support, found, max_itemsets)
    return found


def _mine(header: dict[Hashable, list[_Node]], rank: dict[Hashable, int], suffix: frozenset, min_support: int,
          found: dict[frozenset, int], cap: int | None) -> None:
    # Items from the least to the most frequent: the paths above an item hold only items ranked before it.
    for item in sorted(header, key=rank.__getitem__, reverse=True):
        support = sum(node.count for node in header[item])
        if support < min_support:
            continue
        itemset = suffix | {item}
        found[itemset] = support
        if cap is not None and len(found) > cap:
            raise TooManyItemsets(f"more than {cap} frequent itemsets at support {min_support}")
        base = []  # the conditional pattern base: each path above one of item's nodes, weighted by its count
        for node in header[item]:
            path, parent = [], node.parent
            while parent is not None and parent.item is not None:
                path.append(parent.item)
                parent = parent.parent
            if path:
                base.append((path, node.count))
        counts: dict[Hashable, int] = {}
        for path, weight in base:
            for i in path:
                counts[i] = counts.get(i, 0) + weight
        # The conditional tree keeps the global order (restricted to its frequent items).
        conditional = {i: rank[i] for i, n in counts.items() if n >= min_support}
        if conditional:
            _mine(_build(base, conditional), conditional, itemset, min_support, found, cap)
