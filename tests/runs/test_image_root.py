import numpy as np
import pytest
from PIL import Image

from reallod.agent.task import ObjectRef, Task
from reallod.errors import DataError
from reallod.runs.image_root import ImageError, ImageLoader
from tests.agent.io_helpers import write_image
from tests.data.image_files import png_claiming_size


def task(path: str, size=(64, 48)) -> Task:
    return Task("t", path, size[1], size[0], "the red square", ObjectRef("square", [[1, 1, 10, 10]]), caption="c")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../secret.jpg", "a/../../secret.jpg", "C:\\x.jpg", "..\\x.jpg", ""])
def test_paths_outside_the_root_are_refused(tmp_path, bad):
    loader = ImageLoader(tmp_path)
    with pytest.raises(ImageError) as e:
        loader.resolve(bad)
    assert e.value.kind == "unsafe_path"


def test_paths_inside_the_root_resolve(tmp_path):
    loader = ImageLoader(tmp_path)
    assert loader.resolve("a/../b.jpg") == tmp_path / "a" / ".." / "b.jpg"
    assert loader.resolve("./sub/c.jpg") == tmp_path / "sub" / "c.jpg"


def test_check_reports_missing_unreadable_and_size_mismatch(tmp_path):
    write_image(tmp_path / "ok.png")
    (tmp_path / "text.jpg").write_text("this is not an image")
    write_image(tmp_path / "big.png", size=(100, 100))
    loader = ImageLoader(tmp_path)
    loader.check(task("ok.png"))
    for name, kind, words in (("gone.jpg", "missing_image", "not found"), ("text.jpg", "unreadable_image", "not a readable"),
                              ("big.png", "image_size_mismatch", "100x100 but the task says 64x48")):
        with pytest.raises(ImageError) as e:
            loader.check(task(name))
        assert e.value.kind == kind and words in str(e.value) and name in str(e.value)  # the message names the file


def test_a_very_large_image_is_checked_by_its_header_and_refused_when_decoded(tmp_path):
    """Pillow's decompression-bomb error once escaped the header check, where only the task's own
    problems are caught, and ended the whole run; the check decodes nothing, so it need not apply."""
    png_claiming_size(tmp_path / "scan.png", 30_000, 20_000)
    loader = ImageLoader(tmp_path)
    loader.check(task("scan.png", size=(30_000, 20_000)))
    with pytest.raises(ImageError, match="30000x20000 but the task says 64x48"):
        loader.check(task("scan.png"))
    with pytest.raises(ImageError, match=r"scan\.png: not a readable image \(image is 30000×20000 = "
                       r"600,000,000 pixels, above the limit of 89,478,485\)$") as e:
        loader.load("scan.png")
    assert e.value.kind == "unreadable_image"


def test_sizes_and_pixels_are_the_upright_images(tmp_path):
    """A phone photo stored 100 × 40 with EXIF orientation 6 is a 40 × 100 picture: the agent checks
    the task's size against that and shows the VLM that, as the detector and training see it."""
    pixels = np.zeros((40, 100, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of what the file stores
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    loader = ImageLoader(tmp_path)
    loader.check(task("phone.jpg", size=(40, 100)))
    with pytest.raises(ImageError, match="40x100 but the task says 100x40"):
        loader.check(task("phone.jpg", size=(100, 40)))
    image = loader.load("phone.jpg")
    assert image.size == (40, 100) and np.asarray(image)[:10].mean() > 200  # the band is at the top


def test_an_image_header_is_read_once_for_all_its_tasks(tmp_path, monkeypatch):
    write_image(tmp_path / "ok.png")
    loader = ImageLoader(tmp_path)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    assert not loader.knows("ok.png")
    loader.check(task("ok.png"))
    assert loader.knows("ok.png")
    loader.check(task("ok.png"))
    with pytest.raises(ImageError, match="64x48 but the task says 10x10") as e:
        loader.check(task("ok.png", size=(10, 10)))  # a wrong size is still caught, from memory
    assert e.value.kind == "image_size_mismatch" and len(opened) == 1


def test_load_decodes_rgb_once_and_reports_broken_files(tmp_path):
    Image.new("L", (64, 48), 128).save(tmp_path / "grey.png")
    good = (tmp_path / "grey.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    loader = ImageLoader(tmp_path)
    img = loader.load("grey.png")
    assert img.mode == "RGB" and img.size == (64, 48)
    assert loader.load("grey.png") is img  # cached: tasks of one image share the decode
    with pytest.raises(ImageError, match=r"cut\.png: not a readable image") as e:
        loader.load("cut.png")
    assert e.value.kind == "unreadable_image"


def test_loader_for_is_lazy(tmp_path):
    loader = ImageLoader(tmp_path)
    load = loader.loader_for(task("later.png"))  # nothing is opened yet: the file does not exist
    write_image(tmp_path / "later.png")
    assert load().size == (64, 48)


def test_root_must_be_a_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope: image root not found \(no such folder\)"):
        ImageLoader(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file: image root is not a folder"):
        ImageLoader(tmp_path / "file")
