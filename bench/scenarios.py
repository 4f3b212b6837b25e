"""The scenarios: each pits clustr_aio (side A) against a reference (side B) on the same bytes."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench import catalog, images
from bench.attic import Attic
from bench.clients import BenchError, WrkResult, post_files, put_file, wrk
from bench.clustr import ClustrServer
from bench.data import DataSet
from bench.nginx import PUT_PREFIX, STATIC_PREFIX, Nginx
from bench.tus_client import upload_many, upload_one
from bench.tus_reference import TusReference

FILE_WORK: Final = "no sha256, no image checks"
"""What bench/filework.py switches off, for the scenarios' titles."""

STATIC_NAME = "static.jpg"
"""The stored file scenario S fetches; kept when uploads are cleared between measurements."""


@dataclass(frozen=True, slots=True)
class Measurement:
    value: float
    bad_responses: int = 0
    requests: int = 1
    """Requests the measurement made, to share out the CPU time it cost."""


@dataclass(frozen=True, slots=True)
class Side:
    label: str
    measure: Callable[[str], Measurement]
    """Takes a tag unique to this measurement (for fresh names) and returns its number."""
    clear: Callable[[], None]
    """Removes what the measurement stored, so disk usage and directory sizes stay flat."""
    processes: Callable[[], list[int]]
    """The server's processes, whose CPU time the measurement is charged."""
    servers: tuple[ClustrServer, ...] = ()
    """The clustr_aio servers whose peak RSS this side's measurement counts toward."""


@dataclass(frozen=True, slots=True)
class Target:
    ratio: float
    higher_is_better: bool

    def met_by(self, ratio: float) -> bool:
        return ratio >= self.ratio if self.higher_is_better else ratio <= self.ratio

    def __str__(self) -> str:
        return f"{'≥' if self.higher_is_better else '≤'} {self.ratio:g}"

    def ascii(self) -> str:
        """For the chart: Pillow's built-in font has no ≤ or ≥."""
        return f"{'>=' if self.higher_is_better else '<='} {self.ratio:g}"


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    unit: str
    target: Target
    a: Side
    b: Side
    notes: tuple[str, ...] = field(default=())
    cpu_target: Target | None = None
    """For the server CPU per request, A / B (lower is better), where the issue sets one."""
    file_work_of: str | None = None
    """This scenario is ``file_work_of``'s with the per-file work switched off
    (bench/filework.py): the difference of their side A's CPU is that work's own."""
    rss_sum_limit_mib: float | None = None
    """The bound on side A's processes' summed peak RSS, where the issue sets one."""


@dataclass(frozen=True, slots=True)
class Setup:
    data: DataSet
    nginx: Nginx
    plain: ClustrServer
    """FSYNC=false, one worker: the server of L, B, C, S."""
    bare: ClustrServer
    """As plain, with the per-file work nginx does not do switched off: L0, B0, C0."""
    synced: ClustrServer
    """FSYNC=true: side A of D."""
    multi: ClustrServer | None
    """FSYNC=false, WORKERS=2, when the checkout has WORKERS."""
    photos: tuple[Path, ...]
    """12-megapixel JPEGs with EXIF and GPS, for T, T2 and M (bench/images.py)."""
    thumbnails: ClustrServer
    """FSYNC=false, WORKERS=2, its own folder (nothing else clears it): side A of T and T2."""
    gallery: ClustrServer
    """FSYNC=false, one worker: side A of H. Rendering its thumbnail loads libvips, whose
    memory ``plain`` would otherwise carry into every later round of L, B, C and S."""
    stripped: ClustrServer
    """FSYNC=false, STRIP_METADATA=location (the default, said): side A of M."""
    unstripped: ClustrServer
    """FSYNC=false, STRIP_METADATA=none: side B of M."""
    wrk_seconds: int
    wrk_connections: int
    attic: Attic
    """Where measurements' files go instead of being deleted (see bench/attic.py)."""
    keyed: ClustrServer
    """FSYNC=false, one worker, AUTH=keys and both rate limits on (never reached): side A of
    scenario A."""
    key: str
    """An upload key of ``keyed``."""
    uncatalogued: ClustrServer | None = None
    """``plain`` with the catalog patched out (bench/no_catalog.py): side B of BC."""
    tus_reference: TusReference | None = None
    """@tus/server with @tus/file-store, when Node and its packages are there."""


def _seconds(fn: Callable[[], float]) -> Callable[[str], Measurement]:
    return lambda _tag: Measurement(fn())


def _rate(result: WrkResult) -> Measurement:
    if result.socket_errors:
        raise BenchError(f"wrk saw {result.socket_errors} socket errors")
    return Measurement(result.requests_per_second, result.bad_responses, result.requests)


def _clear_nginx_puts(setup: Setup) -> Callable[[], None]:
    return lambda: setup.attic.stash(setup.nginx.put_dir)


def _upload_side(setup: Setup, server: ClustrServer, files: tuple[Path, ...]) -> Side:
    return Side(
        f"clustr_aio {server.label}",
        _seconds(lambda: post_files(server.base_url + "/api/upload", files)),
        _clear_uploads(setup, server),
        server.processes,
        (server,),
    )


def _clear_uploads(setup: Setup, server: ClustrServer) -> Callable[[], None]:
    # .incoming is the server's own (and hidden, as a dot-folder); static.jpg serves S.
    return lambda: setup.attic.stash(server.upload_folder, keep=frozenset({STATIC_NAME}))


def _put_side(setup: Setup, file: Path) -> Side:
    nginx = setup.nginx
    return Side(
        "nginx PUT",
        lambda tag: Measurement(put_file(f"{nginx.base_url}{PUT_PREFIX}{tag}.bin", file)),
        _clear_nginx_puts(setup),
        nginx.processes,
    )


# Server CPU, A / B: the ingest path at nginx's cost (per byte for L and B, per request for C).
CPU_TARGETS: Final = {"L": 1.2, "B": 1.3, "C": 1.5}


def _cpu_target(key: str) -> Target | None:
    ratio = CPU_TARGETS.get(key.rstrip("0"))
    return None if ratio is None else Target(ratio, higher_is_better=False)


def build(setup: Setup) -> list[Scenario]:
    data, nginx, plain = setup.data, setup.nginx, setup.plain
    secs, conns = setup.wrk_seconds, setup.wrk_connections

    def big_and_batch(server: ClustrServer, suffix: str) -> list[Scenario]:
        bare = f", per-file work off ({FILE_WORK})" if suffix else ""
        return [
            Scenario(
                "L" + suffix,
                f"one 1 GiB file, one multipart request (curl -F) vs nginx PUT{bare}",
                "s",
                Target(1.2, higher_is_better=False),
                _upload_side(setup, server, (data.big,)),
                _put_side(setup, data.big),
                cpu_target=_cpu_target("L"),
                file_work_of="L" if suffix else None,
            ),
            Scenario(
                "B" + suffix,
                f"{len(data.jpegs)} JPEGs, one multipart request vs nginx PUT of one file as"
                f" large{bare}",
                "s",
                Target(1.5, higher_is_better=False),
                _upload_side(setup, server, data.jpegs),
                _put_side(setup, data.batch_concat),
                cpu_target=_cpu_target("B"),
                file_work_of="B" if suffix else None,
            ),
        ]

    def upload_rate(server: ClustrServer, key: str, workers: str, bare: str) -> Scenario:
        return Scenario(
            key,
            f"wrk -c{conns} {secs}s, multipart POST of one 500 KB JPEG ({workers})"
            f" vs nginx PUT to fresh names{bare}",
            "req/s",
            Target(0.7, higher_is_better=True),
            Side(
                f"clustr_aio {server.label}",
                _bound_upload_rate(server, data.single, conns, secs),
                _clear_uploads(setup, server),
                server.processes,
                (server,),
            ),
            Side(
                "nginx PUT",
                lambda tag: _rate(
                    wrk(
                        nginx.base_url + PUT_PREFIX,
                        connections=conns,
                        seconds=secs,
                        script="put.lua",
                        args=(str(data.single), tag),
                    )
                ),
                _clear_nginx_puts(setup),
                nginx.processes,
            ),
            cpu_target=_cpu_target(key),
            file_work_of="C" if bare else None,
        )

    scenarios = big_and_batch(plain, "")
    if setup.uncatalogued is not None:
        scenarios.append(
            Scenario(
                "BC",
                "the catalog's cost: B vs B on the same server with the catalog disabled"
                " (no sha256, no database)",
                "s",
                Target(1.1, higher_is_better=False),
                _upload_side(setup, plain, data.jpegs),
                _upload_side(setup, setup.uncatalogued, data.jpegs),
            )
        )
    # D right after B: the same work, with the same history (C's gigabytes of freed page cache
    # made the side that came first after them measurably slower: D 1.58 there, 1.17 alone).
    scenarios.append(
        Scenario(
            "D",
            "durability: B with FSYNC=true vs B with FSYNC=false",
            "s",
            Target(1.5, higher_is_better=False),
            _upload_side(setup, setup.synced, data.jpegs),
            _upload_side(setup, plain, data.jpegs),
        )
    )
    scenarios += big_and_batch(setup.bare, "0")
    for server in (plain, setup.multi):
        if server is None:
            continue
        suffix = "" if server is plain else "2"
        workers = "1 worker" if server is plain else "2 workers"
        scenarios.append(upload_rate(server, "C" + suffix, workers, ""))
        if server is plain:
            scenarios.append(
                upload_rate(setup.bare, "C0", workers, f", per-file work off ({FILE_WORK})")
            )
        scenarios.append(
            Scenario(
                "S" + suffix,
                f"wrk -c{conns} {secs}s, GET of one stored 500 KB JPEG ({workers}) vs nginx static",
                "req/s",
                Target(0.6, higher_is_better=True),
                Side(
                    f"clustr_aio {server.label}",
                    _bound_get_rate(f"{server.base_url}/uploads/{STATIC_NAME}", conns, secs),
                    lambda: None,
                    server.processes,
                    (server,),
                ),
                Side(
                    "nginx static",
                    _bound_get_rate(f"{nginx.base_url}{STATIC_PREFIX}{STATIC_NAME}", conns, secs),
                    lambda: None,
                    nginx.processes,
                ),
            )
        )
    scenarios.append(
        Scenario(
            "A",
            f"access control: C with AUTH=keys and rate limits on (not reached) vs C with"
            f" AUTH=off (wrk -c{conns} {secs}s, 1 worker)",
            "req/s",
            Target(round(1 / 1.10, 2), higher_is_better=True),  # C costs at most 1.10x
            Side(
                f"clustr_aio {setup.keyed.label} AUTH=keys",
                _bound_upload_rate(setup.keyed, data.single, conns, secs, key=setup.key),
                _clear_uploads(setup, setup.keyed),
                setup.keyed.processes,
                (setup.keyed,),
            ),
            Side(
                f"clustr_aio {plain.label} AUTH=off",
                _bound_upload_rate(plain, data.single, conns, secs),
                _clear_uploads(setup, plain),
                plain.processes,
                (plain,),
            ),
        )
    )
    scenarios += _tus_scenarios(setup)
    scenarios += _catalog_scenarios()
    scenarios += _image_scenarios(setup)
    return scenarios


TUS_CHUNK = 64 * 1024 * 1024
TUS_PARALLEL = 8


def _tus_scenarios(setup: Setup) -> list[Scenario]:
    """TL, TL2, TB, TB1: resumable uploads (bench/tus_client.py, the same client for every
    side)."""
    data, plain, reference = setup.data, setup.plain, setup.tus_reference
    endpoint = plain.base_url + "/api/tus/"
    large = Side(
        f"clustr_aio tus {plain.label}",
        _seconds(lambda: upload_one(endpoint, data.big, chunk=TUS_CHUNK)),
        _clear_uploads(setup, plain),
        plain.processes,
        (plain,),
    )

    scenarios = [
        Scenario(
            "TL2",
            "one 1 GiB file by tus in 64 MiB PATCHes vs nginx PUT",
            "s",
            Target(1.5, higher_is_better=False),
            large,
            _put_side(setup, data.big),
        )
    ]
    if reference is None:
        return scenarios
    clear_reference = lambda: setup.attic.stash(reference.directory)  # noqa: E731
    photos = _photos_by_tus(setup, plain, reference)
    return [
        Scenario(
            "TL",
            "one 1 GiB file by tus in 64 MiB PATCHes vs @tus/server + @tus/file-store",
            "s",
            Target(1.0, higher_is_better=False),
            large,
            Side(
                "@tus/server",
                _seconds(lambda: upload_one(reference.endpoint, data.big, chunk=TUS_CHUNK)),
                clear_reference,
                reference.processes,
            ),
        ),
        *scenarios,
        photos("TB", f"{len(data.jpegs)} JPEGs by tus, {TUS_PARALLEL} at a time vs @tus/server"),
        photos(
            "TB1",
            "TB with creation-with-upload: each JPEG one POST that carries it, both sides",
            with_upload=True,
        ),
    ]


def _photos_by_tus(
    setup: Setup, server: ClustrServer, reference: TusReference
) -> Callable[..., Scenario]:
    """TB and TB1: the photos by tus, the same client toward both servers. The server CPU is
    the whole run's, as TL's (a timed scenario's unit is the run: per request, the report
    printed 3 ms as "0.00 s")."""
    jpegs = setup.data.jpegs

    def send(endpoint: str, with_upload: bool) -> Callable[[str], Measurement]:
        return lambda tag: Measurement(
            upload_many(endpoint, jpegs, parallel=TUS_PARALLEL, tag=tag, with_upload=with_upload)
        )

    def scenario(key: str, title: str, *, with_upload: bool = False) -> Scenario:
        ours = send(server.base_url + "/api/tus/", with_upload)
        theirs = send(reference.endpoint, with_upload)
        return Scenario(
            key,
            title,
            "s",
            Target(1.0, higher_is_better=False),
            Side(
                f"clustr_aio tus {server.label}",
                ours,
                _clear_uploads(setup, server),
                server.processes,
                (server,),
            ),
            Side(
                "@tus/server",
                theirs,
                lambda: setup.attic.stash(reference.directory),
                reference.processes,
            ),
        )

    return scenario


T_RSS_LIMIT_MIB: Final = 256.0
"""Issue 12: peak RSS with 2 workers busy rendering, the supervisor's and workers' summed."""


def _image_scenarios(setup: Setup) -> list[Scenario]:
    photos, server = setup.photos, setup.thumbnails
    run = images.ThumbnailRun(server, photos)
    rendered = Side(
        f"clustr_aio {server.label}",
        lambda tag: Measurement(run.measure(tag), requests=len(photos)),
        run.clear,
        server.processes,
        (server,),
    )
    out = setup.attic.folder.parent / "reference-thumbnails"

    def reference(kind: str, label: str) -> Side:
        measure = images.reference_cpu_ms(kind, photos, out)
        return Side(label, lambda tag: Measurement(measure(tag)), lambda: None, lambda: [])

    what = f"256-px WebP of {len(photos)} 12-MP JPEGs, CPU ms per image"
    gallery, nginx = setup.gallery, setup.nginx
    hot: dict[str, str] = {}

    def render_hot() -> None:
        # Rendered once on the 1-worker server, then the same file copied for nginx.
        if not hot:
            hot["path"] = images.thumbnail_url_path(gallery, STATIC_NAME)
            shutil.copyfile(images.cached_thumbnail(gallery), nginx.static_dir / "thumb.webp")

    def hot_path() -> str:
        render_hot()
        return hot["path"]

    conns, secs = setup.wrk_connections, setup.wrk_seconds
    return [
        Scenario(
            "T",
            f"{what}: the server (WORKERS=2) vs pyvips.Image.thumbnail in one process",
            "ms",
            Target(1.2, higher_is_better=False),
            rendered,
            reference("pyvips", "pyvips (no vipsthumbnail CLI in pyvips-binary)"),
            notes=("CPU ms per image on both sides; the server's includes HTTP and caching.",),
            rss_sum_limit_mib=T_RSS_LIMIT_MIB,
        ),
        Scenario(
            "T2",
            f"{what}: the server (WORKERS=2) vs Pillow draft + thumbnail + save",
            "ms",
            Target(1 / 3, higher_is_better=False),
            rendered,
            reference("pillow", "Pillow"),
            rss_sum_limit_mib=T_RSS_LIMIT_MIB,
        ),
        Scenario(
            "M",
            f"{len(photos)} 12-MP JPEGs with EXIF and GPS, one multipart request:"
            " STRIP_METADATA=location vs none",
            "s",
            Target(1.1, higher_is_better=False),
            _upload_side(setup, setup.stripped, photos),
            _upload_side(setup, setup.unstripped, photos),
        ),
        Scenario(
            "H",
            f"wrk -c{conns} {secs}s, GET of one cached 256-px WebP thumbnail (1 worker)"
            " vs nginx static of the same file",
            "req/s",
            Target(0.6, higher_is_better=True),
            Side(
                f"clustr_aio {gallery.label}",
                lambda tag: _rate(
                    wrk(gallery.base_url + hot_path(), connections=conns, seconds=secs)
                ),
                render_hot,
                gallery.processes,
                (gallery,),
            ),
            Side(
                "nginx static",
                _bound_get_rate(f"{nginx.base_url}{STATIC_PREFIX}thumb.webp", conns, secs),
                render_hot,  # before nginx's first measurement too: the file must be there
                nginx.processes,
            ),
        ),
    ]


PAGE_BUDGET_MS = 20.0
CHECK_BUDGET_MS = 100.0


def _budget(label: str, value: float) -> Side:
    """A fixed number to hold side A to (the issue's target), in place of a reference server."""
    return Side(label, lambda _tag: Measurement(value), lambda: None, lambda: [])


def _catalog_scenarios() -> list[Scenario]:
    """K, K2: the catalog's queries, timed server side in this process (bench/catalog.py), on
    a SQLite catalog of BENCH_CATALOG_RECORDS (1,000,000) records, made once under
    bench/data and kept; KP, K2P the same on the PostgreSQL database BENCH_DATABASE_URL
    names, when it is set."""
    backends = [("", "sqlite", str(catalog.sqlite_path()))]
    if url := os.environ.get("BENCH_DATABASE_URL"):
        backends.append(("P", "postgresql", url))
    scenarios = []
    for suffix, backend, where in backends:
        records = (
            f"{catalog.RECORDS:,} records ({'SQLite' if backend == 'sqlite' else 'PostgreSQL'})"
        )
        scenarios += [
            _catalog_scenario(
                "K" + suffix,
                f"a page of 100 from {records}, p99 server side vs the 20 ms budget",
                PAGE_BUDGET_MS,
                lambda figures: Measurement(figures.page_p99_ms, requests=catalog.PAGES),
                backend,
                where,
            ),
            _catalog_scenario(
                "K2" + suffix,
                f"check of {catalog.CHECK_HASHES:,} sha256 among {records}, median server side"
                " vs the 100 ms budget",
                CHECK_BUDGET_MS,
                lambda figures: Measurement(figures.check_p50_ms, requests=catalog.CHECK_ROUNDS),
                backend,
                where,
            ),
        ]
    return scenarios


def _catalog_scenario(
    key: str,
    title: str,
    budget_ms: float,
    pick: Callable[[catalog.CatalogFigures], Measurement],
    backend: str,
    where: str,
) -> Scenario:
    def measure(_tag: str) -> Measurement:
        return pick(asyncio.run(catalog.figures(backend, where)))

    this_process = [os.getpid()]
    side = Side("clustr_aio catalog", measure, lambda: None, lambda: this_process)
    return Scenario(
        key, title, "ms", Target(1.0, higher_is_better=False), side, _budget("budget", budget_ms)
    )


def _bound_upload_rate(
    server: ClustrServer, file: Path, conns: int, secs: int, *, key: str | None = None
) -> Callable[[str], Measurement]:
    return lambda _tag: _rate(
        wrk(
            server.base_url + "/api/upload",
            connections=conns,
            seconds=secs,
            script="upload.lua",
            args=(str(file), "c.jpg", *([key] if key else [])),
        )
    )


def _bound_get_rate(url: str, conns: int, secs: int) -> Callable[[str], Measurement]:
    return lambda _tag: _rate(wrk(url, connections=conns, seconds=secs))
