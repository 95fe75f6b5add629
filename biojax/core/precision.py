"""Floating-point precision, chosen once at process start.

JAX fixes its default float width through a global flag. biojax never flips it in the
middle of a run: the CLI sets it before any JAX work (``biojax --x64 ...`` or a config
that asks for float64), and a Python user calls :func:`enable_x64` first thing (or sets
``JAX_ENABLE_X64=1``). Code that needs float64 calls :func:`require_x64`, which explains
what to do instead of silently computing in float32.
"""

from __future__ import annotations

import jax

from biojax.core.errors import ConfigError


def x64_enabled() -> bool:
    """Whether JAX computes in float64 by default in this process."""
    return bool(jax.config.read("jax_enable_x64"))


def enable_x64() -> None:
    """Switch this process to float64. Call before any JAX array is made."""
    jax.config.update("jax_enable_x64", True)


def require_x64(where: str) -> None:
    """Raise ConfigError unless float64 was enabled at process start."""
    if not x64_enabled():
        raise ConfigError(
            f"{where} asks for float64, but this process computes in float32: float64 is "
            "chosen once at process start (biojax --x64 ..., JAX_ENABLE_X64=1, or "
            "biojax.core.precision.enable_x64() before any JAX work)")
