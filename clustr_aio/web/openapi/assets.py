"""The files the documentation pages load, all served by this app: nothing from a CDN, since
the server also runs on closed networks.

Swagger UI and ReDoc come from the ``drf-spectacular-sidecar`` wheel, which ships the official
``swagger-ui-dist`` and ReDoc ``redoc.standalone.js`` builds and is re-released each month as
they change. Its ``__init__`` imports Django, so the package is located, never imported: we only
read files from its directory.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SIDECAR_PACKAGE: Final = "drf_spectacular_sidecar"
PAGES_DIR: Final = Path(__file__).resolve().parent / "pages"


@dataclass(frozen=True, slots=True)
class Asset:
    path: Path
    media_type: str

    @property
    def content_type(self) -> str:
        """The Content-Type header: text is UTF-8, whatever the browser would guess."""
        return (
            f"{self.media_type}; charset=utf-8"
            if self.media_type.startswith("text/")
            else self.media_type
        )


class AssetsNotInstalled(RuntimeError):
    """The Swagger UI and ReDoc files are missing; ``str(e)`` is the one line to print."""


_JS: Final = "text/javascript"
_CSS: Final = "text/css"

# name: (where, path below it, media type); "sidecar" is the package's static directory.
_FILES: Final = {
    "swagger-ui-bundle.js": ("sidecar", "swagger-ui-dist/swagger-ui-bundle.js", _JS),
    "swagger-ui.css": ("sidecar", "swagger-ui-dist/swagger-ui.css", _CSS),
    "favicon-32x32.png": ("sidecar", "swagger-ui-dist/favicon-32x32.png", "image/png"),
    "redoc.standalone.js": ("sidecar", "redoc/bundles/redoc.standalone.js", _JS),
    "swagger-initializer.js": ("pages", "swagger-initializer.js", _JS),
}

MEDIA_TYPES: Final[Mapping[str, str]] = {name: kind for name, (_, _, kind) in _FILES.items()}
"""What ``GET /docs/static/{asset}`` serves: each asset's media type, by name. A fixed list:
nothing else of either directory (source maps, licences, Django's app module) is exposed."""


def _sidecar_static_dir() -> Path:
    spec = importlib.util.find_spec(SIDECAR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetsNotInstalled(
            f"the {SIDECAR_PACKAGE} package (PyPI: drf-spectacular-sidecar) is not installed; "
            "the /docs and /redoc pages need its Swagger UI and ReDoc files: "
            "pip install --no-deps -r requirements-assets.txt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "static" / SIDECAR_PACKAGE


@functools.cache
def docs_assets() -> Mapping[str, Asset]:
    """The assets of :data:`MEDIA_TYPES` with their files; looked up on first use, not at
    import, so that a missing package is a start-up error (see ``runtime.server.prepare``)
    rather than a traceback from an import.

    Raises:
        AssetsNotInstalled: the drf-spectacular-sidecar package is not installed.
    """
    directories = {"sidecar": _sidecar_static_dir(), "pages": PAGES_DIR}
    return {
        name: Asset(directories[where] / path, media_type)
        for name, (where, path, media_type) in _FILES.items()
    }
