"""The example catalogue (``GET /v1/examples``) and an endpoint's code snippets."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.auth import AdminDep
from api.context import AppContext, ContextDep, SessionDep
from api.examples import catalog, sample_from_openapi, snippets
from api.routes.endpoints import get_endpoint_row
from shared.messages import ReplicaState

router = APIRouter(prefix="/v1", tags=["examples"], dependencies=[AdminDep])


@router.get("/examples")
async def list_examples() -> list[dict[str, Any]]:
    """Every example model: what it does and needs, its routes' inputs, its default scaling."""
    return [example.public() for example in catalog().items.values()]


@router.get("/examples/{example_name}")
async def get_example(example_name: str) -> dict[str, Any]:
    example = catalog().get(example_name)
    return {**example.public(), "sample_input": example.sample()}


@router.get("/endpoint/{endpoint_name}/snippets")
async def endpoint_snippets(
    endpoint_name: str, request: Request, ctx: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Calls of the endpoint ready to paste: curl, Python (httpx; OctoAI's SDK) and TypeScript.

    With the example's sample input for an endpoint made from one; else an empty body
    for ``/infer`` to fill in from the model's own ``/openapi.json``.
    """
    ep = await get_endpoint_row(session, endpoint_name)
    url = f"{ctx.settings.base_url()}/e/{ep.name}"
    route, sample, source = "/infer", {}, "none"
    if ep.example and ep.example in catalog().items:
        example = catalog().items[ep.example]
        route, sample, source = example.meta.route, example.sample(), "example"
    elif any(
        r.endpoint == ep.name and r.state == ReplicaState.READY for r in ctx.replicas.items.values()
    ):
        # A replica runs: its model's own schema, asked through the data plane like any call.
        found = await _replica_sample(ctx, ep.name, request.headers.get("authorization", ""))
        if found is not None:
            sample, source = found, "schema"
    return {
        "endpoint": ep.name,
        "url": url + route,
        "input": sample,
        # Where the input comes from: the example's sample, the running model's schema
        # (required inputs, with their defaults or placeholders), or none ({}: fill it in).
        "input_from": source,
        "snippets": snippets(url, route, sample),
    }


class SnippetRequest(BaseModel):
    route: str = Field("/infer", pattern=r"^/[A-Za-z0-9_./~-]{0,200}$")
    input: dict[str, Any] = Field(default_factory=dict)


@router.post("/endpoint/{endpoint_name}/snippets")
async def snippets_for_input(
    endpoint_name: str, body: SnippetRequest, ctx: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """The same calls with a given input and route: the console's "copy as" of a run."""
    ep = await get_endpoint_row(session, endpoint_name)
    url = f"{ctx.settings.base_url()}/e/{ep.name}"
    return {
        "endpoint": ep.name,
        "url": url + body.route,
        "input": body.input,
        "input_from": "request",
        "snippets": snippets(url, body.route, body.input),
    }


async def _replica_sample(ctx: AppContext, name: str, authorization: str) -> dict[str, Any] | None:
    """An input from the model's OpenAPI document (``/openapi.json`` of a running replica)."""
    try:
        host = ctx.settings.host
        here = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        own = f"http://{here if ':' not in here else f'[{here}]'}:{ctx.settings.port}"
        async with httpx.AsyncClient(base_url=own, timeout=5.0) as client:
            resp = await client.get(
                f"/e/{name}/openapi.json", headers={"Authorization": authorization}
            )
        document = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return sample_from_openapi(document) if isinstance(document, dict) else None
