"""The ``berth`` command.

Processes: ``up`` (everything on one machine), ``api``, ``scaler``, ``agent``.
Client commands (talk to the API): ``deploy``, ``endpoints``, ``infer``, ``delete``,
``tokens``, ``secrets``, ``registry-credentials`` (see berth/access.py), ``assets``
and ``tunes`` (berth/library.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _examples(args: argparse.Namespace) -> None:
    from berth.client import from_environment

    client = from_environment()
    if args.name:
        print(json.dumps(client.request("GET", f"/v1/examples/{args.name}"), indent=2))
        return
    for ex in client.request("GET", "/v1/examples"):
        needs = f"  (needs {', '.join(ex['needs'])})" if ex["needs"] else ""
        print(f"{ex['name']:<12} {ex['description']}{needs}")
    print("\ndeploy one: berth deploy --example <name>")


def _snippets(args: argparse.Namespace) -> None:
    from berth.client import from_environment

    found = from_environment().request("GET", f"/v1/endpoint/{args.name}/snippets")
    for lang, text in found["snippets"].items():
        if args.lang in (None, lang):
            if args.lang is None:
                print(f"# {lang}")
            print(text.rstrip() + "\n")


def _deploy(args: argparse.Namespace) -> None:
    from berth.client import ApiError, from_environment

    client = from_environment()
    given = {
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "scale_to_zero": args.scale_to_zero,
        "concurrency_per_replica": args.concurrency,
        "instance_type": args.instance_type,
        "request_timeout": args.timeout,
    }
    # What is not given keeps the server's default (or the example's, or, on an update,
    # the endpoint's current value).
    fields: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    fields.update(
        visibility="public" if args.public else "private",
        env_overrides=dict(kv.split("=", 1) for kv in args.env),
        container_secrets=args.secret,
    )
    if args.asset:
        fields["assets"] = args.asset
    if args.example:  # one of the catalogue's (berth examples)
        name = args.name or args.example
        try:
            client.get_endpoint(name)
        except ApiError as exc:
            if exc.status != 404:
                raise
        else:
            raise SystemExit(f"berth: endpoint {name} exists; delete it or give --name")
        endpoint = client.create_endpoint(name=name, example=args.example, **fields)
        print(f"endpoint {name} created (example {args.example})\n  URL: {endpoint.endpoint}")
        print(f"  try it: berth snippets {name}")
        return
    if args.image:  # a container image, from any registry
        if not args.name:
            raise SystemExit("berth: --image needs --name")
        name, what = args.name, args.image
        fields.update(image_url=args.image, port=args.port, model_id=None)
        fields["health_check_path"] = args.health_check_path
        if args.registry_credential:
            fields["registry_credential"] = args.registry_credential
    else:
        if not args.path:
            raise SystemExit("berth: give a folder with a service.py, or --image")
        folder = Path(args.path)
        if not (folder / "service.py").is_file():
            raise SystemExit(f"berth: {folder} has no service.py")
        model_id = client.upload_model(folder, progress=_upload_progress)
        fields.update(model_id=model_id, image_url=None)
        name = args.name or folder.resolve().name.lower().replace("_", "-")
        what = f"{model_id[:19]}…"
    try:
        client.get_endpoint(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        endpoint = client.create_endpoint(name=name, **fields)
        verb = "created"
    else:
        endpoint = client.update_endpoint(name, **fields)
        verb = "updated"
    print(f"endpoint {name} {verb} ({what})\n  URL: {endpoint.endpoint}")


def _endpoints(args: argparse.Namespace) -> None:
    from berth.client import from_environment

    client = from_environment()
    if args.name:
        print(json.dumps(client.get_endpoint(args.name).model_dump(mode="json"), indent=2))
        return
    rows = [e.model_dump(mode="json") for e in client.list_endpoints()]
    print(f"{'NAME':<24} {'STATE':<9} {'MIN':>3} {'MAX':>3} {'REPLICAS':<20} URL")
    for ep in rows:
        states: dict[str, int] = {}
        for r in ep["replicas"]:
            states[r["status"]] = states.get(r["status"], 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "0"
        print(
            f"{ep['name']:<24} {ep['endpoint_state']:<9} {ep['min_replicas']:>3} {ep['max_replicas']:>3} {summary:<20} {ep['endpoint']}"
        )


def _infer(args: argparse.Namespace) -> None:
    from berth.client import ApiError, from_environment

    payload = json.loads(args.data) if args.data else {}
    try:
        answer = from_environment().infer(args.name, payload, path=args.route)
    except ApiError as exc:
        if not exc.status:
            raise
        body = exc.body
        print(json.dumps(body, indent=2) if not isinstance(body, str) else body)
        print(f"berth: HTTP {exc.status} (request id {exc.request_id})", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(answer, indent=2) if not isinstance(answer, str | bytes) else answer)


def _event_line(item: dict[str, Any]) -> str:
    event = item["event"]
    details = dict(event.get("details") or {})
    reason = details.pop("reason", "")
    replica = f" replica={item['replica_id']}" if item.get("replica_id") else ""
    extra = " ".join(
        f"{k}={v}" for k, v in details.items() if k != "agent_id" and v not in (None, [], "")
    )
    return f"{item['timestamp']}  {event['level']:<7} {event['type']:<22}{replica} {reason} {extra}".rstrip()


def _events(args: argparse.Namespace) -> None:
    from berth.client import from_environment

    if not args.follow:
        for event in from_environment().events(args.name, max_lines=args.max_lines):
            print(_event_line(event.model_dump()))
        return
    # Live: the last ten minutes, then each event as it happens; an image pull as a bar.
    client = from_environment(timeout=None)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    for item in client.follow_events(args.name, since=since):
        details = item["event"].get("details") or {}
        if item["event"]["type"] == "image_pull_progress" and details.get("total_bytes"):
            print(f"pulling {details['image']} ", end="", file=sys.stderr)
            _progress_bar(details["bytes"], details["total_bytes"])
            continue
        print(_event_line(item), flush=True)


def _logs(args: argparse.Namespace) -> None:
    from berth.client import from_environment

    client = from_environment(timeout=None if args.follow else 330.0)
    if args.follow:
        for item in client.follow_logs(args.name, replica_id=args.replica):
            print(f"{item['timestamp']}  {item['replica_id']}  {item['data']}", flush=True)
        return
    for item in client.logs(args.name, max_lines=args.max_lines, replica_id=args.replica):
        print(f"{item['timestamp']}  {item['replica_id']}  {item['data']}")


def _docker_client(host: str | None) -> Any:
    import docker

    return docker.DockerClient(base_url=host) if host else docker.from_env()


def _build(args: argparse.Namespace) -> None:
    from berth.build import build_image

    image = build_image(_docker_client(args.docker_host), Path(args.path), args.tag, base=args.base)
    print(f"built {args.tag} ({image[:19]})")


def _upload_progress(done: int, total: int) -> None:
    """A folder's upload as a bar on stderr (for archives big enough to wait for)."""
    if total > 1_000_000:
        _progress_bar(done, total)
        if done >= total:
            print(file=sys.stderr)


def _progress_bar(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else 0
    print(
        f"\r[{'#' * filled}{' ' * (width - filled)}] {done / 1e6:7.1f} / {total / 1e6:.1f} MB",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _push(args: argparse.Namespace) -> None:
    from berth.build import push_image

    auth = None
    if args.username:
        password = sys.stdin.read().rstrip("\n") if not sys.stdin.isatty() else ""
        if not password:
            import getpass

            password = getpass.getpass(f"password for {args.username}: ")
        auth = {"username": args.username, "password": password}
    push_image(_docker_client(args.docker_host), args.tag, auth, progress=_progress_bar)
    print(f"\npushed {args.tag}", file=sys.stderr)


def _delete(args: argparse.Namespace) -> None:
    from berth.client import from_environment

    print(from_environment().request("DELETE", f"/v1/endpoint/{args.name}")["message"])


def _process(kind: str) -> None:
    if kind == "up":
        from berth.up import main as run
    elif kind == "api":
        from api.main import main as run
    elif kind == "scaler":
        from scaler.main import main as run
    else:
        from workers.main import main as run
    run()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="berth", description="Self-hostable serverless inference.")
    sub = p.add_subparsers(dest="command", required=True)
    for kind, text in (
        ("up", "run NATS, the API, the scaler and an agent on this machine"),
        ("api", "run the API server"),
        ("scaler", "run the scaler"),
        ("agent", "run a fleet agent for this host"),
    ):
        sub.add_parser(kind, help=text).set_defaults(func=lambda _a, k=kind: _process(k))

    d = sub.add_parser(
        "deploy", help="deploy a folder with a service.py, or a container image, as an endpoint"
    )
    d.add_argument("path", nargs="?")
    d.add_argument("--example", help="one of the catalogue's models (berth examples)")
    d.add_argument("--image", help="a container image URL (any registry) instead of a folder")
    d.add_argument("--port", type=int, default=8080, help="the image's port")
    d.add_argument("--health-check-path", default="/healthcheck")
    d.add_argument("--registry-credential", metavar="KEY", help="for a private registry")
    d.add_argument("--instance-type", help="cpu (default), gpu.<type>, gpu.<type>.<n>x")
    d.add_argument("--name")
    d.add_argument("--min-replicas", type=int, help="default 0")
    d.add_argument("--max-replicas", type=int, help="default 1")
    d.add_argument("--scale-to-zero", type=int, help="seconds idle before scaling down (300)")
    d.add_argument("--concurrency", type=int, help="requests one replica serves at once (1)")
    d.add_argument("--timeout", type=float, help="request timeout in seconds")
    d.add_argument("--public", action="store_true", help="serve inference without a token")
    d.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument(
        "--secret", action="append", default=[], metavar="KEY", help="inject a stored secret"
    )
    d.add_argument(
        "--asset",
        action="append",
        metavar="NAME",
        help="mount an asset read-only at $OCTOAI_VOLUME_PATH/assets/NAME",
    )
    d.set_defaults(func=_deploy)

    ex = sub.add_parser("examples", help="the catalogue of example models")
    ex.add_argument("name", nargs="?", help="one example, with its routes' inputs")
    ex.set_defaults(func=_examples)

    sn = sub.add_parser("snippets", help="ready-to-paste calls of an endpoint")
    sn.add_argument("name")
    sn.add_argument(
        "--lang", choices=["curl", "python", "python_octoai", "typescript"], help="just one"
    )
    sn.set_defaults(func=_snippets)

    e = sub.add_parser("endpoints", help="list endpoints, or show one")
    e.add_argument("name", nargs="?")
    e.set_defaults(func=_endpoints)

    i = sub.add_parser("infer", help="call an endpoint")
    i.add_argument("name")
    i.add_argument("data", nargs="?", help='JSON body, e.g. \'{"prompt": "hi"}\'')
    i.add_argument("--route", default="/infer")
    i.set_defaults(func=_infer)

    v = sub.add_parser("events", help="an endpoint's replica and scaling events, with reasons")
    v.add_argument("name")
    v.add_argument("--max-lines", type=int, default=50)
    v.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    v.set_defaults(func=_events)

    bd = sub.add_parser("build", help="build a container image from a folder with a service.py")
    bd.add_argument("path")
    bd.add_argument("--tag", "-t", required=True)
    bd.add_argument("--base", default="python:3.11-slim", help="the base image (a Python 3.11)")
    bd.add_argument("--docker-host", help="the Docker engine (default: DOCKER_HOST)")
    bd.set_defaults(func=_build)

    pu = sub.add_parser("push", help="push a built image to its registry, with progress")
    pu.add_argument("tag")
    pu.add_argument("--username", help="registry user; the password comes from stdin")
    pu.add_argument("--docker-host", help="the Docker engine (default: DOCKER_HOST)")
    pu.set_defaults(func=_push)

    lg = sub.add_parser("logs", help="an endpoint's replica output")
    lg.add_argument("name")
    lg.add_argument("--replica", help="one replica's only")
    lg.add_argument("--max-lines", type=int, default=100)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.set_defaults(func=_logs)

    x = sub.add_parser("delete", help="delete an endpoint")
    x.add_argument("name")
    x.set_defaults(func=_delete)

    from berth import access, library

    access.add_parsers(sub)
    library.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # `berth … | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except Exception as exc:
        from berth.client import ApiError

        if isinstance(exc, ApiError):
            raise SystemExit(f"berth: {exc}") from None
        raise


if __name__ == "__main__":
    main()
