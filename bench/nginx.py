"""nginx from Debian's packages as the reference for what the machine can do: the same bytes
written to disk with ``PUT`` (the ``http_dav_module``, no multipart, no Python) and the same file
served with ``sendfile``.

It runs from a private prefix (its own config, pid file, logs and temp paths), so it needs no
system configuration and leaves none behind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Final

from bench.proc import process_tree, stop_process, wait_for_http

NGINX: Final = "/usr/sbin/nginx"
PUT_PREFIX: Final = "/put/"
STATIC_PREFIX: Final = "/static/"


def render_config(prefix: Path, root: Path, port: int, *, workers: int = 1) -> str:
    """An nginx.conf that accepts ``PUT`` under /put/ into ``root``/put and serves ``root``/static.

    - ``worker_processes 1``: nginx is then one single-threaded process, like the one event loop of
      a clustr_aio worker; the other core runs the load generator.
    - ``client_body_temp_path`` on the same filesystem as the dav root: a PUT body is written once
      to a temporary file and renamed into place, which is exactly what clustr_aio does. nginx
      writes it in ``client_body_buffer_size`` pieces; the default 16k was as fast as 128k and 1m
      in a quick measurement here, so it stays.
    - ``client_max_body_size 0`` lifts the size limit; ``access_log off`` and ``sendfile on`` as
      for clustr_aio; ``keepalive_requests`` high so wrk's connections are never recycled.
    """
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must write where root does
    return f"""\
{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_max_body_size 0;
    client_body_temp_path {root}/.body-temp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location {PUT_PREFIX} {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
        location {STATIC_PREFIX} {{
        }}
    }}
}}
"""


class Nginx:
    """One nginx master (``daemon off``) and its workers, started and stopped by this object."""

    def __init__(self, prefix: Path, root: Path, port: int, *, workers: int = 1) -> None:
        self.prefix = prefix
        self.root = root
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._workers = workers
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def put_dir(self) -> Path:
        return self.root / PUT_PREFIX.strip("/")

    @property
    def static_dir(self) -> Path:
        return self.root / STATIC_PREFIX.strip("/")

    def start(self) -> None:
        for folder in (self.prefix, self.put_dir, self.static_dir, self.root / ".body-temp"):
            folder.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(render_config(self.prefix, self.root, self.port, workers=self._workers))
        self._process = subprocess.Popen(
            # -e: the error log before the config is read (the compiled-in one is /var/log/nginx).
            [
                *(NGINX, "-p", str(self.prefix), "-e", str(self.prefix / "error.log")),
                *("-c", str(conf), "-g", "daemon off;"),
            ],
            stdin=subprocess.DEVNULL,
        )
        wait_for_http(self.base_url + STATIC_PREFIX + "missing", self._process, accept=(404,))

    def processes(self) -> list[int]:
        """The master and its workers."""
        return process_tree(self._process.pid) if self._process is not None else []

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)  # SIGTERM: fast shutdown of master and workers
            self._process = None
