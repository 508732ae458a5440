import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from reallod.data import Record, write_records
from reallod.data.show import (
    MIN_WIDTH,
    PALETTE,
    TEXT_SIZE,
    _panel_lines,
    display_scale,
    label_font,
    output_name,
    render_record,
    show_file,
    text_colour,
    wrap,
)
from reallod.errors import DataError
from tests.cli_helpers import run_cli

FACE = [140, 30, 330, 270]
ASTRONAUT = {
    "filename": "photos/astronaut.png", "height": 512, "width": 512,
    "pairs": {
        "vlm_short": [{"bboxes": [FACE], "category": "person", "relation": "single",
                       "positive_expressions": ["the smiling astronaut", "a woman with short brown hair"],
                       "negative_expressions": ["a man with a beard", "a child wearing glasses"]}],
        "llm": [{"bboxes": [[0, 250, 512, 512], [30, 280, 180, 500]], "category": "spacesuit", "relation": "multi",
                 "positive_expressions": ["the orange spacesuit"],
                 "negative_expressions": [f"a suit of colour number {i}" for i in range(40)]}],
    },
}


@pytest.fixture
def photo_root(tmp_path):
    root = tmp_path / "images"
    (root / "photos").mkdir(parents=True)
    Image.fromarray(skdata.astronaut()).save(root / "photos" / "astronaut.png")
    return root


def test_render_draws_boxes_labels_and_panel(photo_root):
    rec = Record.from_dict(ASTRONAUT)
    photo = Image.open(photo_root / "photos" / "astronaut.png")
    picture = np.asarray(render_record(rec, photo))
    scale = MIN_WIDTH / 512  # small photos are enlarged so labels keep a readable size
    assert picture.shape[1] == MIN_WIDTH and picture.shape[0] > round(512 * scale) + 200
    x1, y1, _, y2 = (round(v * scale) for v in FACE)
    # the left edge of the face box carries pair 1's colour
    assert tuple(picture[(y1 + y2) // 2, x1 + 1]) == PALETTE[0]
    # the label sits just above the box on a filled background of the same colour
    label = picture[y1 - 22:y1 - 2, x1 + 1:x1 + 150].reshape(-1, 3)
    assert (np.all(label == PALETTE[0], axis=1)).mean() > 0.5
    assert (np.all(label == text_colour(PALETTE[0]), axis=1)).sum() > 20
    # the panel under the photo is white with green positives and red negatives written on it
    panel = picture[round(512 * scale):].reshape(-1, 3)
    assert (np.all(panel == 255, axis=1)).mean() > 0.8
    assert np.all(panel == (0, 95, 20), axis=1).sum() > 50
    assert np.all(panel == (170, 20, 20), axis=1).sum() > 50


def test_panel_lists_everything_within_the_width():
    rec = Record.from_dict(ASTRONAUT)
    pairs = [(s, p) for s, items in rec.pairs.items() for p in items]
    rows = _panel_lines(rec, pairs, MIN_WIDTH, ["note: something"])
    kinds = [k for k, _, _ in rows]
    assert kinds[:2] == ["title", "note"] and kinds.count("pair") == 2
    text = "\n".join(t for _, t, _ in rows)
    assert "+ the smiling astronaut" in text and "+ a woman with short brown hair" in text
    assert "negatives (2): a man with a beard | a child wearing glasses" in text
    assert "negatives (40):" in text and "(cut)" in text  # 40 negatives are cut to a few lines
    font = label_font(TEXT_SIZE)
    assert all(font.getlength(t) <= MIN_WIDTH - 2 * 14 for k, t, _ in rows if k != "title")


def test_render_uses_record_size_when_the_file_differs():
    rec = Record.from_dict({"filename": "x.jpg", "height": 400, "width": 600, "pairs": {
        "llm": [{"bboxes": [[10, 10, 590, 390]], "category": "cup", "positive_expressions": ["a cup"]}]}})
    small = Image.fromarray(skdata.coffee()).resize((300, 200))
    picture = render_record(rec, small)
    assert picture.width == MIN_WIDTH
    assert tuple(np.asarray(picture)[300, round(10 * 1.5) + 1]) == PALETTE[0]
    assert render_record(rec, None).width == MIN_WIDTH  # no image: grey canvas, boxes still drawn


def test_layout_helpers():
    font = label_font(TEXT_SIZE)
    lines = wrap("a " * 100 + "x" * 300, font, 200)
    assert all(font.getlength(line) <= 200 for line in lines) and lines[-1].endswith("...")
    assert display_scale(512, 512) == pytest.approx(MIN_WIDTH / 512)
    assert display_scale(4000, 3000) == pytest.approx(1400 / 4000)
    assert display_scale(1000, 800) == 1.0
    assert text_colour((255, 200, 25)) == (0, 0, 0) and text_colour((0, 0, 128)) == (255, 255, 255)
    assert output_name(3, "train2017/0001 x.jpg") == "0003_train2017_0001_x.png"


def test_show_file_writes_pngs_and_reports_missing_images(photo_root, tmp_path):
    src = tmp_path / "rd.jsonl"
    missing = {**ASTRONAUT, "filename": "photos/gone.jpg"}
    other_source = {**ASTRONAUT, "filename": "photos/other.jpg", "pairs": {"vlm_long": ASTRONAUT["pairs"]["llm"]}}
    write_records(src, [ASTRONAUT, other_source, missing, ASTRONAUT, ASTRONAUT])
    out = tmp_path / "png"
    with pytest.raises(DataError) as exc:
        show_file(src, photo_root, out, n=5, sources=["llm"])
    assert (exc.value.path, exc.value.line, exc.value.field) == (str(src), 3, "filename")
    assert "image not found" in exc.value.message
    stats = show_file(src, photo_root, out, n=2, sources=["llm"], skip_missing=True)
    assert [p.name for p in stats.written] == ["0000_photos_astronaut.png", "0001_photos_astronaut.png"]
    assert stats.skipped == {"records with no pair of the chosen sources": 1,
                             "records whose image is missing or unreadable": 1}
    with Image.open(stats.written[0]) as im:
        assert im.format == "PNG" and im.width == MIN_WIDTH
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in stats.written]  # no temp files left


def test_show_never_opens_an_image_outside_the_root(photo_root, tmp_path):
    src = tmp_path / "rd.jsonl"
    outside = photo_root.parent / "secret.jpg"
    Image.fromarray(skdata.astronaut()).save(outside)  # a real image, one folder up
    for name in ("../secret.jpg", str(outside)):
        write_records(src, [{**ASTRONAUT, "filename": name}])
        with pytest.raises(DataError, match="leads out of the image root; refusing to open it") as exc:
            show_file(src, photo_root, tmp_path / "o")
        assert (exc.value.line, exc.value.field) == (1, "filename")


def test_show_unreadable_image_and_cli(photo_root, tmp_path, capsys):
    (photo_root / "photos" / "broken.jpg").write_bytes(b"not a jpeg at all")
    src = tmp_path / "rd.jsonl"
    write_records(src, [ASTRONAUT, {**ASTRONAUT, "filename": "photos/broken.jpg"}])
    code, _, err = run_cli(["data", "show", src, "--images", photo_root, "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.startswith(f"error: {src}:2: filename: cannot decode image") and "Traceback" not in err
    code, out, _ = run_cli(["data", "show", src, "--images", photo_root, "--out", tmp_path / "o", "-n", "1"], capsys)
    assert code == 0 and out.strip() == f"wrote 1 PNGs to {tmp_path / 'o'}"
