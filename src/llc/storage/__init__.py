"""Where results are kept besides the local runs directory: an S3-compatible bucket (docs/storage.md).
The Modal runs volume lives with the Modal backend (`llc.backends.modal.volume`)."""
