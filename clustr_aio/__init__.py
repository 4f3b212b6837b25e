"""clustr_aio: the streaming image-upload backend of Clustr, on aiohttp."""

__version__ = "0.1.0"
