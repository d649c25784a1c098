"""The agent's GPUs: found with ``nvidia-smi``, or declared in ``BERTH_GPUS``; and who has which.

Each replica of a GPU endpoint gets devices of its own, for its whole life: the
agent hands them out when it accepts a start and takes them back when the
replica's supervisor ends. A replica sees only its devices
(``CUDA_VISIBLE_DEVICES`` by UUID where known, with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``;
``NVIDIA_VISIBLE_DEVICES`` for container runtimes).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from shared.instance_types import InstanceType, gpu_family
from shared.messages import GpuInfo

__all__ = [
    "GpuPool",
    "GpuUsage",
    "discover",
    "host_memory_mib",
    "parse_declared",
    "visible_devices_env",
]

log = logging.getLogger(__name__)

_QUERY = "index,uuid,name,memory.total"


def parse_nvidia_smi(output: str) -> list[GpuInfo]:
    """Lines of ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits``."""
    found = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        index, uuid, name, memory = parts
        found.append(
            GpuInfo(
                id=index,
                uuid=uuid,
                type=gpu_family(name),
                name=name,
                memory_mib=int(memory) if memory.isdigit() else 0,
            )
        )
    return found


def parse_declared(spec: str) -> list[GpuInfo]:
    """``BERTH_GPUS``: ``none``, or ``<type>[:<count>]`` entries, e.g. ``a10g:4`` or ``h100:2,l4``."""
    if spec.strip().lower() in ("", "none", "0"):
        return []
    found: list[GpuInfo] = []
    for entry in spec.split(","):
        kind, _, count = entry.strip().partition(":")
        if not kind or (count and not count.isdigit()):
            raise ValueError(f"BERTH_GPUS entry {entry!r}: expected <type> or <type>:<count>")
        for _ in range(int(count or 1)):
            index = str(len(found))
            found.append(GpuInfo(id=index, type=kind.lower(), name=kind))
    return found


def discover(declared: str | None, timeout: float = 10.0) -> list[GpuInfo]:
    """The declared GPUs if ``BERTH_GPUS`` is set, else what ``nvidia-smi`` lists, else none."""
    if declared is not None:
        return parse_declared(declared)
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        done = subprocess.run(
            [binary, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("nvidia-smi failed, so this agent offers no GPUs: %s", exc)
        return []
    return parse_nvidia_smi(done.stdout)


def host_memory_mib() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def visible_devices_env(gpus: list[GpuInfo]) -> dict[str, str]:
    """The environment that confines a replica to ``gpus`` (and to none when empty)."""
    ids = ",".join(g.uuid or g.id for g in gpus)
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ids,
        "NVIDIA_VISIBLE_DEVICES": ids or "void",
    }


class GpuPool:
    """Which of this agent's GPUs each replica holds."""

    def __init__(self, gpus: list[GpuInfo]):
        self.gpus = gpus
        self._holder: dict[str, str] = {}  # gpu id -> replica id

    def used(self) -> list[str]:
        return sorted(self._holder)

    def free(self, gpu_type: str) -> list[GpuInfo]:
        return [g for g in self.gpus if g.type == gpu_type and g.id not in self._holder]

    def take(self, replica_id: str, need: InstanceType) -> list[GpuInfo] | str:
        """The devices for a replica, or why there are none."""
        if need.gpu_type is None:
            return []
        free = self.free(need.gpu_type)
        if len(free) < need.gpus:
            have = sum(1 for g in self.gpus if g.type == need.gpu_type)
            return f"no free {need.gpu_type} GPU: {need.gpus} needed, {len(free)} of {have} free"
        taken = free[: need.gpus]
        for g in taken:
            self._holder[g.id] = replica_id
        return taken

    def give_back(self, replica_id: str) -> None:
        for gpu_id in [k for k, v in self._holder.items() if v == replica_id]:
            del self._holder[gpu_id]


_USAGE = "index,uuid,memory.used,memory.total,utilization.gpu"


class GpuUsage:
    """Prometheus collector of each GPU's memory and utilisation, read from ``nvidia-smi``
    when scraped (an agent on a host without it registers none)."""

    def __init__(self, binary: str, timeout: float = 5.0):
        self.binary = binary
        self.timeout = timeout

    def collect(self) -> Iterator[Metric]:
        labels = ["gpu", "uuid"]
        used = GaugeMetricFamily(
            "berth_gpu_memory_used_bytes", "GPU memory in use, per device", labels=labels
        )
        total = GaugeMetricFamily(
            "berth_gpu_memory_total_bytes", "GPU memory, per device", labels=labels
        )
        busy = GaugeMetricFamily(
            "berth_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the device (0 to 1)",
            labels=labels,
        )
        try:
            done = subprocess.run(
                [self.binary, f"--query-gpu={_USAGE}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            log.warning("nvidia-smi failed while scraping GPU usage: %s", exc)
            return
        for line in done.stdout.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 5:
                continue
            index, uuid, mem_used, mem_total, util = parts
            key = [index, uuid]
            for family, raw, scale in (
                (used, mem_used, 1024 * 1024),
                (total, mem_total, 1024 * 1024),
                (busy, util, 0.01),
            ):
                try:
                    family.add_metric(key, float(raw) * scale)
                except ValueError:  # "[N/A]" on some devices
                    continue
        yield used
        yield total
        yield busy
