"""WEHI screening molecules labelled by RDKit's PAINS filters (rdkit; offline, labels cached).

The 10,000 SMILES of ``rdkit/Data/Pains/test_data/wehi_mols.csv`` shipped in the rdkit wheel; a
molecule is positive when any filter of RDKit's PAINS catalogue (A, B and C) matches it (8.4 %).
Matching takes about 15 s here, so the labels are computed once and stored in
``<cache_dir>/wehi-pains-<key>.json``, keyed by the SHA-256 of the file, the rdkit version and the
number of molecules; a file whose key or length does not match is recomputed, never used.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

from anydistill.core.recipe import PositiveInt
from anydistill.data.graphs import Graph, GraphData
from anydistill.data.molecules import (
    BOND_TYPES,
    NUM_ELEMENT_LABELS,
    molecule_graph,
    quiet_rdkit,
    rdkit_data_file,
    rdkit_missing,
)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/anydistill`` (``~/.cache/anydistill`` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anydistill"


def pains_labels(mols: list, cache: Path) -> list[int]:
    """1 for each molecule a PAINS filter matches, read from ``cache`` when it holds them."""
    if cache.is_file():
        labels = json.loads(cache.read_text()).get("labels")
        if isinstance(labels, list) and len(labels) == len(mols):
            return labels
    from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

    params = FilterCatalogParams()
    params.AddCatalog(FilterCatalogParams.FilterCatalogs.PAINS)
    catalog = FilterCatalog(params)
    labels = [int(catalog.HasMatch(mol)) for mol in mols]
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"labels": labels}))
    os.replace(temporary, cache)  # a concurrent run reads the old file or the new one, never half of one
    return labels


class WEHIPainsData(GraphData):
    """WEHI molecules; class 1 = a PAINS substructure (element node labels, bond-type edge labels).

    Args:
        limit: keep the first N molecules (tests); all 10,000 by default.
        cache_dir: where the computed labels are kept (default ``~/.cache/anydistill``).
        split_seed: the seed of the 80/10/10 stratified split.
    """

    num_node_labels = NUM_ELEMENT_LABELS
    num_edge_labels = len(BOND_TYPES)
    num_classes = 2
    description = "WEHI molecules (rdkit's wehi_mols.csv), PAINS labels"

    def __init__(self, limit: PositiveInt | None = None, cache_dir: str | None = None, split_seed: int = 0):
        super().__init__(split_seed)
        self.limit, self.cache_dir = limit, cache_dir

    @classmethod
    def missing_package(cls) -> str | None:
        return rdkit_missing("The wehi-pains data")

    def load_graphs(self) -> list[Graph]:
        import rdkit
        from rdkit import Chem

        quiet_rdkit()
        path = rdkit_data_file("Pains", "test_data", "wehi_mols.csv")
        text = path.read_text()
        rows = [row for row in csv.reader(text.splitlines()) if row][: self.limit]
        mols = [mol for mol in (Chem.MolFromSmiles(row[0]) for row in rows) if mol is not None]
        key = hashlib.sha256(f"{hashlib.sha256(text.encode()).hexdigest()}|{rdkit.__version__}|{len(mols)}".encode()).hexdigest()[:16]
        cache = (Path(self.cache_dir) if self.cache_dir else default_cache_dir()) / f"wehi-pains-{key}.json"
        return [molecule_graph(mol, label) for mol, label in zip(mols, pains_labels(mols, cache))]
