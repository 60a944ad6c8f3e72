"""Vendor file formats: each an adapter between one vendor file and a Plan or Encodings
(`mixq.export.formats.convert` has the table of formats and the entry points)."""

from mixq.export.formats import aimet, ascend, ort, qaic
from mixq.export.formats.convert import convert, guess_format, read_format, write_format
from mixq.export.formats.qaic import read_profile, write_profile
from mixq.export.formats.registry import FORMATS, Format, VendorData, get_format, register_format

__all__ = [
    "FORMATS",
    "Format",
    "VendorData",
    "aimet",
    "ascend",
    "convert",
    "get_format",
    "guess_format",
    "ort",
    "qaic",
    "read_format",
    "read_profile",
    "register_format",
    "write_format",
    "write_profile",
]
