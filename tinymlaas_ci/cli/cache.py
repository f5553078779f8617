"""``tinymlaas cache list|prune``: the shared stage cache of a work dir, and keeping it small."""

from __future__ import annotations

import json
import re
import time

from tinymlaas_ci.cli.common import work_dir
from tinymlaas_ci.errors import UsageError

__all__ = ["parse_age", "parse_size", "register"]

_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """``500MB``, ``2G``, ``1024`` (bytes; K/M/G are powers of 1024) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"--max-size {text!r}: not a size", hint="write it like 500MB, 2GB or 1048576 (bytes)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``2w``, ``90m``, ``3600s`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not m:
        raise UsageError(f"--older-than {text!r}: not an age", hint="write it like 30d, 12h, 2w, 90m or 3600s")
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


def register(sub) -> None:
    """Add the ``cache`` command group."""
    cache = sub.add_parser(
        "cache",
        help="list or prune the shared stage cache",
        description="The shared stage cache (<work dir>/.cache) keeps every stage's outputs by cache key, so "
        "that runs with the same inputs reuse them. It grows with every new key; 'prune' keeps it small.",
    )
    csub = cache.add_subparsers(dest="cache_command", metavar="COMMAND")
    lst = csub.add_parser("list", help="list the entries, least recently used first", description="List the entries.")
    _common(lst)
    lst.add_argument("--format", choices=["text", "json"], default="text")
    lst.set_defaults(func=cmd_list)
    prune = csub.add_parser(
        "prune",
        help="remove entries unused for a while, or the least recently used beyond a size",
        description="Remove the entries no run has used for --older-than, then the least recently used ones "
        "until the cache fits in --max-size. An entry a running stage holds is kept. A removed entry changes "
        "no result: the next run that needs it runs the stage again.",
    )
    _common(prune)
    prune.add_argument("--older-than", metavar="AGE", default=None, help="e.g. 30d, 12h, 2w (unused for longer)")
    prune.add_argument("--max-size", metavar="SIZE", default=None, help="e.g. 5GB, 500MB (K/M/G: powers of 1024)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    prune.set_defaults(func=cmd_prune)
    cache.set_defaults(func=lambda args: cache.print_help() or 2)


def _common(p) -> None:
    p.add_argument("--work-dir", default=None, metavar="DIR", help="the work dir (default: .tinymlaas/work)")


def _cache(args):
    from tinymlaas_ci.engine.cache import CACHE_DIR, StageCache

    return StageCache(work_dir(args) / CACHE_DIR)


def _row(entry, now: float) -> str:
    days = (now - entry.last_used) / 86400
    return f"{entry.key[:12]}  {entry.stage:<10} {_human(entry.bytes):>9}  {days:6.1f} d ago  {entry.run}"


def _human(n: float) -> str:
    from tinymlaas_ci.website.formatting import size

    return size(n)


def cmd_list(args) -> int:
    cache = _cache(args)
    entries = cache.entries()
    now = time.time()
    if args.format == "json":
        rows = [
            {"key": e.key, "stage": e.stage, "run": e.run, "bytes": e.bytes, "created_at": e.created_at,
             "last_used": e.last_used}
            for e in entries
        ]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    if not entries:
        print(f"the stage cache at {cache.root} is empty")
        return 0
    for e in entries:
        print(_row(e, now))
    print(f"{len(entries)} entries, {_human(sum(e.bytes for e in entries))} in {cache.root}")
    return 0


def cmd_prune(args) -> int:
    if args.older_than is None and args.max_size is None:
        raise UsageError("say what to prune", hint="give --older-than AGE, --max-size SIZE, or both")
    older = parse_age(args.older_than) if args.older_than is not None else None
    limit = parse_size(args.max_size) if args.max_size is not None else None
    cache = _cache(args)
    now = time.time()
    removed, kept = cache.prune(older_than_s=older, max_bytes=limit, now=now, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        print(f"{verb} {_row(e, now)}")
    print(
        f"{verb} {len(removed)} entries ({_human(sum(e.bytes for e in removed))}); "
        f"{len(kept)} entries ({_human(sum(e.bytes for e in kept))}) {'would stay' if args.dry_run else 'stay'} "
        f"in {cache.root}"
    )
    return 0
