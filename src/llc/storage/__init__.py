"""Where results are kept besides the local runs directory: an S3-compatible bucket (docs/storage.md), and
the Modal runs volume that Modal cells write their run directories to (`llc runs`, docs/backends.md)."""
