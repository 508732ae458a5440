"""Real-Data: records, streaming I/O, validation, statistics, conversion and drawing."""

from reallod.data.io import JsonlWriter, iter_json, iter_lines, read_records, write_records
from reallod.data.records import Pair, Record
from reallod.data.schema import Problem, check_record

__all__ = [
    "JsonlWriter", "Pair", "Problem", "Record", "check_record", "iter_json", "iter_lines",
    "read_records", "write_records",
]
