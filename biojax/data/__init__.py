"""Reference data: reading and writing datasets via ASE, padded batches, reference
engines (GFN2-xTB, OpenMM, EMT) and sampling recipes (``biojax.data.reference``,
``biojax.data.sample``, imported on demand: they load the engines)."""

from biojax.data.graphs import GraphBatch, GraphDataset, batch_graphs, find_edges
from biojax.data.io import Structure, read_dataset, read_frames, write_extxyz

__all__ = ["GraphBatch", "GraphDataset", "batch_graphs", "find_edges", "Structure",
           "read_dataset", "read_frames", "write_extxyz"]
