"""Every typed application and request key, in one place."""

from __future__ import annotations

from aiohttp import web

from clustr_aio.auth.keys import Principal
from clustr_aio.catalog.base import Catalog
from clustr_aio.images.thumbnails import Thumbnailer
from clustr_aio.ingest.pipeline import IngestPolicy
from clustr_aio.observability.metrics import Metrics
from clustr_aio.settings import Settings
from clustr_aio.storage.base import Reading, SpaceReporting, Storage
from clustr_aio.tus.handler import TusHandler
from clustr_aio.web.guard import Guard, RateState
from clustr_aio.web.protection import UploadSlots
from clustr_aio.web.quick import QuickResponder

SETTINGS = web.AppKey("settings", Settings)
STORAGE = web.AppKey("storage", Storage)
FILE_READER = web.AppKey("file_reader", Reading)
"""The storage, when it has the reading capability (``GET /uploads/{filename}``); else unset."""
SPACE_REPORTER = web.AppKey("space_reporter", SpaceReporting)
"""The storage, when it can tell its free space (checked before an upload's body); else unset."""
CATALOG = web.AppKey("catalog", Catalog)
INGEST_POLICY = web.AppKey("ingest_policy", IngestPolicy)
TUS = web.AppKey("tus", TusHandler)
"""Resumable uploads, when the storage has the capability (``/api/tus/``); else unset."""
METRICS = web.AppKey("metrics", Metrics)
THUMBNAILER = web.AppKey("thumbnailer", Thumbnailer)
UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)
GUARD = web.AppKey("guard", Guard)
QUICK_RESPONDER = web.AppKey("quick_responder", QuickResponder)
"""What the connections answer themselves (a :class:`~clustr_aio.web.quick.QuickResponders` of hot
thumbnails and stored files), when the settings allow any; else unset."""

REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
"""Who the request is from, once :class:`Guard` admitted it (routes that need no key: unset)."""
RATE_STATE = web.RequestKey("rate_state", RateState)
