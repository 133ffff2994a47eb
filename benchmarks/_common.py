"""What the benchmarks share: the host's description and per-process peak memory."""
from __future__ import annotations

import os

# Flags that decide which kernels run: ggml's and oneDNN's choices follow them.
_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
          "amx_bf16", "amx_int8", "avx_vnni")


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        line = next((x for x in f if x.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def cpu_summary(threads: int) -> str:
    """CPU model, the flags that matter, cores, threads used and the load average."""
    with open("/proc/cpuinfo") as f:
        model = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), "unknown CPU")
    flags = cpu_flags()
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    have = " ".join(f for f in _FLAGS if f in flags)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{model}, {os.cpu_count()} cores, {threads} threads; flags: {have}; "
            f"AVX-512: {' '.join(avx512) if avx512 else 'none'}; load average {load}")


def torch_fastest_dtype() -> str:
    """PyTorch's fastest CPU dtype on this host: bf16 where oneDNN has native BF16, else fp32."""
    return "bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32"


def peak_gib() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would carry over the parent's across exec)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20


def reset_peak() -> None:
    """Restart VmHWM from the current RSS, so that the next peak_gib() covers what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
