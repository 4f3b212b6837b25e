"""The tus 1.0.0 resumable-upload protocol (https://tus.io/protocols/resumable-upload), over
the storage's :class:`~clustr_aio.storage.resumable.Resumable` capability."""
