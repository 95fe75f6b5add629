"""Generative models and attributions (DESIGN §3, ``biojax/generative/``).

- :mod:`biojax.generative.attributions`: integrated gradients and in-silico mutagenesis
  for any JAX function ``array -> scalar`` (sequence models, potentials, classifiers).
- :mod:`biojax.generative.sequences`: FASTA/CSV reading and one-hot encoding of DNA.
- :mod:`biojax.generative.seqmodels`: conditional convolutional VAE and WGAN-GP for
  one-hot sequences, and the promoter classifier.
- :mod:`biojax.generative.seqmetrics`: k-mer spectra, motif occurrence, memorisation and
  two-sample metrics of generated sequences.
- :mod:`biojax.generative.stage`: the ``biojax generate CONFIG.toml`` command.

Submodules are imported on use; importing this package does not import JAX.
"""
