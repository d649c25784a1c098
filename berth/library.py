"""``berth assets`` and ``berth tunes``: the asset library and fine-tuning from the shell."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]

ASSET_TYPES = ["file", "checkpoint", "lora", "textual_inversion", "vae", "latent", "volume"]


def _client() -> Any:
    from berth.client import from_environment

    return from_environment()


def _assets_upload(args: argparse.Namespace) -> None:
    from berth.cli import _upload_progress

    path = Path(args.path)
    if not path.is_file():
        raise SystemExit(f"berth: {path} is not a file")
    data = json.loads(args.data) if args.data else {}
    asset = _client().upload_asset(
        path,
        args.name or path.name.replace(" ", "-"),
        asset_type=args.type,
        data=data,
        description=args.description,
        is_public=args.public or None,
        progress=_upload_progress,
    )
    print(f"asset {asset.name} {asset.status} ({asset.id}, {asset.size_bytes} bytes)")


def _assets_import(args: argparse.Namespace) -> None:
    asset = _client().import_asset(
        args.url,
        args.name,
        asset_type=args.type,
        data=json.loads(args.data) if args.data else {},
        description=args.description,
        is_public=args.public or None,
    )
    print(f"asset {asset.name} {asset.status} ({asset.id}, {asset.size_bytes} bytes)")


def _assets_list(args: argparse.Namespace) -> None:
    filters = {k: v for k, v in (("name", args.name), ("asset_type", args.type)) if v}
    print(f"{'ID':<30} {'NAME':<28} {'TYPE':<10} {'STATUS':<16} {'BYTES':>12}")
    for a in _client().list_assets(**filters):
        print(f"{a.id:<30} {a.name:<28} {a.asset_type:<10} {a.status:<16} {a.size_bytes:>12}")


def _assets_get(args: argparse.Namespace) -> None:
    print(json.dumps(_client().get_asset(args.key).model_dump(mode="json"), indent=2))


def _assets_delete(args: argparse.Namespace) -> None:
    _client().delete_asset(args.id)
    print(f"asset {args.id} deleted")


def _tunes_create(args: argparse.Namespace) -> None:
    client = _client()
    files = [client.get_asset(key).id for key in args.file]
    tune = client.create_tune(
        args.name,
        files,
        steps=args.steps,
        engine=args.engine,
        trigger_words=args.trigger_word or [],
        seed=args.seed,
    )
    print(f"tune {tune.name} {tune.status} ({tune.id}; events: berth events {tune.endpoint})")
    if args.wait:
        tune = client.wait_for_tune(tune.id)
        print(f"tune {tune.name} {tune.status} {tune.status_details}".rstrip())
        for asset_id in tune.output_lora_ids:
            print(f"  output: {client.get_asset(asset_id).name} ({asset_id})")
        if tune.status != "succeeded":
            raise SystemExit(1)


def _tunes_list(args: argparse.Namespace) -> None:
    print(f"{'ID':<30} {'NAME':<28} {'STATUS':<10} OUTPUT")
    for t in _client().list_tunes():
        print(f"{t.id:<30} {t.name:<28} {t.status:<10} {', '.join(t.output_lora_ids)}")


def _tunes_get(args: argparse.Namespace) -> None:
    print(json.dumps(_client().get_tune(args.id).model_dump(mode="json"), indent=2))


def _tunes_cancel(args: argparse.Namespace) -> None:
    tune = _client().cancel_tune(args.id)
    print(f"tune {tune.name} {tune.status}")


def _tunes_delete(args: argparse.Namespace) -> None:
    _client().delete_tune(args.id)
    print(f"tune {args.id} deleted")


def add_parsers(sub: Any) -> None:
    a = sub.add_parser("assets", help="the asset library: upload, import, list, get, delete")
    av = a.add_subparsers(dest="verb", required=True)
    up = av.add_parser("upload", help="upload a file as an asset (streamed, checked by sha256)")
    up.add_argument("path")
    up.add_argument("--name", help="default: the file's name")
    up.set_defaults(func=_assets_upload)
    im = av.add_parser("import", help="an asset the server fetches from a URL (http or https)")
    im.add_argument("url")
    im.add_argument("name")
    im.set_defaults(func=_assets_import)
    for parser in (up, im):
        parser.add_argument("--type", default="file", choices=ASSET_TYPES)
        parser.add_argument("--data", help='OctoAI\'s data, JSON: \'{"file_format": "jsonl"}\'')
        parser.add_argument("--description")
        parser.add_argument("--public", action="store_true", help="readable without a token")
    ls = av.add_parser("list")
    ls.add_argument("--name", help="names containing this")
    ls.add_argument("--type")
    ls.set_defaults(func=_assets_list)
    g = av.add_parser("get", help="one asset, by id, name or owner/name")
    g.add_argument("key")
    g.set_defaults(func=_assets_get)
    d = av.add_parser("delete")
    d.add_argument("id")
    d.set_defaults(func=_assets_delete)

    t = sub.add_parser("tunes", help="fine-tuning: create, list, get, cancel, delete")
    tv = t.add_subparsers(dest="verb", required=True)
    c = tv.add_parser("create", help="start a LoRA tune on file assets")
    c.add_argument("name")
    c.add_argument("--file", action="append", required=True, metavar="ASSET", help="id or name")
    c.add_argument("--steps", type=int, default=300)
    c.add_argument("--engine", default="text/all-minilm-l6-v2")
    c.add_argument("--trigger-word", action="append")
    c.add_argument("--seed", type=int)
    c.add_argument("--wait", action="store_true", help="until it ends; then its output")
    c.set_defaults(func=_tunes_create)
    tv.add_parser("list").set_defaults(func=_tunes_list)
    for verb, func in (("get", _tunes_get), ("cancel", _tunes_cancel), ("delete", _tunes_delete)):
        p = tv.add_parser(verb)
        p.add_argument("id")
        p.set_defaults(func=func)
