"""Text to image: Stable Diffusion XL (diffusers), on a GPU, with weights the operator provides.

The weights are not downloaded: set ``SDXL_WEIGHTS`` (in the endpoint's env_overrides)
to a folder in diffusers' layout that the replica can read (its volume,
``OCTOAI_VOLUME_PATH``, or a folder named in ``BERTH_REPLICA_WRITABLE``), for example
one made once with ``StableDiffusionXLPipeline.from_pretrained(...).save_pretrained(dir)``.
Without a GPU or without the weights, the replica fails to start and says which.
``SDXL_DEVICE=cpu`` runs it on the CPU instead, in float32: for small test weights,
not for SDXL itself.

    berth deploy --example sdxl --instance-type gpu.a10g --env SDXL_WEIGHTS=/models/sdxl-base-1.0
    curl $BERTH_URL/e/sdxl/infer -H "Authorization: Bearer $BERTH_TOKEN" \
      -d '{"prompt": "a lighthouse at dusk, oil painting", "steps": 30}'

LoRAs: an endpoint that mounts LoRA assets (diffusers' SDXL LoRA safetensors, such
as a tune's output) applies them per request, ``"loras": {"<asset name>": weight}``.

It fine-tunes too: ``POST /train`` fits a LoRA (lora.py) to captioned pictures among
its assets and answers with it, which is what Berth's ``/v1/tune`` runs for the
``image/stable-diffusion-xl-v1-0`` engine and registers as a LoRA asset.
"""

import base64
import hashlib
import os
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from workers.media import Media
from workers.service import InvalidInput, Service

Prompt = Annotated[str, Field(min_length=1, max_length=2000)]
Side = Literal[768, 832, 896, 1024, 1152, 1216]
Steps = Annotated[int, Field(ge=1, le=100)]
Guidance = Annotated[float, Field(ge=0.0, le=20.0)]
Count = Annotated[int, Field(ge=1, le=4)]
# An asset's name, as mounted under $OCTOAI_VOLUME_PATH/assets.
AssetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
LoraWeight = Annotated[float, Field(ge=-4.0, le=4.0)]
Caption = Annotated[str, Field(max_length=1000)]


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
        device = os.environ.get("SDXL_DEVICE", "cuda")
        if device not in ("cuda", "cpu"):
            raise RuntimeError(f"SDXL_DEVICE={device}: cuda or cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "no CUDA GPU is visible to this replica: deploy it on a gpu.* instance type"
            )
        self.torch, self.device = torch, device
        dtype = torch.float16 if device == "cuda" else torch.float32
        self.pipe = StableDiffusionXLPipeline.from_pretrained(
            weights, torch_dtype=dtype, use_safetensors=True, local_files_only=True
        ).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        # The model's own picture side (1024 for SDXL), the default for both.
        self.side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.loaded: dict[str, str] = {}  # LoRA asset name -> its adapter's name in the pipe

    def _use_loras(self, loras: dict[str, float]) -> None:
        """Load the mounted LoRA assets not yet loaded, and make exactly these active."""
        for name in loras:
            if name in self.loaded:
                continue
            path = _assets() / name
            if not path.is_file():
                raise InvalidInput(f"LoRA {name!r} is not among this endpoint's assets")
            adapter = "lora_" + hashlib.sha256(name.encode()).hexdigest()[:16]
            try:
                self.pipe.load_lora_weights(str(path), adapter_name=adapter)
            except (ValueError, KeyError, OSError, RuntimeError) as exc:
                raise InvalidInput(
                    f"LoRA {name!r} is not an SDXL LoRA this model takes: {exc}"
                ) from exc
            self.loaded[name] = adapter
        if loras:
            self.pipe.enable_lora()
            self.pipe.set_adapters(
                [self.loaded[n] for n in loras], adapter_weights=list(loras.values())
            )
        elif self.loaded:
            self.pipe.disable_lora()

    def infer(
        self,
        prompt: Prompt,
        negative_prompt: str = "",
        width: Side | None = None,
        height: Side | None = None,
        steps: Steps = 30,
        guidance: Guidance = 7.0,
        num_images: Count = 1,
        seed: int | None = None,
        loras: Annotated[dict[AssetName, LoraWeight], Field(max_length=8)] = {},  # noqa: B006
    ) -> dict:
        """``num_images`` PNGs for ``prompt``; the same seed gives the same images.
        ``width``/``height``: the model's own side unless given. ``loras``: mounted LoRA
        assets to apply, each with its weight."""
        torch = self.torch
        self._use_loras(loras)
        seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        generator = torch.Generator(self.device).manual_seed(seed)
        started = time.perf_counter()
        result = self.pipe(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            width=width or self.side,
            height=height or self.side,
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

    def train(
        self,
        files: Annotated[list[AssetName], Field(min_length=1, max_length=200)],
        captions: Annotated[list[Caption], Field(max_length=200)] | None = None,
        trigger_words: Annotated[list[Caption], Field(max_length=8)] = [],  # noqa: B006
        steps: Annotated[int, Field(ge=1, le=20_000)] = 500,
        rank: Annotated[int, Field(ge=1, le=128)] = 16,
        learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-4,
        resize_images: bool = True,
        seed: int = 0,
    ) -> dict:
        """Fit a LoRA of the UNet to ``files`` (mounted PNG or JPEG assets), each with
        its caption (``captions``, in order; the trigger words where none is given).
        ``resize_images``: crop each picture's middle square before scaling it to the
        model's side (else the whole picture is scaled). Answers with the LoRA
        (diffusers' safetensors, base64) and the losses."""
        import lora
        from PIL import Image, UnidentifiedImageError

        if captions is not None and len(captions) != len(files):
            raise InvalidInput(f"{len(captions)} captions for {len(files)} files")
        fallback = " ".join(trigger_words)
        pictures, texts = [], []
        for i, name in enumerate(files):
            path = _assets() / name
            if not path.is_file():
                raise InvalidInput(f"training file {name!r} is not among this endpoint's assets")
            try:
                with Image.open(path) as picture:
                    pictures.append(lora.square(picture, self.side, crop=resize_images))
            except (UnidentifiedImageError, OSError) as exc:
                raise InvalidInput(f"training file {name!r} is not a picture: {exc}") from exc
            caption = (captions[i] if captions else "") or fallback
            texts.append(caption)
        if self.loaded:  # train on the bare model (what infer loads again on demand)
            self.pipe.unload_lora_weights()
            self.loaded.clear()

        def progress(step: int, loss: float) -> None:
            print(f"train step {step}/{steps} loss {loss:.5f}", flush=True)

        started = time.perf_counter()
        try:
            figures = lora.train(
                self.pipe, pictures, texts, side=self.side, steps=steps, rank=rank,
                learning_rate=learning_rate, seed=seed, progress=progress,
            )  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                made = lora.save(
                    self.pipe,
                    Path(tmp),
                    {"steps": str(steps), "rank": str(rank), "pictures": str(len(pictures))},
                )
                data = made.read_bytes()
        finally:
            self.pipe.unet.delete_adapters("default")
            self.pipe.unet.disable_gradient_checkpointing()
        print(
            f"trained: loss on fixed draws {figures['loss_before']:.5f} -> "
            f"{figures['loss_after']:.5f}",
            flush=True,
        )
        return {
            "adapter": {"data": base64.b64encode(data).decode()},
            "metrics": {
                "pictures": len(pictures),
                "steps": steps,
                "seconds": round(time.perf_counter() - started, 3),
                "loss_before": figures["loss_before"],
                "loss_after": figures["loss_after"],
                "losses": [round(v, 6) for v in figures["losses"]],
            },
        }


def _assets() -> Path:
    return Path(os.environ.get("OCTOAI_VOLUME_PATH", "/nonexistent")) / "assets"
