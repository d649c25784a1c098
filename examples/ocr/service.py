"""OCR: an image in, its text and each word's box out, read by Tesseract (Debian's
tesseract-ocr, which the replica's host must have).

    berth deploy --example ocr
    curl $BERTH_URL/e/ocr/infer -H "Authorization: Bearer $BERTH_TOKEN" \
      -d '{"image": {"data": "'"$(base64 -w0 page.png)"'"}}'
"""

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from workers.media import Media
from workers.service import InvalidInput, Service

# Tesseract's page segmentation modes a caller may pick: 3 a whole page (the default),
# 6 one block of text, 7 a single line, 11 sparse text in no order.
PageMode = Literal[3, 6, 7, 11]


class Ocr(Service):
    def setup(self) -> None:
        self.tesseract = shutil.which("tesseract")
        if not self.tesseract:
            raise RuntimeError("tesseract is not installed on this host (Debian: tesseract-ocr)")
        langs = subprocess.run(
            [self.tesseract, "--list-langs"], capture_output=True, text=True, check=True
        ).stdout.split()[1:]
        self.languages = sorted(set(langs) - {"osd"})

    def infer(self, image: Media, lang: str = "eng", page_mode: PageMode = 3) -> dict:
        """The text of ``image`` (PNG, JPEG, TIFF, …), and every word with its confidence
        (0-100) and box (left, top, width, height in pixels)."""
        if lang not in self.languages:
            raise InvalidInput(f"lang {lang!r} is not installed; this host has {self.languages}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image"
            path.write_bytes(image.content())
            tsv = self._tesseract(path, lang, page_mode, "tsv")
        words = []
        for line in tsv.splitlines()[1:]:
            cols = line.split("\t")
            if len(cols) == 12 and cols[0] == "5" and cols[11].strip():
                left, top, width, height = (int(c) for c in cols[6:10])
                words.append(
                    {
                        "text": cols[11],
                        "confidence": round(float(cols[10]), 1),
                        "box": [left, top, width, height],
                        "line": [int(cols[2]), int(cols[3]), int(cols[4])],  # block, par, line
                    }
                )
        # The text, from the words (one run of Tesseract, not two): a line's words joined
        # by spaces, its lines by newlines, paragraphs and blocks by a blank line.
        lines: dict[tuple[int, int, int], list[str]] = {}
        for word in words:
            block, par, line = word["line"]
            lines.setdefault((block, par, line), []).append(word["text"])
        text, last = "", None
        for (block, par, _), texts in lines.items():
            if last is not None:
                text += "\n\n" if (block, par) != last else "\n"
            text += " ".join(texts)
            last = (block, par)
        return {"text": text, "words": words}

    def _tesseract(self, path: Path, lang: str, page_mode: int, kind: str) -> str:
        assert self.tesseract is not None
        args = [self.tesseract, str(path), "-", "-l", lang, "--psm", str(page_mode)]
        done = subprocess.run(
            [*args, kind],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1:] or ["no reason given"]
            raise InvalidInput(f"tesseract could not read the image: {why[0]}")
        return done.stdout
