"""The console scripts (``glmvoice-*``).

Importing this package (every console script and ``python -m glmvoice_jax.cli.X`` does, before
the tool's own imports bring in JAX) keeps a machine without a TPU quiet when libtpu is installed
(``pip install 'glmvoice_jax[tpu]'`` on a CPU host): JAX would initialise its TPU backend, and
libtpu, finding no TPU, prints INVALID_ARGUMENT errors about ``TPU_WORKER_HOSTNAMES`` and the
accelerator type to stderr although the tool then runs fine on the CPU. There ``JAX_PLATFORMS``
is set to ``cpu`` before JAX is imported, as glmvoice-aot does for its TPU topologies (JAX reads it
on import). Nothing changes when JAX_PLATFORMS is already set, when a TPU (a Google PCI device,
/dev/accel*, a vfio group) or a GPU is visible, or when libtpu is not installed.

It also turns JAX's persistent compilation cache on for every tool (issue L item 4: a rerun, a
resume after preemption or the next stage of a demo loads its compiled steps instead of compiling
them again): ``JAX_COMPILATION_CACHE_DIR`` defaults to ``$XDG_CACHE_HOME/glmvoice_jax/jax``
(``~/.cache/...``). Set it to a shared path (``gs://BUCKET/jax_cache`` on a pod, as MaxText's
``jax_cache_dir``) or to the empty string to turn the cache off. The cache key covers the program,
the devices and the jax/XLA versions, so a stale entry is never used.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from collections.abc import MutableMapping

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips (jax._src.hardware_utils reads the same)
_GPU_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def tpu_visible() -> bool:
    """A TPU chip on this host: a Google PCI device, /dev/accel* or a vfio device group."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def quiet_missing_tpu(
    environ: MutableMapping[str, str] = os.environ, jax_imported: bool | None = None
) -> bool:
    """Sets JAX_PLATFORMS=cpu where libtpu is installed but no TPU / GPU is; True if it did."""
    if jax_imported is None:
        jax_imported = "jax" in sys.modules
    if environ.get("JAX_PLATFORMS") or jax_imported:
        return False  # the user chose, or JAX is imported already (the env var would be ignored)
    if importlib.util.find_spec("libtpu") is None:
        return False
    if tpu_visible() or any(os.path.exists(d) for d in _GPU_DEVICES):
        return False
    environ["JAX_PLATFORMS"] = "cpu"
    return True


def default_compile_cache(
    environ: MutableMapping[str, str] = os.environ, jax_imported: bool | None = None
) -> bool:
    """Sets JAX_COMPILATION_CACHE_DIR to the user cache unless set (even to ""); True if it did."""
    if jax_imported is None:
        jax_imported = "jax" in sys.modules
    if "JAX_COMPILATION_CACHE_DIR" in environ or jax_imported:
        return False
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(base, "glmvoice_jax", "jax")
    return True


quiet_missing_tpu()
default_compile_cache()
