"""What machine a benchmark ran on (shared by the benchmark scripts; the code lives in
biojax.bench.machine)."""

from biojax.bench.machine import cpu_model  # noqa: F401
