"""Device selection, seeding and the run profile.

Every notebook and the CLI read one *profile*: ``quick`` (small data and models,
a notebook runs in about two minutes on two CPU cores) or ``full`` (the real
regime on one GPU).  ``CLCOURSE_PROFILE=auto`` (the default) picks ``quick`` on a
CPU and ``full`` when a GPU is present.
"""

from __future__ import annotations

import math
import os
import platform
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PROFILE_ENV = "CLCOURSE_PROFILE"
PROFILES = ("quick", "full")


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: cuda > mps > cpu.

    Args:
        prefer: an explicit device string (``"cpu"``, ``"cuda:1"``...) that wins
            over detection; ``None`` detects.
    """
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota.

    A container limited by a quota (cgroup ``cpu.max``) still shows all the host's CPUs to
    ``os.cpu_count()``; torch would then start more threads than it gets cores, and on 2 cores
    8 threads make a SmallCNN step 1.7x slower than 2 (measured, see benchmarks/README.md).
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota))) if quota else count


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup allows (cgroup v2 ``cpu.max``, else v1 ``cfs_quota_us``); None: unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def fit_threads_to_cpus() -> int:
    """Lower torch's intra-op threads to :func:`usable_cpus` when it has more; return the thread count."""
    cpus = usable_cpus()
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()


@contextmanager
def torch_threads(n: int | None):
    """Temporarily use n torch intra-op threads (None: leave torch's setting alone).

    For small models on a CPU: each op on a few thousand numbers finishes before a second
    thread would have started, and on a busy machine waiting for the other thread costs far
    more than the work (measured: about 10x the CPU time per step with 2 threads).
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a CPU generator seeded alike.

    The returned generator is what the course's loaders and batched augmentations
    take, so that a run is reproducible from a single integer.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype the course uses on ``device``, or ``None`` for float32.

    bfloat16 on CUDA GPUs that support it (no loss scaling needed), otherwise
    float16 on CUDA; float32 on CPU and MPS, where autocast rarely pays off for
    the small models of the quick profile.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class Profile:
    """The scale a lesson runs at.

    Attributes:
        name: ``"quick"`` or ``"full"``.
        requested: what ``CLCOURSE_PROFILE`` asked for (``"auto"`` included).
        device: the device the profile was resolved for.
    """

    name: str
    requested: str
    device: torch.device

    @property
    def quick(self) -> bool:
        return self.name == "quick"

    def pick(self, quick, full):
        """Return ``quick`` or ``full`` according to the profile (for lesson settings)."""
        return quick if self.quick else full


def get_profile(name: str | None = None, device: torch.device | str | None = None) -> Profile:
    """Resolve the run profile.

    Args:
        name: ``"quick"``, ``"full"`` or ``"auto"``; ``None`` reads
            ``CLCOURSE_PROFILE`` (default ``"auto"``).
        device: the device to resolve ``auto`` against; ``None`` detects.
    """
    requested = (name or os.environ.get(PROFILE_ENV) or "auto").strip().lower()
    device = get_device() if device is None else torch.device(device)
    if requested == "auto":
        resolved = "full" if device.type == "cuda" else "quick"
    elif requested in PROFILES:
        resolved = requested
    else:
        raise ValueError(
            f"{PROFILE_ENV} must be one of 'quick', 'full' or 'auto', got {requested!r}"
        )
    return Profile(name=resolved, requested=requested, device=device)


def describe_device(device: torch.device | str) -> str:
    """A device with the GPU's name when it is one: ``"cuda (NVIDIA H200)"``, ``"cpu"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def summary(profile: Profile | None = None) -> str:
    """One line a notebook prints: versions, device, threads and profile."""
    profile = profile or get_profile()
    dev_desc = describe_device(profile.device)
    return (
        f"clcourse | python {platform.python_version()} | torch {torch.__version__} | "
        f"device {dev_desc} | threads {torch.get_num_threads()} | "
        f"profile {profile.name} (requested {profile.requested})"
    )
