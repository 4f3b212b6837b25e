"""What the service knows about images, without HTTP: their structure, dimensions and
orientation read while they stream in (:mod:`~clustr_aio.images.structure`), the metadata they
keep (:mod:`~clustr_aio.images.metadata`, :mod:`~clustr_aio.images.exif`), and their
thumbnails."""
