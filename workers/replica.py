"""Entry point of a replica process: ``python -m workers.replica <model-dir>``.

Loads the folder's ``service.py``, builds the model server and serves it on
``$PORT``. Used by the process runtime and as the CMD of built images.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn

from workers import tracing
from workers.server import build_app, require_key, setup_failure_exit
from workers.service import MODEL_SITE_ENV, REPLICA_KEY_ENV, Service, find_service


def load_service(model_dir: Path) -> Service:
    path = model_dir / "service.py"
    if not path.is_file():
        raise FileNotFoundError(f"no service.py in {model_dir}")
    sys.path.insert(0, str(model_dir))
    spec = importlib.util.spec_from_file_location("service", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["service"] = module
    spec.loader.exec_module(module)
    return find_service(module)()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    model_dir = Path(args[0] if args else os.environ.get("BERTH_MODEL_DIR", ".")).resolve()
    logging.basicConfig(
        level=os.environ.get("BERTH_LOG_LEVEL", "INFO"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Out of the environment before the model's code runs: a subprocess it starts, or
    # anything it prints of its environment, never shows the key.
    key = os.environ.pop(REPLICA_KEY_ENV, None)
    site = os.environ.pop(MODEL_SITE_ENV, None)
    if site:  # the model's own packages (its requirements.txt) come before Berth's
        sys.path.insert(0, site)
    try:
        service = load_service(model_dir)
        app = build_app(service, on_setup_failure=setup_failure_exit)
    except Exception as exc:
        print(
            f"berth: cannot load service: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True
        )
        raise SystemExit(3) from exc
    served: Any = app
    if tracing.configure(
        "berth-replica", **{"berth.replica": os.environ.get("OCTOAI_REPLICA_NAME", "")}
    ):
        served = tracing.traced_app(app)
    config = uvicorn.Config(
        require_key(served, key) if key else served,
        host=os.environ.get("BERTH_REPLICA_HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8080")),
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
