"""The web console (``/console/``), public demo pages (``/demo/<endpoint>``) and the API
reference (``/docs``), all served by the API itself with nothing fetched from outside.

The console is a few ES modules (``static/``) run by the browser: no build step, no
framework. It keeps the API token in the tab's ``sessionStorage`` and sends it as a
bearer header, so no cookie carries it and a forged cross-site request has nothing
to ride on (no CSRF). Every page is served with a Content-Security-Policy that
allows only Berth's own scripts, no inline script and Trusted Types with no policy:
an ``innerHTML`` of model output throws instead of running. The console writes
model output with ``textContent`` and renders media from bytes it decoded itself.
"""

from __future__ import annotations

import gzip
import hashlib
import html
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from shared.errors import NotFound
from shared.names import ENDPOINT_NAME_RE

__all__ = ["CONSOLE_CSP", "install_console"]

STATIC = Path(__file__).parent / "static"
SWAGGER = Path(fastapi_offline.__file__).parent / "static"

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' data: blob:; connect-src 'self'; font-src 'self'; "
    "manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
# Swagger UI sets inline styles; its scripts are still Berth's own files only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

_SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="/console/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/console/static/console.css">
{preload}<script type="module" src="/console/static/{entry}"></script>
</head>
<body data-mode="{mode}" data-endpoint="{endpoint}">
<noscript>The Berth console needs JavaScript.</noscript>
<div id="app"></div>
</body>
</html>
"""

_DOCS = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Berth API reference</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" href="/console/static/favicon.svg" type="image/svg+xml">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/console/static/docs.js"></script>
</body>
</html>
"""


class _Assets:
    """A folder's files held in memory, each with its gzip and ETag: served without a file
    read or a thread hop (StaticFiles spends about 20 ms a file here, on two cores shared
    with the browser), and revalidated on every load (``no-cache``), so that a new Berth
    never runs old scripts."""

    def __init__(self, folder: Path, suffixes: tuple[str, ...]):
        self.files: dict[str, tuple[bytes, bytes, str, str]] = {}
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in suffixes:
                raw = path.read_bytes()
                tag = '"' + hashlib.sha256(raw).hexdigest()[:16] + '"'
                kind = _TYPES.get(path.suffix, "application/octet-stream")
                self.files[path.name] = (raw, gzip.compress(raw, 9, mtime=0), tag, kind)

    def respond(self, name: str, request: Request) -> Response:
        found = self.files.get(name)
        if found is None:
            raise NotFound(f"no file {name!r}")
        raw, packed, tag, kind = found
        headers = {
            "etag": tag,
            "cache-control": "no-cache",
            "x-content-type-options": "nosniff",
            "vary": "accept-encoding",
        }
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["content-encoding"] = "gzip"
            return Response(packed, media_type=kind, headers=headers)
        return Response(raw, media_type=kind, headers=headers)


_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


# Every module the console imports, fetched at once instead of import by import.
_PRELOAD = "".join(
    f'<link rel="modulepreload" href="/console/static/{p.name}">\n'
    for p in sorted(STATIC.glob("*.js"))
    if p.name != "docs.js"
)


def _page(mode: str, endpoint: str = "", title: str = "Berth") -> HTMLResponse:
    body = _SHELL.format(
        preload=_PRELOAD,
        title=html.escape(title),
        entry="app.js",
        mode=mode,
        endpoint=html.escape(endpoint, quote=True),
    )
    return HTMLResponse(body, headers={**_PAGE_HEADERS, "content-security-policy": CONSOLE_CSP})


def install_console(app: FastAPI) -> None:
    console_files = _Assets(STATIC, (".js", ".css", ".svg"))
    docs_files = _Assets(SWAGGER, (".js", ".css", ".png"))

    @app.get("/console/static/{name}", include_in_schema=False)
    async def console_static(name: str, request: Request) -> Response:
        return console_files.respond(name, request)

    @app.get("/docs/static/{name}", include_in_schema=False)
    async def docs_static(name: str, request: Request) -> Response:
        return docs_files.respond(name, request)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    @app.get("/console", include_in_schema=False)
    @app.get("/console/{page:path}", include_in_schema=False)
    async def console(page: str = "") -> HTMLResponse:
        return _page("console")

    @app.get("/demo/{endpoint_name}", include_in_schema=False)
    async def demo(endpoint_name: str) -> HTMLResponse:
        if not ENDPOINT_NAME_RE.match(endpoint_name):
            raise NotFound(f"endpoint {endpoint_name!r} does not exist")
        return _page("demo", endpoint_name, f"{endpoint_name} · Berth demo")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_DOCS, headers={**_PAGE_HEADERS, "content-security-policy": DOCS_CSP})
