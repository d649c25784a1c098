"""The same echo on Ray Serve, for the benchmark harness (runs in Ray's own virtualenv).

    <ray-venv>/bin/python bench/baselines/ray_echo.py <port> [max_ongoing_requests]

Without a second argument the deployment keeps Ray Serve's defaults. Prints READY
once the HTTP proxy answers, then serves until stdin closes.
"""

import json
import sys
import time
import urllib.request

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response


def main() -> None:
    port = int(sys.argv[1])
    options = {"max_ongoing_requests": int(sys.argv[2])} if len(sys.argv) > 2 else {}

    @serve.deployment(**options)
    class Echo:
        async def __call__(self, request: Request) -> Response:
            body = await request.json()
            output = {"output": {"text": body["prompt"] * body.get("n", 1)}}
            return Response(json.dumps(output), media_type="application/json")

    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    serve.start(
        http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "ERROR"}
    )
    serve.run(Echo.bind(), route_prefix="/infer")
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/infer", data=b'{"prompt":"x"}', method="POST"
            )
            urllib.request.urlopen(req, timeout=5).read()
            break
        except OSError:
            time.sleep(0.2)
    print("READY", flush=True)
    sys.stdin.read()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
