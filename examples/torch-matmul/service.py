"""A GPU model: a bf16 matrix product with PyTorch, on the GPU the replica was given.

Deploy it with an instance type of your GPUs (`GET /v1/instance-types` lists them):

    berth deploy ./examples/torch-matmul --name matmul  # then PATCH instance_type, or:
    curl -X POST $BERTH_URL/v1/endpoint -H "Authorization: Bearer $BERTH_TOKEN" \\
         -d '{"name": "matmul", "model_id": "...", "instance_type": "gpu.h100"}'

On a CPU replica (instance_type cpu) it runs a small float32 product instead,
and says it saw no GPU: Berth hides every GPU from replicas that were given none.
"""

import os
import time

import torch

from workers.service import Service


class Matmul(Service):
    def setup(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda:0" if self.cuda else "cpu")
        if self.cuda:
            torch.ones(1, device=self.device).sum().item()  # pay CUDA's start-up here, not in infer

    def infer(self, n: int = 4096, repeat: int = 10) -> dict:
        dtype = torch.bfloat16 if self.cuda else torch.float32
        n = n if self.cuda else min(n, 512)
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        (a @ b).sum().item()  # warm-up
        if self.cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeat):
            c = a @ b
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return {
            "device": torch.cuda.get_device_name(0) if self.cuda else "cpu",
            "visible_gpus": torch.cuda.device_count(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "n": n,
            "tflops": round(2 * n**3 * repeat / seconds / 1e12, 1),
            "checksum_finite": bool(torch.isfinite(c.float().sum()).item()),
        }
