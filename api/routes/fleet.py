"""The fleet as callers see it: OctoAI's instance types, read from the agents' records."""

from __future__ import annotations

import time

from fastapi import APIRouter
from sqlmodel import SQLModel

from api.auth import AdminDep
from api.context import ContextDep

router = APIRouter(prefix="/v1", tags=["fleet"], dependencies=[AdminDep])


class InstanceTypePublic(SQLModel):
    """OctoAI's shape. ``ram`` and ``vram`` are GiB; ``vcpu`` and ``ram`` are the largest
    host's that offers the type; ``available`` says whether one more replica fits now."""

    instance_name: str
    display_name: str
    vcpu: int
    ram: int
    vram: int
    accelerator: str
    available: bool
    price: float = 0.0
    # Berth's additions: how many GPUs of the type the fleet has, and how many are free.
    total: int = 0
    free: int = 0


@router.get("/instance-types", response_model=list[InstanceTypePublic])
async def instance_types(ctx: ContextDep) -> list[InstanceTypePublic]:
    now = time.time()
    agents = [a for a in ctx.agents.items.values() if a.fresh(now)]
    found = [
        InstanceTypePublic(
            instance_name="cpu",
            display_name="CPU only",
            vcpu=max((a.cpus for a in agents), default=0),
            ram=max((a.memory_mib for a in agents), default=0) // 1024,
            vram=0,
            accelerator="none",
            available=any(a.used_slots < a.slots for a in agents),
            total=sum(a.slots for a in agents),
            free=sum(max(0, a.slots - a.used_slots) for a in agents),
        )
    ]
    types = sorted({g.type for a in agents for g in a.gpus})
    for gpu_type in types:
        hosts = [a for a in agents if any(g.type == gpu_type for g in a.gpus)]
        sample = next(g for a in hosts for g in a.gpus if g.type == gpu_type)
        free = sum(a.free_gpus(gpu_type) for a in hosts if a.used_slots < a.slots)
        found.append(
            InstanceTypePublic(
                instance_name=f"gpu.{gpu_type}",
                display_name=f"1x {sample.name or gpu_type}",
                vcpu=max(a.cpus for a in hosts),
                ram=max(a.memory_mib for a in hosts) // 1024,
                vram=sample.memory_mib // 1024,
                accelerator="gpu",
                available=free > 0,
                total=sum(1 for a in hosts for g in a.gpus if g.type == gpu_type),
                free=free,
            )
        )
    return found
