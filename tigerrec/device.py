"""Where tensors live and which precision to compute in."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import subprocess
import time

import torch

from .errors import TigerrecError


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """``device`` when this machine has it (cpu, cuda, cuda:N, mps); TigerrecError saying why not otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise TigerrecError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise TigerrecError(f"device {device!r} is not available: {why}; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise TigerrecError(
                f"device {device!r} is not available: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise TigerrecError(f"device {device!r} is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise TigerrecError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return device


@functools.cache
def bf16_supported(device: str) -> bool:
    """bf16 pays off on GPUs that support it and on CPUs with native bf16 units (AMX / AVX512-BF16)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def use_bf16(device: str, setting: str = "auto") -> bool:
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be auto, on or off, got {setting!r}")
    return setting == "on" or (setting == "auto" and bf16_supported(device))


def autocast(device: str, enabled: bool | None = None):
    """bf16 autocast when enabled (default: when the hardware supports it)."""
    if enabled is None:
        enabled = bf16_supported(device)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


# Decoding runs many small ops per beam step, so one batch does not keep several cores busy; independent
# batches on single-threaded workers do (BENCHMARKS.md, "Serving"). Measured up to 2 cores; beyond this many
# workers the Python between ops (one interpreter lock) would limit them instead.
MAX_DECODE_WORKERS = 4


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_workers(device: str, workers: int | None = None) -> tuple[int, int]:
    """(workers, torch threads each) for decoding independent batches side by side: on a CPU one worker
    per CPU up to ``MAX_DECODE_WORKERS`` (or ``workers``), the CPUs shared among them; on an accelerator
    one worker (or ``workers``) with torch's threads."""
    if not device.startswith("cpu"):
        return workers or 1, torch.get_num_threads()
    cpus = available_cpus()
    workers = max(1, min(cpus, MAX_DECODE_WORKERS)) if workers is None else workers
    return workers, max(1, cpus // max(workers, 1))


# glibc's mallopt parameters: M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks of up to 32 MiB (its largest mmap threshold) for reuse rather than hand
    them back to the kernel. A beam-search step allocates and frees tens of MB of caches and activations,
    and a block returned to the kernel costs a page fault per 4 kB the next time it is allocated: a sizeable
    share of decoding time on a CPU (BENCHMARKS.md, "Serving"). Freed memory stays with the process, up to
    its peak. Once per process; True where applied (glibc), False elsewhere."""
    libc_name = ctypes.util.find_library("c") if platform.system() == "Linux" else None
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None) if libc_name else None
    if mallopt is None:  # musl, macOS, Windows: their allocators have no such switches
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    return all(mallopt(option, value) == 1 for option, value in settings)


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to ``threads`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_name() -> str:
    """This machine for result files: CPU model (``lscpu``), bf16 yes/no, threads, torch version, GPU."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({platform.machine()}), bf16 {'yes' if bf16_supported('cpu') else 'no'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}{gpu}"
    )


def provenance() -> dict[str, str]:
    """Where and when a result was measured, for result files: ``machine_name()`` and today's date."""
    return {"machine": machine_name(), "date": time.strftime("%Y-%m-%d")}
