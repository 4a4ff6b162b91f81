"""NCI molecules labelled by mutagenicity structural alerts (rdkit; offline).

The 4,999 SMILES of ``rdkit/Data/NCI/first_5K.smi`` shipped in the rdkit wheel (4,991 parse).
A molecule is positive when it matches any alert of `ALERTS` (22.9 % positive). The labels are a
rule, not an assay: ROC-AUC here is not comparable with NCI1 or ogbg figures.
"""

from __future__ import annotations

import functools

from anydistill.data.graphs import Graph, GraphData
from anydistill.data.molecules import (
    BOND_TYPES,
    NUM_ELEMENT_LABELS,
    molecule_graph,
    quiet_rdkit,
    rdkit_data_file,
    rdkit_missing,
)

# Mutagenicity structural alerts (Ashby-style, the Benigni-Bossa and Kazius lists' classics), as SMARTS.
ALERTS = {
    "aromatic nitro": "a[$([NX3](=O)=O),$([NX3+](=O)[O-])]",
    "aromatic amine": "[c][NX3;H2,H1,H0;!$(NC=[O,S]);!$(N~[!#6;!#1])]",  # not an amide, N bonded to carbons only
    "N-nitroso": "[#7][NX2]=O",
    "epoxide": "C1OC1",
    "aziridine": "C1NC1",
    "azide": "[$(N=[N+]=[N-]),$([N-][N+]#N)]",
    "primary alkyl halide": "[CH2X4][Cl,Br,I]",
}


class NCIAlertsData(GraphData):
    """4,991 NCI molecules; class 1 = at least one mutagenicity alert (element node labels, bond-type edge labels).

    Args:
        split_seed: the seed of the 80/10/10 stratified split.
    """

    num_node_labels = NUM_ELEMENT_LABELS
    num_edge_labels = len(BOND_TYPES)
    num_classes = 2
    description = "NCI molecules (rdkit's first_5K.smi), structural-alert labels"

    @classmethod
    def missing_package(cls) -> str | None:
        return rdkit_missing("The nci-alerts data")

    def load_graphs(self) -> list[Graph]:
        return list(_alert_graphs())


@functools.lru_cache(maxsize=1)
def _alert_graphs() -> tuple[Graph, ...]:
    """The parsed molecules, once per process (a run sets its data up more than once)."""
    from rdkit import Chem

    quiet_rdkit()
    alerts = [Chem.MolFromSmarts(smarts) for smarts in ALERTS.values()]
    graphs = []
    for line in rdkit_data_file("NCI", "first_5K.smi").read_text().splitlines():
        mol = Chem.MolFromSmiles(line.split()[0]) if line.strip() else None
        if mol is not None:
            graphs.append(molecule_graph(mol, int(any(mol.HasSubstructMatch(a) for a in alerts))))
    return tuple(graphs)
