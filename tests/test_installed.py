"""The package as ``pip install .`` leaves it: a wheel installed into a fresh virtualenv, run
by its console script from a directory of its own, far from this checkout.

Nothing may be looked for beside the installed code (site-packages): ``config.toml`` and the
default ``uploads`` folder are found in the working directory. The fresh virtualenv gets this
interpreter's packages (aiohttp and the rest, not clustr_aio itself: it is installed here as
an editable finder that only this interpreter's .pth files activate) through a .pth file of
its own, so the test needs no network and no second copy of the dependencies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import JPEG, REPO
from tests.http.helpers import BOUNDARY, Part, multipart_body
from tests.server_process import (
    WAIT_SECONDS,
    NotifySocket,
    RunningServer,
    clean_env,
    free_port,
    spawn_logged,
    wait_until,
)


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_env() | {"PIP_NO_INDEX": "1"},  # everything needed is on this machine
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS * 2,
        check=False,
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the project installed from a wheel, not in editable mode."""
    root = tmp_path_factory.mktemp("installed")
    # A copy of what the build reads, so that building leaves nothing in the checkout.
    source = root / "source"
    shutil.copytree(
        REPO / "clustr_aio", source / "clustr_aio", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy2(REPO / name, source / name)
    pip = (sys.executable, "-m", "pip")
    # Built by this interpreter's setuptools (pinned in requirements-dev.txt): no download.
    run(
        *pip,
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        root / "dist",
        source,
    )
    [wheel] = (root / "dist").glob("clustr_aio-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # pip runs inside the new virtualenv (--python), which cannot see this interpreter's
    # packages yet: the .pth below comes after, or pip would find the editable clustr-aio there
    # and uninstall it from the developer's virtualenv.
    run(*pip, "--python", python, "install", "--quiet", "--no-deps", wheel)
    site_packages = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # Where the code used to look for config.toml (the package's parent directory): a file
    # there that would stop the server, were it read (an unknown key is an error).
    (site_packages / "config.toml").write_text('READ_FROM_SITE_PACKAGES = "wrongly"\n')
    return venv


def installed_site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_the_installed_copy_is_the_one_imported(venv: Path, tmp_path: Path) -> None:
    where = run(
        venv / "bin" / "python", "-c", "import clustr_aio; print(clustr_aio.__file__)", cwd=tmp_path
    )
    assert Path(where.strip()).is_relative_to(installed_site_packages(venv))


def test_the_package_declares_the_pinned_dependencies(venv: Path) -> None:
    [metadata] = installed_site_packages(venv).glob("clustr_aio-*.dist-info/METADATA")
    declared = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.read_text().splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    lines = (REPO / "requirements.txt").read_text().splitlines()
    pinned = [line for line in lines if line and not line.startswith("#")]
    assert declared == pinned


def test_installed_server_uses_its_working_directory(venv: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "service"
    workdir.mkdir()
    (workdir / "config.toml").write_text('UPLOAD_URL_PATH = "/media"\n')
    port = free_port()
    notify = NotifySocket()
    log_path = tmp_path / "server.log"
    env = clean_env() | {"PORT": str(port), "FSYNC": "false", "NOTIFY_SOCKET": notify.address}
    env.pop("PYTHONPATH", None)  # nothing but the virtualenv's own packages
    process = spawn_logged([venv / "bin" / "clustr-aio"], env=env, cwd=workdir, log_path=log_path)
    with RunningServer(
        process, port, workdir / "uploads", log_path, notify, temp_dir=Path(tempfile.gettempdir())
    ) as server:
        wait_until(server.ready_or_exited, "READY=1")
        assert server.process.poll() is None, server.logs
        request = urllib.request.Request(
            f"{server.url}/api/upload",
            data=multipart_body(Part(JPEG, filename="installed.jpg", content_type="image/jpeg")),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
            [item] = json.load(response)["data"]
        assert item["preview_url"] == f"{server.url}/media/installed.jpg"  # ./config.toml
        assert (workdir / "uploads" / "installed.jpg").read_bytes() == JPEG  # ./uploads
        for page in ("/docs", "/redoc", "/docs/static/swagger-initializer.js"):  # package data
            with urllib.request.urlopen(server.url + page, timeout=WAIT_SECONDS) as response:
                assert response.status == 200, page
        assert server.stop() == 0, server.logs
    assert not (installed_site_packages(venv) / "uploads").exists()
