"""Storage in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph…), shared by every
instance of the service: ``STORAGE=s3``. See :mod:`.storage` for the object layout and
:mod:`.upload` for how a batch streams in without overwriting and without leftovers."""

from clustr_aio.storage.s3.storage import S3Storage

__all__ = ["S3Storage"]
