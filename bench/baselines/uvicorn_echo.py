"""The ceiling: the same echo as examples/echo, as a bare FastAPI app on uvicorn (uvloop, httptools).

python -m bench.baselines.uvicorn_echo <port>
"""

import sys

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/infer")
async def infer(request: Request) -> Response:
    body = orjson.loads(await request.body())
    output = {"output": {"text": body["prompt"] * body.get("n", 1)}}
    return Response(orjson.dumps(output), media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
