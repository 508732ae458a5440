"""``reallod data show``: Real-Data records drawn as PNGs a person can read.

Each pair gets a colour and a number. On the image: its boxes, and on its first box a label with the
number and its first positive expression (on a filled background so it reads on any photo). Under
the image, on a white panel: per pair, the source, category and relation, every positive expression,
and the negative expressions. Images are rescaled to a readable width (small ones up, huge ones down)
so the text keeps one size whatever the photo. Only PIL is used.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

from reallod.data.convert_common import EmptyRunError, SourceCheck, require_records
from reallod.data.images import check_image_root, open_image, resolve_image
from reallod.data.io import AtomicWriter, check_writable, read_numbered_records
from reallod.data.records import Pair, Record
from reallod.errors import ConfigError, DataError

# Distinct colours (a Kelly/Trubetskoy-style palette), cycled when there are more pairs.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 200, 200),
    (240, 50, 230), (160, 200, 40), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128),
    (128, 128, 0), (255, 200, 25),
]
MIN_WIDTH, MAX_SIDE, MAX_UPSCALE = 900, 1400, 4.0
LABEL_SIZE, TEXT_SIZE, TITLE_SIZE = 18, 17, 20
MAX_POSITIVES_LISTED, MAX_NEGATIVE_LINES, MAX_PANEL_LINES = 6, 4, 140
MARGIN = 14


@dataclass(slots=True)
class ShowStats:
    """PNGs written, and records left out (with why)."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    resized: list[str] = field(default_factory=list)  # drawn images whose size is not their record's

    def summary(self, out_dir: str | os.PathLike) -> str:
        text = f"wrote {len(self.written)} PNGs to {out_dir}"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        if self.resized:
            text += (f"; {len(self.resized)} image(s) not of their record's size, their boxes drawn as recorded "
                     f"(e.g. {self.resized[0]}: `reallod data validate --images` names them all)")
        return text


def text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (relative luminance)."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


# TrueType fonts with accents, Greek and Cyrillic, tried in turn (Pillow looks in the system's font
# folders): the font Pillow ships (``load_default``) has ASCII only, and draws "café" as "caf□".
FONT_FILES = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf",
              "Arial Unicode.ttf")


@lru_cache(maxsize=1)
def _font_file() -> str | None:
    """The first of :data:`FONT_FILES` installed here (looked for once: Pillow walks the font folders)."""
    for name in FONT_FILES:
        try:
            return str(ImageFont.truetype(name, 10).path)
        except OSError:
            continue
    return None


@lru_cache(maxsize=32)
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of ``size`` pixels for labels (here and in ``reallod detect``'s pictures): a system TrueType
    font that has non-ASCII letters, else Pillow's own (ASCII only), else, without FreeType, its bitmap
    font. For text it lacks letters of (Chinese), :func:`font_for` finds another installed font."""
    if not features.check("freetype2"):
        return ImageFont.load_default()
    path = _font_file()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


FontKey = tuple[str, int]  # a font file and the index of the face in it (a .ttc holds several)
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts", "/Library/Fonts",
             "/System/Library/Fonts", "~/Library/Fonts", os.path.join(os.environ.get("WINDIR", r"C:\Windows"), "Fonts"))
# Where there is no fontconfig: font files whose names promise many scripts are tried first, and at most
# MAX_SCANNED fonts in all (each is opened when a label first lacks a letter).
_WIDE_NAMES = ("cjk", "han", "unicode", "fallback", "yahei", "msyh", "simsun", "simhei", "pingfang", "hiragino",
               "heiti", "meiryo", "malgun", "gothic", "wqy", "droid", "noto")
MAX_SCANNED = 120
_PROBE_SIZE = 24
_INVISIBLE = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})  # spaces and controls: every font "has" them
_warned: list[str] = []  # the letters no font had, once a warning said so (one per process)


@lru_cache(maxsize=1)
def _fallback_fonts() -> tuple[FontKey, ...]:
    """Installed fonts to take the letters the label font lacks from, best first: fontconfig's fallback list
    for sans-serif (``fc-match -s``: each font adds letters the ones before lack, a CJK font where one is
    installed), else the font files of the usual folders. Looked for once, when a label first needs it."""
    fc = shutil.which("fc-match")
    if fc:
        try:
            listed = subprocess.run([fc, "-s", "-f", "%{file}\t%{index}\n", "sans-serif"], capture_output=True,
                                    text=True, timeout=10, check=False).stdout
            found = {}
            for line in listed.splitlines():
                file, _, index = line.partition("\t")
                if file:  # a variable font's named instances share the face's letters
                    found[(file, int(index or 0) & 0xFFFF)] = None
            if found:
                return tuple(found)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    files = []
    for folder in FONT_DIRS:
        for where, _, names in os.walk(os.path.expanduser(folder)):
            files += [os.path.join(where, n) for n in names if n.lower().endswith((".ttf", ".otf", ".ttc"))]
    files.sort(key=lambda f: (not any(w in os.path.basename(f).lower() for w in _WIDE_NAMES), f))
    return tuple((f, 0) for f in files[:MAX_SCANNED])


def _drawn(font: ImageFont.FreeTypeFont, char: str) -> tuple:
    mask, offset = font.getmask2(char)
    return offset, mask.size, bytes(mask)


@lru_cache(maxsize=256)
def _probe(key: FontKey | None) -> tuple[ImageFont.FreeTypeFont, tuple] | None:
    """The font (None: Pillow's own) at one size, and how it draws a letter it lacks; None if it cannot be
    opened (a colour emoji font has fixed sizes)."""
    try:
        font = ImageFont.truetype(key[0], _PROBE_SIZE, index=key[1]) if key else ImageFont.load_default(_PROBE_SIZE)
    except (OSError, ValueError):
        return None
    if not isinstance(font, ImageFont.FreeTypeFont):
        return None
    return font, _drawn(font, "\uffff")  # a noncharacter: no font maps it, each draws its "missing" glyph


@lru_cache(maxsize=1 << 16)
def _has(key: FontKey | None, char: str) -> bool:
    """Whether the font draws ``char`` as itself, not as the box (or blank) it draws for what it lacks."""
    if unicodedata.category(char) in _INVISIBLE:
        return True
    probe = _probe(key)
    return probe is not None and _drawn(probe[0], char) != probe[1]


@lru_cache(maxsize=4096)
def _fallback(letters: frozenset[str]) -> FontKey | None:
    """The first of :func:`_fallback_fonts` that has all ``letters``."""
    return next((key for key in _fallback_fonts() if all(_has(key, c) for c in letters)), None)


@lru_cache(maxsize=64)
def _sized(key: FontKey, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(key[0], size, index=key[1])


def font_for(text: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """:func:`label_font` of ``size``, or, where it lacks letters of ``text`` (Chinese, and no CJK label
    font), an installed font that has every letter of it. Else the label font, which draws boxes for those
    letters, and one warning a process says so. Cheap per label: what each font has is looked up once."""
    font = label_font(size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        return font  # no FreeType: :func:`drawable` makes the text Latin-1
    path = _font_file()
    own = (path, 0) if path else None
    lacks = [c for c in dict.fromkeys(text) if not _has(own, c)]
    if not lacks:
        return font
    other = _fallback(frozenset(text))
    if other is not None:
        return _sized(other, size)
    if not _warned:
        _warned.append("".join(lacks))
        warnings.warn(f"no installed font has the letters {''.join(lacks)!r} (of {text!r}): they are drawn as "
                      "boxes in the pictures; install a font that has them (for Chinese, Japanese or Korean: Noto "
                      "Sans CJK, such as Debian's fonts-noto-cjk)", stacklevel=2)
    return font


def drawable(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """``text`` as ``font`` can draw it: Pillow's bitmap font encodes text as Latin-1 and raises on
    anything else, so those characters become "?" there (TrueType fonts draw a box for what they lack)."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _fit(text: str, font, width: float) -> str:
    """``text`` cut with "..." so it fits ``width`` pixels."""
    text = drawable(text, font)
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def wrap(text: str, font, width: float) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a single over-long word is cut."""
    lines: list[str] = []
    current = ""
    for word in drawable(text, font).split():
        trial = f"{current} {word}" if current else word
        if font.getlength(trial) <= width:
            current = trial
            continue
        if current:
            lines.append(current)
        current = word if font.getlength(word) <= width else _fit(word, font, width)
    if current:
        lines.append(current)
    return lines or [""]


def display_scale(width: int, height: int) -> float:
    """Scale that brings an image to a readable size: at least MIN_WIDTH wide, no side over MAX_SIDE."""
    s = min(MAX_UPSCALE, max(1.0, MIN_WIDTH / width))
    if max(width, height) * s > MAX_SIDE:
        s = MAX_SIDE / max(width, height)
    return s


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_boxes(canvas: Image.Image, pairs: Sequence[tuple[str, Pair]], scale: float) -> None:
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    line_w = max(2, round(min(w, h) / 300))
    pad = 4
    label_h = label_font(LABEL_SIZE).getbbox("Ag")[3] + 2 * pad
    placed: list[tuple[float, float, float, float]] = []
    for idx, (_, pair) in enumerate(pairs, 1):  # every box first, so no box line crosses a label
        for box in pair.bboxes:
            draw.rectangle([v * scale for v in box], outline=PALETTE[(idx - 1) % len(PALETTE)], width=line_w)
    for idx, (_, pair) in enumerate(pairs, 1):
        colour = PALETTE[(idx - 1) % len(PALETTE)]
        for b, box in enumerate(pair.bboxes):
            x1, y1 = box[0] * scale, box[1] * scale
            text, font = str(idx), label_font(LABEL_SIZE)
            if b == 0 and pair.positive_expressions:
                text = f"{idx}: {pair.positive_expressions[0]}"
                font = font_for(text, LABEL_SIZE)
                text = _fit(text, font, min(w * 0.6, 520) - 2 * pad)
            tw = font.getlength(text) + 2 * pad
            lx = min(max(0.0, x1 - line_w / 2), max(0.0, w - tw))
            ly = y1 - label_h if y1 - label_h >= 0 else y1
            rect = (lx, ly, lx + tw, ly + label_h)
            for _ in range(12):  # step down past labels already placed
                if not any(_overlaps(rect, p) for p in placed):
                    break
                ly = min(ly + label_h + 1, h - label_h)
                rect = (lx, ly, lx + tw, ly + label_h)
            placed.append(rect)
            draw.rectangle(rect, fill=colour)
            draw.text((lx + pad, ly + pad), text, font=font, fill=text_colour(colour))


def _panel_lines(record: Record, pairs: Sequence[tuple[str, Pair]], width: int,
                 notes: Sequence[str]) -> list[tuple[str, str, int | None]]:
    """(kind, text, pair index) rows of the panel; kind is title, note, pair, pos, neg or more. Each text is
    measured in the font that draws it (:func:`font_for`)."""
    def font(text: str) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        return font_for(text, TEXT_SIZE)

    inner = width - 2 * MARGIN
    title = f"{record.filename}   ({record.width} x {record.height})"
    rows: list[tuple[str, str, int | None]] = [("title", _fit(title, font_for(title, TITLE_SIZE), inner), None)]
    rows += [("note", line, None) for note in notes for line in wrap(note, font(note), inner)]
    if not pairs:
        rows.append(("note", "no pair of the chosen sources", None))
    for idx, (source, pair) in enumerate(pairs, 1):
        nbox = len(pair.bboxes)
        head = f"{idx}   {source}  |  {pair.category}  |  {pair.relation}, {nbox} box{'es' if nbox != 1 else ''}"
        rows.append(("pair", _fit(head, font(head), inner - 40), idx))
        pos = pair.positive_expressions
        for text in pos[:MAX_POSITIVES_LISTED]:
            for i, line in enumerate(wrap(text, font(text), inner - 70)):
                rows.append(("pos", ("+ " if i == 0 else "   ") + line, idx))
        if len(pos) > MAX_POSITIVES_LISTED:
            rows.append(("more", f"   ... and {len(pos) - MAX_POSITIVES_LISTED} more positive expressions", idx))
        neg = pair.negative_expressions
        if neg:
            text = f"negatives ({len(neg)}): " + " | ".join(neg)
            lines = wrap(text, font(text), inner - 40)
            if len(lines) > MAX_NEGATIVE_LINES:
                last = lines[MAX_NEGATIVE_LINES - 1]
                lines = [*lines[:MAX_NEGATIVE_LINES - 1], _fit(last, font(last), inner - 140) + "  (cut)"]
            rows += [("neg", line, idx) for line in lines]
        else:
            rows.append(("more", "negatives: none", idx))
    if len(rows) > MAX_PANEL_LINES:
        rows = [*rows[:MAX_PANEL_LINES - 1], ("more", f"... {len(rows) - MAX_PANEL_LINES + 1} more lines not shown",
                                               None)]
    return rows


def render_record(record: Record, image: Image.Image | None, *, sources: Sequence[str] | None = None,
                  notes: Sequence[str] = ()) -> Image.Image:
    """The PNG-ready picture of one record (no file I/O). ``image`` None draws on a grey canvas."""
    wanted = set(sources) if sources else None
    pairs = [(s, p) for s, items in record.pairs.items() if wanted is None or s in wanted for p in items]
    notes = list(notes)
    if image is None:
        image = Image.new("RGB", (record.width, record.height), (150, 150, 150))
    elif image.size != (record.width, record.height):
        notes.append(f"note: the image file is {image.width} x {image.height}, the record says "
                     f"{record.width} x {record.height}; drawn at the record's size")
        image = image.resize((record.width, record.height))
    image = image.convert("RGB")
    scale = display_scale(record.width, record.height)
    shown = image.resize((max(1, round(record.width * scale)), max(1, round(record.height * scale))),
                         Image.Resampling.LANCZOS) if scale != 1.0 else image.copy()
    _draw_boxes(shown, pairs, scale)

    width = max(shown.width, MIN_WIDTH)
    rows = _panel_lines(record, pairs, width, notes)
    step = round(TEXT_SIZE * 1.45)
    heights = [round(TITLE_SIZE * 1.6) if k == "title" else step + (6 if k == "pair" else 0) for k, _, _ in rows]
    canvas = Image.new("RGB", (width, shown.height + sum(heights) + 2 * MARGIN), (255, 255, 255))
    canvas.paste(shown, ((width - shown.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    y = shown.height + MARGIN
    for (kind, text, idx), height in zip(rows, heights, strict=True):
        x = MARGIN
        font = font_for(text, TITLE_SIZE if kind == "title" else TEXT_SIZE)
        if kind == "title":
            draw.text((x, y), text, font=font, fill=(0, 0, 0))
        elif kind == "pair":
            colour = PALETTE[(idx - 1) % len(PALETTE)]
            y += 6
            sw = TEXT_SIZE + 2
            draw.rectangle([x, y, x + sw, y + sw], fill=colour, outline=(60, 60, 60))
            draw.text((x + sw + 10, y), text, font=font, fill=(0, 0, 0))
            y -= 6
        elif kind == "pos":
            draw.text((x + 30, y), text, font=font, fill=(0, 95, 20))
        elif kind == "neg":
            draw.text((x + 30, y), text, font=font, fill=(170, 20, 20))
        elif kind == "note":
            draw.text((x, y), text, font=font, fill=(120, 60, 0))
        else:
            draw.text((x + 30, y), text, font=font, fill=(90, 90, 90))
        y += height
    return canvas


def output_name(index: int, filename: str) -> str:
    """``0003_train2017_000000123.png``: ordered like the input, readable, safe on every filesystem."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(filename)[0]).strip("._") or "image"
    return f"{index:04d}_{stem[-80:]}.png"


def load_image(root: str | os.PathLike, record: Record, *, path: str, line: int) -> Image.Image:
    """The record's image under ``root``; a missing or undecodable file raises a located DataError."""
    resolved = resolve_image(str(root), record.filename)
    if resolved is None:
        raise DataError(f"{record.filename!r} is absolute or leads out of the image root; refusing to open it",
                        path=path, line=line, field="filename")
    full = Path(resolved)
    if not full.is_file():
        raise DataError(f"image not found: {full}", path=path, line=line, field="filename")
    try:
        return open_image(full)  # upright: the space of the record's boxes
    except DataError as e:
        raise DataError(f"cannot decode image {full}: {e.message}", path=path, line=line, field="filename") from None


def _out_folder(out_dir: str | os.PathLike, src: str | os.PathLike) -> Path:
    """``--out``: a folder, never a file (the input itself, given by mistake, stays as it is), made with
    its first PNG (a run that draws nothing leaves none); one that cannot be made is refused first."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        what = "the input file" if out.resolve() == Path(src).resolve() else "a file"
        raise ConfigError(f"--out {out}: {what}, not a folder; give a folder for the PNGs (created if missing)")
    check_writable(out, option="--out", folder=True)
    return out


def show_file(src: str | os.PathLike, images: str | os.PathLike, out_dir: str | os.PathLike, *, n: int = 20,
              sources: Sequence[str] | None = None, skip_missing: bool = False) -> ShowStats:
    """Draw the first ``n`` records of ``src`` that have pairs of the chosen sources, one PNG each."""
    check_image_root(images)
    check = SourceCheck(sources)
    out = _out_folder(out_dir, src)
    stats = ShowStats()
    wanted = set(sources) if sources else None
    records_in = 0
    for lineno, record in read_numbered_records(src):
        if len(stats.written) >= n:
            break
        records_in += 1
        check.see(record)
        if wanted is not None and not any(s in wanted and items for s, items in record.pairs.items()):
            stats.skipped["records with no pair of the chosen sources"] = \
                stats.skipped.get("records with no pair of the chosen sources", 0) + 1
            continue
        try:
            image = load_image(images, record, path=str(src), line=lineno)
        except DataError:
            if not skip_missing:
                raise
            stats.skipped["records whose image is missing or unreadable"] = \
                stats.skipped.get("records whose image is missing or unreadable", 0) + 1
            continue
        if image.size != (record.width, record.height):
            stats.resized.append(f"{src}:{lineno} {record.filename} is {image.width}x{image.height}, its record "
                                 f"says {record.width}x{record.height}")
        picture = render_record(record, image, sources=sources)
        buf = io.BytesIO()
        picture.save(buf, format="PNG", optimize=False)
        target = out / output_name(len(stats.written), record.filename)
        with AtomicWriter(target) as w:
            w.write(buf.getvalue())
        stats.written.append(target)
    if not stats.written:
        require_records(records_in, src)
        check.check(src, outcome="no PNG written")
        why = ", ".join(f"{k} {reason}" for reason, k in sorted(stats.skipped.items()))
        raise EmptyRunError(f"none of its {records_in} records could be drawn ({why}); no PNG written", path=str(src))
    return stats
