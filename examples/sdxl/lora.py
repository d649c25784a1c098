"""LoRA fine-tuning of Stable Diffusion XL's UNet on a few captioned pictures.

The usual recipe (diffusers' DreamBooth-LoRA for SDXL, without prior preservation):
every model weight frozen, low-rank adapters on the UNet's attention projections,
the pictures encoded once by the VAE, then at each step noise at a random timestep
and the UNet's prediction of it (or of the velocity, as the scheduler says) fitted
by mean squared error. The adapter is saved in diffusers' LoRA layout
(``pytorch_lora_weights.safetensors``), which ``load_lora_weights`` reads back, as
does every other SDXL tool that takes diffusers LoRAs.

``evaluate`` measures the same loss on fixed noise and timesteps, before and after,
so that what the training did is a number in the tune's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def square(picture: Any, side: int, crop: bool) -> Any:
    """The picture as an RGB ``side``×``side`` tensor in [-1, 1]: the middle square
    cropped out, or the whole picture stretched."""
    import numpy as np
    import torch
    from PIL import Image

    picture = picture.convert("RGB")
    if crop:
        w, h = picture.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        picture = picture.crop((left, top, left + s, top + s))
    picture = picture.resize((side, side), Image.Resampling.BICUBIC)
    array = np.asarray(picture, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


class Batch:
    """What the training reads at every step: the pictures' latents, the captions'
    embeddings and SDXL's size conditioning, computed once."""

    def __init__(self, pipe: Any, pictures: list[Any], captions: list[str], side: int, seed: int):
        import torch

        device, dtype = pipe.unet.device, pipe.unet.dtype
        generator = torch.Generator(device="cpu").manual_seed(seed)
        vae = pipe.vae
        # SDXL's VAE overflows in float16 (its config says force_upcast): encode in float32.
        upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        if upcast:
            vae.to(torch.float32)
        with torch.no_grad():
            latents = [
                vae.encode(p.unsqueeze(0).to(device=device, dtype=vae.dtype)).latent_dist.sample(
                    generator=torch.Generator(device=device).manual_seed(seed + i)
                )
                for i, p in enumerate(pictures)
            ]  # one at a time: a batch of 1024² pictures is a lot of VAE activations
            self.latents = (torch.cat(latents) * vae.config.scaling_factor).to(dtype)
        if upcast:
            vae.to(torch.float16)
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(
                captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
        self.embeds, self.pooled = embeds.to(dtype), pooled.to(dtype)
        # SDXL's micro-conditioning: original size, crop's top-left, target size.
        self.time_ids = torch.tensor(
            [[side, side, 0, 0, side, side]], device=device, dtype=dtype
        ).repeat(len(captions), 1)
        self.generator = generator

    def __len__(self) -> int:
        return int(self.latents.shape[0])


def _loss(pipe: Any, schedule: Any, batch: Batch, which: Any, noise: Any, timesteps: Any) -> Any:
    """The loss on the pictures ``which`` (indices) for this noise at these timesteps."""
    import torch.nn.functional as F

    latents = batch.latents[which]
    noisy = schedule.add_noise(latents, noise, timesteps)
    predicted = pipe.unet(
        noisy,
        timesteps,
        batch.embeds[which],
        added_cond_kwargs={"text_embeds": batch.pooled[which], "time_ids": batch.time_ids[which]},
    ).sample
    if schedule.config.prediction_type == "v_prediction":
        target = schedule.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(predicted.float(), target.float())


Draw = tuple[Any, Any, Any]  # which pictures, their noise, their timesteps


def _draws(batch: Batch, schedule: Any, count: int, seed: int) -> list[Draw]:
    """``count`` fixed draws for every picture, the same before and after training, their
    timesteps spread over the whole schedule (the figure is not one noise level's)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    total = schedule.config.num_train_timesteps
    device, dtype = batch.latents.device, batch.latents.dtype
    draws = []
    for k in range(len(batch)):
        for i in range(count):
            noise = torch.randn((1, *batch.latents.shape[1:]), generator=generator)
            t = torch.tensor([int((i + 0.5) * total / count)])
            draws.append(([k], noise.to(device, dtype), t.to(device)))
    return draws


def evaluate(pipe: Any, schedule: Any, batch: Batch, draws: list[Draw]) -> float:
    import torch

    with torch.no_grad():
        return sum(float(_loss(pipe, schedule, batch, *d)) for d in draws) / len(draws)


def train(
    pipe: Any,
    pictures: list[Any],
    captions: list[str],
    *,
    side: int,
    steps: int,
    rank: int,
    learning_rate: float,
    seed: int,
    batch_size: int = 1,
    progress: Callable[[int, float], None],
) -> dict[str, Any]:
    """Fit a LoRA of ``rank`` to the pictures; the UNet is left with the adapter added
    (call ``save`` next). Returns the figures: losses per step and the fixed-draw loss
    before and after."""
    import torch
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    torch.manual_seed(seed)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        part.requires_grad_(False)
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    batch = Batch(pipe, pictures, captions, side, seed)
    draws = _draws(batch, schedule, 4, seed + 1)
    if pipe.unet.device.type == "cuda":  # SDXL's activations at 1024² need it on most GPUs
        pipe.unet.enable_gradient_checkpointing()
    before = evaluate(pipe, schedule, batch, draws)

    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS)
    )
    trained = [p for p in pipe.unet.parameters() if p.requires_grad]
    for p in trained:  # the adapter learns in float32 even on a half-precision UNet
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=1e-4)
    total = schedule.config.num_train_timesteps
    losses = []
    report_every = max(1, steps // 20)
    pipe.unet.train()
    for step in range(1, steps + 1):
        which = torch.randperm(len(batch), generator=batch.generator)[:batch_size].tolist()
        noise = torch.randn((len(which), *batch.latents.shape[1:]), generator=batch.generator)
        timesteps = torch.randint(0, total, (len(which),), generator=batch.generator)
        device, dtype = batch.latents.device, batch.latents.dtype
        loss = _loss(pipe, schedule, batch, which, noise.to(device, dtype), timesteps.to(device))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        losses.append(value)
        if step % report_every == 0 or step == steps:
            progress(step, losses[-1])
    pipe.unet.eval()
    after = evaluate(pipe, schedule, batch, draws)
    return {"losses": losses, "loss_before": before, "loss_after": after}


def save(pipe: Any, folder: Path, metadata: dict[str, str]) -> Path:
    """The UNet's adapter in diffusers' LoRA layout; the file's path."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionXLPipeline.save_lora_weights(
        str(folder), unet_lora_layers=layers, safe_serialization=True
    )
    path = folder / ADAPTER_FILE
    # Saved again with what made it in the header (read back by nothing; for people).
    save_file(load_file(str(path)), str(path), metadata={"format": "pt", **metadata})
    return path
