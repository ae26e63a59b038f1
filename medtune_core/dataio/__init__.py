"""Reading and writing datasets safely: streaming validation, rejects files, atomic writes, manifests."""

from medtune_core.dataio.atomic import READY_MARKER, atomic_write, atomic_write_text, build_folder_once
from medtune_core.dataio.reader import DatasetReader, Policy, ReadStats, detect_format
from medtune_core.dataio.writer import (
    DatasetWriter,
    Manifest,
    convert_file,
    manifest_path,
    rejects_path_for,
    source_entry,
    write_records,
)

__all__ = [
    "READY_MARKER",
    "DatasetReader",
    "DatasetWriter",
    "Manifest",
    "Policy",
    "ReadStats",
    "atomic_write",
    "atomic_write_text",
    "build_folder_once",
    "convert_file",
    "detect_format",
    "manifest_path",
    "rejects_path_for",
    "source_entry",
    "write_records",
]
