"""Real-Data converters, one import point: ODVG, COCO and OmniLabel out; COCO detection json in.

Each format lives in its own module (``convert_odvg``, ``convert_coco``, ``convert_omnilabel``); the
pieces they share are in ``convert_common``.
"""

from reallod.data.convert_coco import coco_to_realdata, realdata_to_coco
from reallod.data.convert_common import ConvertStats, JsonSectionsWriter
from reallod.data.convert_odvg import realdata_to_odvg
from reallod.data.convert_omnilabel import realdata_to_omnilabel

__all__ = [
    "ConvertStats", "JsonSectionsWriter", "coco_to_realdata", "realdata_to_coco", "realdata_to_odvg",
    "realdata_to_omnilabel",
]
