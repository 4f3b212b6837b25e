"""The files the documentation pages load, all served by this app: nothing from a CDN, since
the server also runs on closed networks.

Swagger UI and ReDoc come from the ``drf-spectacular-sidecar`` wheel, which ships the official
``swagger-ui-dist`` and ReDoc ``redoc.standalone.js`` builds and is re-released each month as
they change. Its ``__init__`` imports Django, so the package is located, never imported: we only
read files from its directory.
"""

from __future__ import annotations

import importlib.util
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


def _sidecar_static_dir() -> Path:
    spec = importlib.util.find_spec(SIDECAR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the {SIDECAR_PACKAGE} package (PyPI: drf-spectacular-sidecar) is not installed; "
            "the /docs and /redoc pages need its Swagger UI and ReDoc files: "
            "pip install --no-deps -r requirements-assets.txt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "static" / SIDECAR_PACKAGE


_SIDECAR: Final = _sidecar_static_dir()
_JS: Final = "text/javascript"
_CSS: Final = "text/css"

ASSETS: Final[dict[str, Asset]] = {
    "swagger-ui-bundle.js": Asset(_SIDECAR / "swagger-ui-dist" / "swagger-ui-bundle.js", _JS),
    "swagger-ui.css": Asset(_SIDECAR / "swagger-ui-dist" / "swagger-ui.css", _CSS),
    "favicon-32x32.png": Asset(_SIDECAR / "swagger-ui-dist" / "favicon-32x32.png", "image/png"),
    "redoc.standalone.js": Asset(_SIDECAR / "redoc" / "bundles" / "redoc.standalone.js", _JS),
    "swagger-initializer.js": Asset(PAGES_DIR / "swagger-initializer.js", _JS),
}
"""What ``GET /docs/static/{asset}`` serves, by name. A fixed list: nothing else of either
directory (source maps, licences, Django's app module) is exposed."""
