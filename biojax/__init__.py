"""biojax: differentiable molecular simulation driven by machine-learned potentials.

Units follow ASE throughout: energy eV, length Å, mass amu, forces eV/Å, stress eV/Å³.
Time steps are given in fs and temperatures in K at the user-facing boundary.
"""

__version__ = "0.1.0"

from biojax.core.errors import BiojaxError  # noqa: E402

__all__ = ["BiojaxError", "__version__"]
