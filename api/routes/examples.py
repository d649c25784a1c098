"""The example catalogue (``GET /v1/examples``) and an endpoint's code snippets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.auth import AdminDep
from api.context import ContextDep, SessionDep
from api.examples import catalog, snippets
from api.routes.endpoints import get_endpoint_row

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
    endpoint_name: str, ctx: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Calls of the endpoint ready to paste: curl, Python (httpx; OctoAI's SDK) and TypeScript.

    With the example's sample input for an endpoint made from one; else an empty body
    for ``/infer`` to fill in from the model's own ``/openapi.json``.
    """
    ep = await get_endpoint_row(session, endpoint_name)
    url = f"{ctx.settings.base_url()}/e/{ep.name}"
    route, sample = "/infer", {}
    if ep.example and ep.example in catalog().items:
        example = catalog().items[ep.example]
        route, sample = example.meta.route, example.sample()
    return {
        "endpoint": ep.name,
        "url": url + route,
        "input": sample,
        "snippets": snippets(url, route, sample),
    }
