"""The catalogue of example models, and the code snippets that call an endpoint.

An example is a model folder under ``examples/`` with an ``example.json``: what it
does, what its host needs, its default scaling and a sample input. Its input and
output schemas come from the model's own code (the signature of each route, as
its replica's ``/openapi.json`` gives them). ``POST /v1/endpoint`` with
``"example": "<name>"`` stores that folder as the endpoint's model.

Snippets are built for one endpoint from its route and a sample input (the
example's, or ``{}``): curl, Python (OctoAI's SDK and plain httpx) and TypeScript
(fetch), each ready to paste with ``BERTH_URL`` and ``BERTH_TOKEN`` set.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from shared.errors import NotFound

__all__ = [
    "Catalog",
    "Example",
    "ExampleMeta",
    "catalog",
    "sample_from_openapi",
    "sample_from_schema",
    "snippets",
]

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


class ExampleMeta(BaseModel):
    """``example.json``: what the catalogue says of an example beyond its code."""

    description: str
    # What its replicas' host must have besides Berth (Debian packages, a GPU).
    needs: list[str] = Field(default_factory=list)
    instance_type: str = "cpu"
    min_replicas: int = 0
    max_replicas: int = 1
    scale_to_zero: int = 300
    concurrency_per_replica: int = 1
    # The route a caller uses first, and an input for it that works as it is.
    route: str = "/infer"
    # A string "@<file>" in it stands for that file of the folder, in base64.
    sample_input: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Example:
    name: str
    folder: Path
    meta: ExampleMeta

    @cached_property
    def routes(self) -> dict[str, dict[str, Any]]:
        """Each route's input schema and description, read from the model's code."""
        from workers.server import input_model
        from workers.service import find_service, public_routes

        spec = importlib.util.spec_from_file_location(
            f"berth_example_{self.name.replace('-', '_')}", self.folder / "service.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        service = find_service(module)()
        out: dict[str, dict[str, Any]] = {}
        methods = {"/infer": service.infer, **public_routes(service)}
        for path, method in methods.items():
            model = input_model(method, "Input")
            out[path] = {
                "description": inspect.getdoc(method) or "",
                "input_schema": model.model_json_schema(),
                "streams": inspect.isgeneratorfunction(method)
                or inspect.isasyncgenfunction(method),
            }
        return out

    def public(self) -> dict[str, Any]:
        meta = self.meta
        routes: dict[str, Any]
        try:
            routes = self.routes
        except Exception as exc:  # its code does not load here: say so, list the rest
            routes = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "name": self.name,
            "description": meta.description,
            "needs": meta.needs,
            "instance_type": meta.instance_type,
            "defaults": {
                "min_replicas": meta.min_replicas,
                "max_replicas": meta.max_replicas,
                "scale_to_zero": meta.scale_to_zero,
                "concurrency_per_replica": meta.concurrency_per_replica,
            },
            "route": meta.route,
            "routes": routes,
        }

    def sample(self) -> dict[str, Any]:
        """The sample input, with each ``"@file"`` replaced by that file's base64."""
        import base64

        def fill(value: Any) -> Any:
            if isinstance(value, str) and value.startswith("@"):
                return base64.b64encode((self.folder / value[1:]).read_bytes()).decode()
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            if isinstance(value, list):
                return [fill(v) for v in value]
            return value

        filled: dict[str, Any] = fill(self.meta.sample_input)
        return filled


class Catalog:
    """The examples in a folder (``examples/`` of Berth's tree by default)."""

    def __init__(self, folder: Path = EXAMPLES_DIR):
        self.items: dict[str, Example] = {}
        for meta_path in sorted(folder.glob("*/example.json")):
            try:
                meta = ExampleMeta.model_validate(json.loads(meta_path.read_text()))
            except (ValueError, ValidationError) as exc:
                raise RuntimeError(f"{meta_path}: {exc}") from exc
            name = meta_path.parent.name
            self.items[name] = Example(name, meta_path.parent, meta)

    def get(self, name: str) -> Example:
        example = self.items.get(name)
        if example is None:
            raise NotFound(
                f"no example {name!r}; GET /v1/examples lists them: {sorted(self.items)}"
            )
        return example


def sample_from_schema(
    schema: dict[str, Any], defs: dict[str, Any] | None = None, depth: int = 0
) -> Any:
    """An input that fits a JSON schema: its defaults and examples where it has them, else
    the first enum value, the lower bound, or a placeholder of the type."""
    defs = defs or {}
    if depth > 8:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return sample_from_schema(defs.get(ref.rsplit("/", 1)[-1], {}), defs, depth + 1)
    for key in ("default", "example"):
        if key in schema:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, []) if o.get("type") != "null"]
        if options:
            return sample_from_schema(options[0], defs, depth + 1)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", []))
        return {
            name: sample_from_schema(prop, defs, depth + 1)
            for name, prop in schema.get("properties", {}).items()
            if name in required
        }
    if kind == "array":
        return [sample_from_schema(schema.get("items", {}), defs, depth + 1)]
    if kind == "string":
        return "text"
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 1))
        return low if kind == "number" else int(low)
    if kind == "boolean":
        return False
    return None


def sample_from_openapi(document: dict[str, Any], route: str = "/infer") -> dict[str, Any] | None:
    """An input for ``route`` from a replica's OpenAPI document; None if it has none."""
    try:
        body = document["paths"][route]["post"]["requestBody"]["content"]["application/json"]
    except (KeyError, TypeError):
        return None
    defs = document.get("components", {}).get("schemas", {})
    sample = sample_from_schema(body.get("schema", {}), defs)
    return sample if isinstance(sample, dict) else None


@cache
def catalog() -> Catalog:
    """Berth's own catalogue, read once: ``BERTH_EXAMPLES_DIR``, else Berth's tree's."""
    from shared.settings import ApiSettings

    return Catalog(ApiSettings().examples_dir or EXAMPLES_DIR)


def snippets(url: str, route: str, sample: dict[str, Any]) -> dict[str, str]:
    """Ready-to-run calls of ``url + route`` with ``sample`` as the body."""
    target = url.rstrip("/") + route
    body = json.dumps(sample)
    pretty = json.dumps(sample, indent=4)
    curl = (
        f"curl -sS -X POST {_sh(target)} \\\n"
        '  -H "Authorization: Bearer $BERTH_TOKEN" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d {_sh(body)}"
    )
    python_httpx = (
        "import os\n\nimport httpx\n\n"
        f"inputs = {pretty}\n"
        "resp = httpx.post(\n"
        f"    {target!r},\n"
        '    headers={"Authorization": f"Bearer {os.environ[\'BERTH_TOKEN\']}"},\n'
        "    json=inputs,\n"
        "    timeout=300,\n"
        ")\n"
        "resp.raise_for_status()\n"
        'print(resp.json()["output"])\n'
    )
    python_octoai = (  # OctoAI's Python SDK (octoai-sdk 0.x): the same call, unchanged
        "import os\n\nfrom octoai.client import Client\n\n"
        "client = Client(token=os.environ['BERTH_TOKEN'])\n"
        f"inputs = {pretty}\n"
        f"print(client.infer({target!r}, inputs))\n"
    )
    typescript = (
        f"const inputs = {pretty};\n"
        f"const resp = await fetch({json.dumps(target)}, {{\n"
        '  method: "POST",\n'
        "  headers: {\n"
        "    Authorization: `Bearer ${process.env.BERTH_TOKEN}`,\n"
        '    "Content-Type": "application/json",\n'
        "  },\n"
        "  body: JSON.stringify(inputs),\n"
        "});\n"
        "if (!resp.ok) throw new Error(`${resp.status}: ${await resp.text()}`);\n"
        "console.log((await resp.json()).output);\n"
    )
    return {
        "curl": curl,
        "python": python_httpx,
        "python_octoai": python_octoai,
        "typescript": typescript,
    }


def _sh(text: str) -> str:
    """``text`` quoted for a POSIX shell."""
    return "'" + text.replace("'", "'\"'\"'") + "'"
