"""``clustr-aio keys create|list|revoke``: API keys managed on the server's own catalog (the
settings say which: the SQLite file in UPLOAD_FOLDER, or DATABASE_URL), whether or not the
server runs. A revoked key is refused by every running worker from its next request on."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TextIO, TypeVar

from clustr_aio.auth.keys import create_key, parse_duration
from clustr_aio.auth.scopes import SCOPES, parse_scopes
from clustr_aio.catalog.factory import open_catalog
from clustr_aio.domain.errors import ClustrError
from clustr_aio.settings import Settings, parse_size

__all__ = ["keys_command"]

_T = TypeVar("_T")


def _argument(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """argparse says "invalid <function name> value"; say what the parser said instead."""

    def parse_argument(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse_argument


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clustr-aio keys", description="Manage API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key; it is printed once, never again")
    create.add_argument("name")
    create.add_argument(
        "--scopes",
        required=True,
        type=_argument(parse_scopes),
        help=f"comma-separated: {','.join(SCOPES)}",
    )
    create.add_argument("--owner", help="whose files it stores and sees (default: its name)")
    create.add_argument(
        "--expires", type=_argument(parse_duration), help="valid for: 30d, 12h, 90m, 2w"
    )
    create.add_argument(
        "--quota", type=_argument(parse_size), help="bytes its owner may store: 10GiB"
    )
    commands.add_parser("list", help="every key (never the key itself)")
    revoke = commands.add_parser("revoke", help="delete a key: refused at once everywhere")
    revoke.add_argument("name")
    return parser


def keys_command(argv: Sequence[str], settings: Settings, out: TextIO = sys.stdout) -> int:
    """Run ``keys <argv>``; the exit status (2 for a usage error, as argparse's)."""
    arguments = _parser().parse_args(list(argv))
    try:
        return asyncio.run(_run(arguments, settings, out))
    except ClustrError as error:
        print(f"clustr-aio: error: {error.detail}", file=sys.stderr)
        return 1


async def _run(arguments: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    async with open_catalog(settings) as catalog:
        if arguments.command == "create":
            key, record = await create_key(
                catalog,
                arguments.name,
                arguments.scopes,
                owner=arguments.owner,
                expires_in=arguments.expires,
                quota=arguments.quota,
            )
            print(key, file=out)
            print(
                f"# API key {record.name!r} (owner {record.owner!r}, scopes "
                f"{','.join(sorted(record.scopes))}): shown once, store it now",
                file=sys.stderr,
            )
            return 0
        if arguments.command == "list":
            rows = [("NAME", "OWNER", "SCOPES", "CREATED", "LAST USED", "EXPIRES", "QUOTA")]
            for k in await catalog.keys():
                rows.append(
                    (
                        k.name,
                        k.owner,
                        ",".join(s for s in SCOPES if s in k.scopes),
                        _when(k.created_at),
                        _when(k.last_used_at),
                        _when(k.expires_at),
                        "-" if k.quota is None else str(k.quota),
                    )
                )
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for row in rows:
                print(
                    "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
                    file=out,
                )
            return 0
        if not await catalog.revoke_key(arguments.name):
            print(f"clustr-aio: error: no API key is named {arguments.name!r}", file=sys.stderr)
            return 1
        print(f"revoked {arguments.name!r}", file=out)
        return 0


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")
