"""What machine a benchmark ran on: CPU model, host, load, and (in a child process, so the
parent never holds an accelerator) JAX's devices and versions."""

from __future__ import annotations

import os
import platform
import socket
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def host_info() -> dict:
    """Host facts that need no JAX: CPU model, cores, memory, hostname, OS, Python, date."""
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "memory_gib": mem,
            "hostname": socket.gethostname(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def jax_info() -> dict:
    """JAX's devices (kind, count), platform and the jax/jaxlib and peer versions."""
    import jax
    import jaxlib

    devices = jax.devices()
    info = {"platform": jax.default_backend(), "device_kind": devices[0].device_kind,
            "device_count": len(devices), "devices": [str(d) for d in devices],
            "jax": jax.__version__, "jaxlib": jaxlib.__version__}
    for module in ("jax_md", "flax", "optax", "ase", "openmm"):
        try:
            mod = __import__(module)
            info[f"{module}_version"] = getattr(mod, "__version__", "?")
        except ImportError:
            info[f"{module}_version"] = None
    return info


def device_line(machine: dict) -> str:
    """One line naming the device, for tables: e.g. ``cpu: AMD EPYC ... (2 cores), JAX
    0.10.1`` or ``gpu: 1 × NVIDIA H200, host CPU ..., JAX 0.11.2``."""
    j = machine.get("jax") or {}
    h = machine.get("host") or {}
    if j.get("platform") in (None, "cpu"):
        dev = f"cpu: {h.get('cpu_model', '?')} ({h.get('cpu_cores', '?')} cores)"
    else:
        dev = (f"{j['platform']}: {j.get('device_count', '?')} × {j.get('device_kind', '?')}"
               f", host {h.get('cpu_model', '?')} ({h.get('cpu_cores', '?')} cores)")
    return f"{dev}, JAX {j.get('jax', '?')}, host {h.get('hostname', '?')}"
