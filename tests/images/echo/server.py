"""An echo model as a plain container: any image that serves HTTP on $PORT is a replica.

Standard library only. GET /healthcheck (and Cog's /health-check) answers 200
once ready; POST /infer and Cog's POST /predictions echo the JSON body back with
this process's pid, after sleeping `sleep` seconds if asked; GET /env?name=X
reports one environment variable; GET /file?path=X reports a file's sha256 and size and
whether it can be written. ECHO_READY_DELAY delays readiness;
ECHO_NEVER_READY keeps the health check at 503; ECHO_EXIT exits at once with
that code after printing a line; ECHO_LISTEN_PORT listens elsewhere than $PORT;
ECHO_EAT_MB allocates that much memory first. Cog's /health-check answers 200
with {"status": "STARTING"} until ready, as Cog does.
"""

import hashlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STARTED = time.monotonic()
READY_AFTER = float(os.environ.get("ECHO_READY_DELAY", "0"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path in ("/healthcheck", "/health-check"):
            ready = not os.environ.get("ECHO_NEVER_READY") and (
                time.monotonic() - STARTED >= READY_AFTER
            )
            # Cog's /health-check is 200 all along; its body says whether setup is done.
            status = 200 if ready or url.path == "/health-check" else 503
            self._send(status, {"status": "READY" if ready else "STARTING"})
        elif url.path == "/file":
            path = parse_qs(url.query).get("path", [""])[0]
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                self._send(404, {"error": str(exc)})
                return
            try:
                with open(path, "ab") as f:
                    f.write(b"!")
                wrote = "changed it"
            except OSError as exc:
                wrote = type(exc).__name__ + ": " + str(exc)
            digest = hashlib.sha256(data).hexdigest()
            self._send(200, {"sha256": digest, "size": len(data), "write": wrote})
        elif url.path == "/env":
            name = parse_qs(url.query).get("name", [""])[0]
            self._send(200, {"name": name, "value": os.environ.get(name)})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        data = json.loads(self.rfile.read(length) or b"{}")
        if self.path in ("/infer", "/predictions"):
            time.sleep(float(data.get("sleep", 0)))
            payload = {
                "echo": data,
                "pid": os.getpid(),
                "replica": os.environ.get("OCTOAI_REPLICA_NAME"),
            }
            self._send(200, {"output": payload} if self.path == "/predictions" else payload)
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("echo: " + fmt % args + "\n")


if __name__ == "__main__":
    if os.environ.get("ECHO_EXIT"):
        print("echo: failing on purpose", flush=True)
        sys.exit(int(os.environ["ECHO_EXIT"]))
    if os.environ.get("ECHO_EAT_MB"):  # for the out-of-memory test
        hog = bytearray(int(os.environ["ECHO_EAT_MB"]) * 1024 * 1024)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
    # ECHO_LISTEN_PORT: an image that ignores $PORT (it never answers where it should).
    port = int(os.environ.get("ECHO_LISTEN_PORT") or os.environ.get("PORT", "8080"))
    print(f"echo: listening on {port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
