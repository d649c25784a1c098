"""Text to speech: text in, a WAV out, spoken by eSpeak NG (Debian's espeak-ng, which
the replica's host must have). ``speak`` streams one WAV per sentence as it is made.

    berth deploy --example tts
    curl $BERTH_URL/e/tts/infer -H "Authorization: Bearer $BERTH_TOKEN" \
      -d '{"text": "Hello from Berth", "voice": "en-gb"}' | jq -r .output.audio.data | base64 -d > hello.wav
"""

import re
import shutil
import subprocess
import wave
from collections.abc import Iterator
from io import BytesIO
from typing import Annotated, Literal

from pydantic import Field

from workers.media import Media
from workers.service import InvalidInput, Service

Voice = Literal["en-gb", "en-us", "en-gb-scotland", "en-029", "de", "fr", "es", "it", "nl"]
# Words per minute: eSpeak's own bounds.
Speed = Annotated[int, Field(ge=80, le=450)]
Text = Annotated[str, Field(min_length=1, max_length=5000)]


class Tts(Service):
    def setup(self) -> None:
        self.espeak = shutil.which("espeak-ng")
        if not self.espeak:
            raise RuntimeError("espeak-ng is not installed on this host (Debian: espeak-ng)")

    def infer(self, text: Text, voice: Voice = "en-us", speed: Speed = 175) -> dict:
        """The whole text as one WAV (16-bit mono), with its length in seconds."""
        audio = self._speak(text, voice, speed)
        return {"audio": Media.of(audio).model_dump(), "seconds": _seconds(audio)}

    def speak(self, text: Text, voice: Voice = "en-us", speed: Speed = 175) -> Iterator[dict]:
        """Streamed: each sentence's WAV as soon as it is spoken (``Accept: text/event-stream``)."""
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
        for i, sentence in enumerate(sentences):
            audio = self._speak(sentence, voice, speed)
            yield {
                "index": i,
                "text": sentence,
                "audio": Media.of(audio).model_dump(),
                "seconds": _seconds(audio),
            }

    def _speak(self, text: str, voice: str, speed: int) -> bytes:
        assert self.espeak is not None
        done = subprocess.run(
            [self.espeak, "--stdout", "-v", voice, "-s", str(speed), "--", text],
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0 or not done.stdout:
            raise InvalidInput(f"espeak-ng could not speak it: {done.stderr.decode()[-200:]}")
        return _whole_wav(done.stdout)


def _whole_wav(raw: bytes) -> bytes:
    """espeak-ng writes to a pipe with unknown lengths in the header: write it again whole."""
    with wave.open(BytesIO(raw)) as w:
        params = w.getparams()
        frames = w.readframes(w.getnframes() or 1 << 30)
    out = BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes(frames)
    return out.getvalue()


def _seconds(audio: bytes) -> float:
    with wave.open(BytesIO(audio)) as w:
        return round(w.getnframes() / w.getframerate(), 3)
