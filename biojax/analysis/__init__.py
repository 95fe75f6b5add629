"""Trajectory analysis: features, PCA/TICA, clustering, populations, Markov state
models and free-energy surfaces, all numerics in JAX. See ``biojax analyze``."""

from biojax.analysis.cluster import (KMeansResult, assign, inertia, kmeans,
                                     minibatch_kmeans, regspace, scan_k, silhouette)
from biojax.analysis.decomposition import Projection, pca, tica
from biojax.analysis.features import (align, aligned_coordinates, all_pairs, contacts,
                                      dihedrals, distances, rmsd, sincos)
from biojax.analysis.fes import (FES, free_energy_surface, js_divergence, kl_divergence,
                                 state_free_energies)
from biojax.analysis.msm import (MSM, count_matrix, estimate_msm, implied_timescales,
                                 populations)
from biojax.analysis.selection import Selection, backbone_dihedrals, select
from biojax.analysis.trajectory import Topology, Trajectory, load_trajectory, read_topology

__all__ = [
    "KMeansResult", "assign", "inertia", "kmeans", "minibatch_kmeans", "regspace",
    "scan_k", "silhouette", "Projection", "pca", "tica", "align", "aligned_coordinates",
    "all_pairs", "contacts", "dihedrals", "distances", "rmsd", "sincos", "FES",
    "free_energy_surface", "js_divergence", "kl_divergence", "state_free_energies", "MSM",
    "count_matrix", "estimate_msm", "implied_timescales", "populations", "Selection",
    "backbone_dihedrals", "select", "Topology", "Trajectory", "load_trajectory",
    "read_topology",
]
