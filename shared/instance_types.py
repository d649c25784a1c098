"""Instance types: what one replica of an endpoint needs from a host.

``cpu`` needs no accelerator. ``gpu.<type>`` (or OctoAI's ``gpu.<type>.medium``
and friends) needs one GPU of that type; ``gpu.<type>.<n>x`` needs ``n`` of them
on one host. The type is a GPU family as agents report it: ``h100``, ``a10g``...
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["InstanceType", "gpu_family", "parse_instance_type"]

_GPU_RE = re.compile(r"^gpu\.([a-z0-9][a-z0-9-]{0,30})(?:\.(small|medium|large|xlarge|[1-8]x))?$")
_SIZES = {"small": 1, "medium": 1, "large": 1, "xlarge": 1}


@dataclass(frozen=True, slots=True)
class InstanceType:
    name: str
    gpu_type: str | None = None
    gpus: int = 0


def parse_instance_type(name: str) -> InstanceType:
    """ValueError, saying what is accepted, for a name that is neither form."""
    if name == "cpu":
        return InstanceType(name)
    m = _GPU_RE.match(name)
    if m is None:
        raise ValueError(
            f"{name!r} is not an instance type: use 'cpu', 'gpu.<type>' "
            "(e.g. gpu.a10g, gpu.h100.medium) or 'gpu.<type>.<n>x' for n GPUs (1-8)"
        )
    size = m.group(2)
    count = _SIZES.get(size, 1) if size is None or not size.endswith("x") else int(size[:-1])
    return InstanceType(name, m.group(1), count)


def gpu_family(product_name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` → ``h100``; ``Tesla T4`` → ``t4``; ``NVIDIA A10G`` → ``a10g``."""
    words = re.split(r"[\s_]+", product_name.lower().strip())
    words = [w for w in words if w not in ("nvidia", "tesla", "geforce", "quadro", "")]
    if not words:
        return "gpu"
    if words[0] in ("rtx", "gtx") and len(words) > 1:
        return re.sub(r"[^a-z0-9-]", "", words[0] + "-" + words[1])
    family = words[0].split("-")[0]
    return re.sub(r"[^a-z0-9]", "", family) or "gpu"
