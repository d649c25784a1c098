"""GPUs: inventory (nvidia-smi or declared), instance types, who holds which, and placement."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from scaler.placement import place
from shared.instance_types import InstanceType, gpu_family, parse_instance_type
from shared.messages import AgentRecord
from workers.gpus import GpuPool, parse_declared, parse_nvidia_smi, visible_devices_env

# What `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits`
# printed on hosts of these kinds.
SMI = """0, GPU-5d2d4a1e-8c1f-4b0e-9a43-2f1b7d7c9e01, NVIDIA H100 80GB HBM3, 81559
1, GPU-7a9e3c55-1d2b-4c8f-8e6a-0b4f2d1c3e02, NVIDIA H100 80GB HBM3, 81559
2, GPU-1b2c3d4e-5f60-4718-9a0b-1c2d3e4f5a03, NVIDIA A10G, 23028
"""


def test_nvidia_smi_inventory() -> None:
    gpus = parse_nvidia_smi(SMI + "garbage line\n")
    assert [(g.id, g.type, g.memory_mib) for g in gpus] == [
        ("0", "h100", 81559),
        ("1", "h100", 81559),
        ("2", "a10g", 23028),
    ]
    assert gpus[0].uuid == "GPU-5d2d4a1e-8c1f-4b0e-9a43-2f1b7d7c9e01"


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("NVIDIA H200", "h200"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A10G", "a10g"),
        ("Tesla T4", "t4"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("", "gpu"),
    ],
)
def test_gpu_family(name: str, family: str) -> None:
    assert gpu_family(name) == family


def test_declared_inventory() -> None:
    gpus = parse_declared("h100:2, l4")
    assert [(g.id, g.type) for g in gpus] == [("0", "h100"), ("1", "h100"), ("2", "l4")]
    assert parse_declared("none") == []
    with pytest.raises(ValueError, match="BERTH_GPUS"):
        parse_declared("h100:two")


@pytest.mark.parametrize(
    ("name", "gpu_type", "count"),
    [
        ("cpu", None, 0),
        ("gpu.a10g", "a10g", 1),
        ("gpu.a10g.medium", "a10g", 1),
        ("gpu.h100.large", "h100", 1),
        ("gpu.h100.4x", "h100", 4),
        ("gpu.rtx-4090", "rtx-4090", 1),
    ],
)
def test_instance_types(name: str, gpu_type: str | None, count: int) -> None:
    assert parse_instance_type(name) == InstanceType(name, gpu_type, count)


@pytest.mark.parametrize("name", ["gpu", "GPU.A10G", "gpu.a10g.9x", "gpu.a10g.huge", "tpu.v4", ""])
def test_bad_instance_types(name: str) -> None:
    with pytest.raises(ValueError, match="not an instance type"):
        parse_instance_type(name)


def test_pool_gives_each_replica_its_own_devices() -> None:
    pool = GpuPool(parse_nvidia_smi(SMI))
    one = parse_instance_type("gpu.h100")
    a = pool.take("a", one)
    b = pool.take("b", one)
    assert isinstance(a, list) and isinstance(b, list) and {a[0].id, b[0].id} == {"0", "1"}
    assert pool.take("c", one) == "no free h100 GPU: 1 needed, 0 of 2 free"
    assert pool.take("d", parse_instance_type("gpu.h100.2x")) == (
        "no free h100 GPU: 2 needed, 0 of 2 free"
    )
    assert pool.take("e", parse_instance_type("cpu")) == []
    pool.give_back("a")
    assert pool.used() == ["1"]
    again = pool.take("f", one)
    assert isinstance(again, list) and again[0].id == "0"


def test_visible_devices_env() -> None:
    gpus = parse_nvidia_smi(SMI)
    env = visible_devices_env(gpus[:2])
    assert env["CUDA_VISIBLE_DEVICES"] == f"{gpus[0].uuid},{gpus[1].uuid}"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    none = visible_devices_env([])  # a CPU replica on a GPU host sees no GPU
    assert none["CUDA_VISIBLE_DEVICES"] == "" and none["NVIDIA_VISIBLE_DEVICES"] == "void"
    declared = visible_devices_env(parse_declared("l4:2")[1:])
    assert declared["CUDA_VISIBLE_DEVICES"] == "1"


def gpu_agent(agent_id: str, gpus: str, used: list[str] = [], slots: int = 8) -> AgentRecord:  # noqa: B006
    return AgentRecord(
        agent_id=agent_id,
        slots=slots,
        used_slots=len(used),
        gpus=parse_declared(gpus),
        gpus_used=used,
    )


H100 = parse_instance_type("gpu.h100")


@pytest.mark.parametrize(
    ("agents", "need", "on", "pending_gpus", "expected"),
    [
        ([gpu_agent("a", "a10g:4")], H100, {}, {}, None),  # no GPU of the type
        ([gpu_agent("a", "h100:1", ["0"])], H100, {}, {}, None),  # all taken
        ([gpu_agent("a", "h100:1")], H100, {}, {"a": 1}, None),  # taken by a pending start
        ([gpu_agent("a", "h100:1")], H100, {}, {}, "a"),
        ([gpu_agent("a", "h100:2")], parse_instance_type("gpu.h100.4x"), {}, {}, None),
        # pack: the host left with fewer free GPUs wins...
        ([gpu_agent("a", "h100:8"), gpu_agent("b", "h100:8", ["0", "1", "2"])], H100, {}, {}, "b"),
        # ...after spreading one endpoint's replicas across hosts
        ([gpu_agent("a", "h100:8"), gpu_agent("b", "h100:8", ["0"])], H100, {"b": 1}, {}, "a"),
        ([gpu_agent("a", "h100:1", slots=0)], H100, {}, {}, None),  # no slot
    ],
)
def test_gpu_placement(
    agents: list[AgentRecord],
    need: InstanceType,
    on: dict[str, int],
    pending_gpus: dict[str, int],
    expected: str | None,
) -> None:
    assert place(
        agents, Counter(on), Counter(), need=need, pending_gpus_on=Counter(pending_gpus)
    ) == (expected)


def test_cpu_endpoints_ignore_gpus() -> None:
    assert place([gpu_agent("a", "none")], Counter(), Counter()) == "a"
    assert place([gpu_agent("a", "h100:1", ["0"])], Counter(), Counter()) == "a"


def test_gpu_usage_is_scraped_from_nvidia_smi(tmp_path: Path) -> None:
    """The agent's GPU gauges, from a stand-in nvidia-smi that answers as the real one does."""
    from prometheus_client import CollectorRegistry, generate_latest

    from workers.gpus import GpuUsage

    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu=index,uuid,memory.used,memory.total,utilization.gpu) ;;'
        " *) exit 9;; esac\n"
        "echo '0, GPU-aaaa, 1024, 81559, 37'\n"
        "echo '1, GPU-bbbb, [N/A], 81559, 0'\n"
    )
    smi.chmod(0o755)
    registry = CollectorRegistry()
    registry.register(GpuUsage(str(smi)))
    text = generate_latest(registry).decode()
    assert 'berth_gpu_memory_used_bytes{gpu="0",uuid="GPU-aaaa"} 1.073741824e+09' in text
    assert 'berth_gpu_utilization_ratio{gpu="0",uuid="GPU-aaaa"} 0.37' in text
    assert 'berth_gpu_memory_total_bytes{gpu="1",uuid="GPU-bbbb"}' in text
    assert 'berth_gpu_memory_used_bytes{gpu="1"' not in text  # [N/A] is left out

    smi.write_text("#!/bin/sh\nexit 3\n")  # a broken driver: no gauges, no crash
    assert "berth_gpu_memory_used_bytes{" not in generate_latest(registry).decode()
