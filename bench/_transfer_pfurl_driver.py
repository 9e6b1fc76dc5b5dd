"""Push or pull one directory with the original ``pfurl`` (run by the original's venv).

``python _transfer_pfurl_driver.py push|pull --http HOST:PORT/api/v1/cmd --key K --path P``

Sends the ``pushPath`` / ``pullPath`` message that pfcon 3 sent to pfioh 2
(zip compression, the ``plugin`` special handling that keeps a job's data
under ``key-<K>/incoming`` and ``outgoing``), timing only the ``pfurl`` call,
not this interpreter's start-up and imports. The last line printed is JSON:
``{"seconds", "ok", "zip_bytes", "client_peak_rss_mib", "error"}``.

This file runs under the original's interpreter and imports nothing of the
fabric.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

import pfurl  # the original client, installed in the original's venv only


def message(action: str, key: str, path: str) -> dict[str, Any]:
    """The ``pushPath`` / ``pullPath`` message of pfcon 3 for job ``key``."""
    local: dict[str, Any] = {"path": path}
    if action == "pullPath":
        local["createDir"] = True
    return {
        "action": action,
        "meta": {
            "remote": {"key": key},
            "local": local,
            "transport": {
                "mechanism": "compress",
                "compress": {"encoding": "none", "archive": "zip", "unpack": True, "cleanup": True},
            },
            "specialHandling": {"op": "plugin", "cleanup": True},
        },
    }


def _zip_bytes(action: str, reply: dict[str, Any]) -> int | None:
    """The zip's size from pfurl's reply (it reports it as ``"1,234"``), if present."""
    try:
        compress = reply["stdout"]["compress"]
        if action == "pushPath":
            text = compress["local"]["zip"]["filesize"]
        else:
            text = compress["localOp"]["stream"]["filesize"]
        return int(str(text).replace(",", ""))
    except (KeyError, TypeError, ValueError):
        return None


def main() -> None:
    """Run one transfer and print its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("verb", choices=["push", "pull"])
    parser.add_argument("--http", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--path", required=True)
    args = parser.parse_args()
    action = "pushPath" if args.verb == "push" else "pullPath"
    client = pfurl.Pfurl(
        msg=json.dumps(message(action, args.key, args.path)),
        http=args.http,
        verb="POST" if args.verb == "push" else "GET",
        b_raw=True,
        b_quiet=True,
        verbosity=0,
    )
    started = time.perf_counter()
    error = ""
    try:
        raw = client()
        reply = json.loads(raw) if isinstance(raw, str) else raw
        ok = bool(reply["stdout"]["status"])
        if not ok:
            error = str(reply["stdout"].get("msg", "failed"))
    except Exception as exc:  # anything the old client raises is a failed transfer
        reply, ok, error = {}, False, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    summary = {
        "seconds": seconds,
        "ok": ok,
        "zip_bytes": _zip_bytes(action, reply) if ok else None,
        # ru_maxrss is in KiB on Linux
        "client_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "error": error,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
