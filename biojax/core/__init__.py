"""The ground floor every layer uses: config, errors, atomic writes, units, geometry, the
Graph models take, and the registries behind every extension point. It imports nothing
from the rest of biojax."""
