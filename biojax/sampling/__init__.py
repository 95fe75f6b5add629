"""Enhanced sampling: collective variables (:mod:`biojax.sampling.cv`), biases as MD
energy terms (:mod:`biojax.sampling.bias`: restraints and umbrella windows, walls,
well-tempered metadynamics, OPES, multiple walkers), replica exchange
(:mod:`biojax.sampling.exchange`) and free energies from biased runs
(:mod:`biojax.sampling.free_energy`). Submodules are imported on use."""
