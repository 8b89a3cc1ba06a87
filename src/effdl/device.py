"""Which device to run on, and which fast paths (bf16, channels_last) pay off on it."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from effdl.errors import EffdlError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; an unavailable CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EffdlError(f"unknown device '{name}' (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EffdlError(f"device {name} requested but CUDA is not available")
    return device


def default_channels_last(device: torch.device) -> bool:
    """channels_last (NHWC) by default on CUDA and on every CPU but the AVX2-only x86 ones (PyTorch's
    CPU capability "AVX2"; AVX-512 CPUs and others keep it). There (torch 2.14.1, oneDNN's jit_avx2_1x1_convolution_bwd_weights,
    2-core AMD EPYC, 2026-12-01) the weight gradient of a 1x1 stride-2 convolution with 3 to 5 input
    channels on 32x32 NHWC inputs ran for minutes without finishing, or crashed with one thread: a
    resnet20 at width 0.25 (a 4 -> 8 shortcut) never finished its first step. NHWC was worth only
    1.2x training throughput on that CPU (resnet20 265 -> 313 images/s, mobilenet_v2 68 -> 85)."""
    if device.type != "cpu":
        return True
    return torch.backends.cpu.get_cpu_capability() != "AVX2"


@functools.cache
def cpu_has_amx_bf16() -> bool:
    """True when the CPU has AMX bf16 tiles, where bf16 autocast roughly doubles CNN training speed."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def default_bf16(device: torch.device) -> bool:
    """bf16 autocast by default on CUDA, and on CPUs with AMX (measured: ~2x on resnet20)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_amx_bf16())
