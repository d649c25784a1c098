"""A model whose every output is markup that would run if a page parsed it as HTML:
the console must show it as text (tests/test_console_access.py)."""

from collections.abc import Iterator

from workers.service import Service

ATTACKS = [
    "<img src=x onerror=\"window.__xss='img'\">",
    "<script>window.__xss='script'</script>",
    "<svg onload=\"window.__xss='svg'\"></svg>",
    "<a href=\"javascript:window.__xss='link'\">click</a>",
    "<iframe srcdoc=\"<script>parent.__xss='iframe'</script>\"></iframe>",
]


class Markup(Service):
    def infer(self, prompt: str = "<b>bold</b>") -> dict:
        return {
            "html": prompt,
            "attacks": ATTACKS,
            "<img src=x onerror=\"window.__xss='key'\">": "a hostile key",
            "data": "PGltZyBzcmM9eCBvbmVycm9yPSJ3aW5kb3cuX194c3M9J2I2NCciPg==",
        }

    def chunks(self, prompt: str = "<b>bold</b>") -> Iterator[str]:
        """Streamed markup, a piece at a time."""
        yield from [prompt, *ATTACKS]
