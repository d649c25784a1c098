"""The console's first load, measured in Debian's Chromium: for docs/performance.md.

    python -m bench.console [--endpoints 20] [--loads 15]

Starts its own nats-server, API, scaler and agent on 127.0.0.1, creates
``--endpoints`` endpoints (at zero replicas: nothing runs), then opens the
endpoints page ``--loads`` times, each in a fresh browser context (an empty cache:
a first load), signed in, and measures:

* time from navigation start to the table showing every endpoint (the first line
  of the live stream drawn: the page's own ``endpoints-shown`` performance mark),
  and to DOMContentLoaded;
* bytes over the wire: the page, its scripts and style (compressed size as sent;
  the live stream's bytes are left out, it never ends).

Prints the median and the worst and writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench import FAST
from berth.local import ROOT, LocalNats, LocalStack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--loads", type=int, default=15)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="berth-bench-console-") as tmp:
        nats = LocalNats(Path(tmp) / "nats")
        nats.start()
        stack = LocalStack(Path(tmp) / "berth", nats.url, env=dict(FAST))
        try:
            stack.start()
            with httpx.Client(
                base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}
            ) as c:
                for i in range(args.endpoints):
                    resp = c.post(
                        "/v1/endpoint",
                        json={"name": f"bench-{i:03d}", "example": "echo", "min_replicas": 0},
                    )
                    resp.raise_for_status()
            shown: list[float] = []
            dom: list[float] = []
            sizes: list[int] = []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                for _ in range(args.loads):
                    context = browser.new_context(base_url=stack.url)
                    context.add_init_script(
                        f"sessionStorage.setItem('berth.token', {json.dumps(stack.token)})"
                    )
                    page = context.new_page()
                    page.goto("/console/")
                    # Functions, not expressions: the page's policy forbids eval.
                    page.wait_for_function(
                        "() => performance.getEntriesByName('endpoints-shown').length > 0"
                    )
                    rows = page.locator("#endpoints tbody tr").count()
                    assert rows >= args.endpoints, rows
                    timing = page.evaluate(
                        """() => {
                          const nav = performance.getEntriesByType('navigation')[0];
                          const res = performance.getEntriesByType('resource')
                            .filter(r => !r.name.includes('/stream'));
                          return {
                            shown: performance.getEntriesByName('endpoints-shown')[0].startTime,
                            dom: nav.domContentLoadedEventEnd,
                            bytes: [nav, ...res].reduce((n, r) => n + r.transferSize, 0),
                          };
                        }"""
                    )
                    shown.append(timing["shown"])
                    dom.append(timing["dom"])
                    sizes.append(timing["bytes"])
                    context.close()
                    time.sleep(0.2)
                browser.close()
        finally:
            stack.close()
            nats.stop()
    result = {
        "endpoints": args.endpoints,
        "loads": args.loads,
        "table_shown_ms": {"median": statistics.median(shown), "max": max(shown)},
        "dom_content_loaded_ms": {"median": statistics.median(dom), "max": max(dom)},
        "bytes": {"median": statistics.median(sizes), "max": max(sizes)},
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "console.json").write_text(json.dumps(result, indent=2))
    print(
        f"endpoints page, {args.endpoints} endpoints, {args.loads} first loads: "
        f"table shown {result['table_shown_ms']['median']:.0f} ms median "
        f"({result['table_shown_ms']['max']:.0f} worst), DOMContentLoaded "
        f"{result['dom_content_loaded_ms']['median']:.0f} ms, "
        f"{result['bytes']['median'] / 1024:.1f} KiB over the wire"
    )


if __name__ == "__main__":
    main()
