"""Text to image: Stable Diffusion XL (diffusers), on a GPU, with weights the operator provides.

The weights are not downloaded: set ``SDXL_WEIGHTS`` (in the endpoint's env_overrides)
to a folder in diffusers' layout that the replica can read (its volume,
``OCTOAI_VOLUME_PATH``, or a folder named in ``BERTH_REPLICA_WRITABLE``), for example
one made once with ``StableDiffusionXLPipeline.from_pretrained(...).save_pretrained(dir)``.
Without a GPU or without the weights, the replica fails to start and says which.

    berth deploy --example sdxl --instance-type gpu.a10g --env SDXL_WEIGHTS=/models/sdxl-base-1.0
    curl $BERTH_URL/e/sdxl/infer -H "Authorization: Bearer $BERTH_TOKEN" \
      -d '{"prompt": "a lighthouse at dusk, oil painting", "steps": 30}'
"""

import os
import time
from io import BytesIO
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from workers.media import Media
from workers.service import Service

Prompt = Annotated[str, Field(min_length=1, max_length=2000)]
Side = Literal[768, 832, 896, 1024, 1152, 1216]
Steps = Annotated[int, Field(ge=1, le=100)]
Guidance = Annotated[float, Field(ge=0.0, le=20.0)]
Count = Annotated[int, Field(ge=1, le=4)]


class Sdxl(Service):
    def setup(self) -> None:
        weights = os.environ.get("SDXL_WEIGHTS", "")
        if not weights:
            raise RuntimeError(
                "SDXL_WEIGHTS is not set: name a folder with Stable Diffusion XL's weights in "
                "diffusers' layout (env_overrides); nothing is downloaded"
            )
        if not (Path(weights) / "model_index.json").is_file():
            raise RuntimeError(
                f"SDXL_WEIGHTS={weights} holds no model_index.json (diffusers' layout)"
            )
        try:
            import torch
            from diffusers import StableDiffusionXLPipeline
        except ImportError as exc:
            raise RuntimeError(f"torch and diffusers are needed (requirements.txt): {exc}") from exc
        if not torch.cuda.is_available():
            raise RuntimeError(
                "no CUDA GPU is visible to this replica: deploy it on a gpu.* instance type"
            )
        self.torch = torch
        self.pipe = StableDiffusionXLPipeline.from_pretrained(
            weights, torch_dtype=torch.float16, use_safetensors=True, local_files_only=True
        ).to("cuda")
        self.pipe.set_progress_bar_config(disable=True)

    def infer(
        self,
        prompt: Prompt,
        negative_prompt: str = "",
        width: Side = 1024,
        height: Side = 1024,
        steps: Steps = 30,
        guidance: Guidance = 7.0,
        num_images: Count = 1,
        seed: int | None = None,
    ) -> dict:
        """``num_images`` PNGs for ``prompt``; the same seed gives the same images."""
        torch = self.torch
        seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        generator = torch.Generator("cuda").manual_seed(seed)
        started = time.perf_counter()
        result = self.pipe(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            num_images_per_prompt=num_images,
            generator=generator,
        )
        images = []
        for picture in result.images:
            buf = BytesIO()
            picture.save(buf, format="PNG")
            images.append(Media.of(buf.getvalue()).model_dump())
        return {"images": images, "seed": seed, "seconds": round(time.perf_counter() - started, 3)}
