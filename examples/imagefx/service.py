"""Image to image: an effect computed on the picture sent (Pillow), a PNG back.

    berth deploy --example imagefx
    curl $BERTH_URL/e/imagefx/infer -H "Authorization: Bearer $BERTH_TOKEN" \
      -d '{"image": {"data": "'"$(base64 -w0 photo.jpg)"'"}, "effect": "sketch"}'
"""

from io import BytesIO
from typing import Annotated, Literal

from pydantic import Field

from workers.media import Media
from workers.service import InvalidInput, Service

Effect = Literal["edges", "sketch", "sepia", "posterize", "blur", "emboss", "invert"]
Strength = Annotated[float, Field(ge=0.0, le=1.0)]
MAX_PIXELS = 16_000_000  # larger images are refused, not resized behind the caller's back


class ImageFx(Service):
    def setup(self) -> None:
        # Here, not at the top: the catalogue reads this module where Pillow may be missing.
        from PIL import Image, ImageFilter, ImageMath, ImageOps

        self.Image, self.ImageFilter, self.ImageOps = Image, ImageFilter, ImageOps
        self.ImageMath = ImageMath
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS

    def infer(self, image: Media, effect: Effect = "sketch", strength: Strength = 1.0) -> dict:
        """``image`` (PNG, JPEG, WebP, …) with ``effect`` applied, blended with the original
        by ``strength`` (0: unchanged, 1: the effect alone); a PNG of the same size."""
        Image, ImageFilter, ImageOps = self.Image, self.ImageFilter, self.ImageOps
        try:
            source = Image.open(BytesIO(image.content()))
            source.load()
        except (OSError, Image.DecompressionBombError) as exc:
            raise InvalidInput(f"not an image Pillow can read: {exc}") from exc
        rgb = source.convert("RGB")
        gray = ImageOps.grayscale(rgb)
        if effect == "edges":
            out = gray.filter(ImageFilter.FIND_EDGES).convert("RGB")
        elif effect == "sketch":  # a pencil drawing: the gray image dodged by its blurred negative
            blurred = ImageOps.invert(gray).filter(ImageFilter.GaussianBlur(8))
            dodged = self.ImageMath.lambda_eval(
                lambda a: a["min"](a["g"] * 255 / (256 - a["b"]), 255), g=gray, b=blurred
            )
            out = dodged.convert("L").convert("RGB")
        elif effect == "sepia":
            out = ImageOps.colorize(gray, black="#2e1f0f", white="#f3e2c3", mid="#a67b4f")
        elif effect == "posterize":
            out = ImageOps.posterize(rgb, 2)
        elif effect == "blur":
            out = rgb.filter(ImageFilter.GaussianBlur(6))
        elif effect == "emboss":
            out = gray.filter(ImageFilter.EMBOSS).convert("RGB")
        else:
            out = ImageOps.invert(rgb)
        if strength < 1.0:
            out = Image.blend(rgb, out, strength)
        buf = BytesIO()
        out.save(buf, format="PNG", optimize=True)
        return {
            "image": Media.of(buf.getvalue()).model_dump(),
            "width": out.width,
            "height": out.height,
            "effect": effect,
        }
