"""A pre-imported template process that forks replicas: cold starts without import cost.

Importing FastAPI, pydantic and uvicorn takes most of a second on a small
machine; a replica forked from this process starts with all of that done. The
agent speaks to it in JSON lines: on stdin ``{"model_dir", "env", "log"}``, on
stdout ``{"pid"}`` for each fork and ``{"exit", "code"}`` when a replica ends.

The zygote stays single-threaded with no event loop, so forking is safe. It and
its replicas die with their parent (PR_SET_PDEATHSIG), so an agent killed hard
leaves no orphans holding GPUs or ports.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from typing import Any

# The imports a replica needs, done once here rather than in every replica.
import anyio._backends._asyncio  # noqa: F401  (anyio loads it on first use: ~110 ms)
import fastapi  # noqa: F401
import uvicorn
import uvloop  # noqa: F401

import workers.replica
import workers.server
from shared.proc import die_with_parent
from workers.sandbox import Policy, SandboxError, apply
from workers.service import Service


class _WarmUp(Service):
    def infer(self, prompt: str, n: int = 1) -> dict[str, str]:
        return {}


def warm_up() -> None:
    """Pay every first-use cost a replica would pay, once, before any fork.

    Building a FastAPI app and its OpenAPI schema the first time costs ~90 ms
    of lazy imports and caches; uvicorn imports its protocol modules when a
    config is loaded. No thread and no event loop is started: forking stays safe.
    """
    app = workers.server.build_app(_WarmUp())
    app.openapi()
    uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on").load()


def _child(request: dict[str, Any], out_fd: int) -> None:
    try:
        os.setsid()
        die_with_parent(signal.SIGKILL)
        os.close(out_fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("sandbox"):
            try:
                apply(Policy.from_json(request["sandbox"]))
            except (SandboxError, OSError) as exc:
                print(f"berth: cannot sandbox the replica: {exc}", file=sys.stderr, flush=True)
                os._exit(3)
        os.chdir(request["model_dir"])
        sys.argv = ["workers.replica", request["model_dir"]]
        workers.replica.main([request["model_dir"]])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    die_with_parent(signal.SIGTERM)
    warm_up()
    out_fd = os.dup(1)
    out = os.fdopen(out_fd, "w", buffering=1)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stdin = sys.stdin.buffer
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    buf = b""
    while True:
        readable, _, _ = select.select([stdin.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        while True:  # reap every replica that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            out.write(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
        if stdin.fileno() in readable:
            chunk = os.read(stdin.fileno(), 65536)
            if not chunk:  # the agent closed our stdin: stop
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request, out_fd)
                out.write(json.dumps({"pid": pid, "tag": request.get("tag")}) + "\n")


if __name__ == "__main__":
    main()
