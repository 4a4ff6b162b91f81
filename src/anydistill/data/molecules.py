"""Molecules as labelled graphs (rdkit): heavy atoms are nodes labelled by element, bonds are
edges labelled by bond type. Shared by the molecule sources (``nci-alerts``, ``wehi-pains``)."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path
from typing import Any

import torch

from anydistill.core.errors import MissingPackageError
from anydistill.data.graphs import Graph, undirected

# The elements of the NCI and WEHI sets with more than a handful of atoms; the rest share one label.
ELEMENTS = ("C", "O", "N", "S", "Cl", "Br", "F", "P", "I", "B", "Si", "Se", "As")
OTHER_ELEMENT = len(ELEMENTS)
NUM_ELEMENT_LABELS = len(ELEMENTS) + 1
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")  # any other (dative: 1 bond in NCI) counts as single


def rdkit_missing(purpose: str) -> str | None:
    """The install line when rdkit is absent, else None."""
    if importlib.util.find_spec("rdkit") is None:
        return str(MissingPackageError("rdkit", "rdkit", purpose)).replace(" --no-deps", "")
    return None


def rdkit_data_file(*parts: str) -> Path:
    """A file shipped inside the rdkit wheel (``rdkit/Data/...``), read in place: nothing is downloaded."""
    path = Path(str(importlib.resources.files("rdkit").joinpath("Data", *parts)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in this rdkit install; the molecule sources were written for rdkit 2026.9.1.")
    return path


def molecule_graph(mol: Any, label: int) -> Graph:
    """The graph of an rdkit molecule: node labels index `ELEMENTS` (else `OTHER_ELEMENT`), edge
    labels index `BOND_TYPES` (else 0)."""
    element = {symbol: i for i, symbol in enumerate(ELEMENTS)}
    nodes = [element.get(atom.GetSymbol(), OTHER_ELEMENT) for atom in mol.GetAtoms()]
    bond = {name: i for i, name in enumerate(BOND_TYPES)}
    edges = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    kinds = [bond.get(str(b.GetBondType()), 0) for b in mol.GetBonds()]
    index, edge_labels = undirected(edges, kinds)
    return Graph(torch.tensor(nodes, dtype=torch.long), index, edge_labels, label)


def quiet_rdkit() -> None:
    """Silence rdkit's per-molecule parse warnings (the few unparsable SMILES are counted instead)."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
