"""Every PIL image mode read as what it shows, or refused naming the mode and why."""

import numpy as np
import pytest
from PIL import Image

from biam.data.images import ImageFileDataset, ImageModeError, Unreadable, image_transform, load_image


def _save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    path = _save(tmp_path, "ramp16.png", Image.fromarray(ramp))
    assert Image.open(path).mode in ("I;16", "I")
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (8, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb < 255).mean() > 0.9  # a ramp, not all white


def test_alpha_is_composited_onto_white_and_palette_colours_kept(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, ..., 3] = 255   # top half opaque red-ish, bottom half fully transparent
    path = _save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA"))
    rgb = np.asarray(load_image(path))
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[3, 3]) == (255, 255, 255)
    la = _save(tmp_path, "la.png", Image.fromarray(rgba[..., [0, 3]], "LA"))
    assert tuple(np.asarray(load_image(la))[3, 3]) == (255, 255, 255)
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    assert tuple(np.asarray(load_image(_save(tmp_path, "p.png", pal)))[0, 1]) == (40, 50, 60)
    pal.info["transparency"] = 0
    assert tuple(np.asarray(load_image(_save(tmp_path, "pt.png", pal, transparency=0)))[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["1", "L", "CMYK", "RGB"])
def test_plain_modes_convert(tmp_path, mode):
    img = Image.new(mode, (5, 3))
    suffix = "jpg" if mode == "CMYK" else "png"
    rgb = load_image(_save(tmp_path, f"x.{suffix}", img))
    assert rgb.mode == "RGB" and rgb.size == (5, 3)


def test_float_and_32_bit_integer_images_in_range_are_scaled_and_out_of_range_refused(tmp_path):
    f = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), "F")
    assert np.asarray(load_image(_save(tmp_path, "f.tif", f)))[0, 0, 0] == 128
    big = Image.fromarray(np.full((2, 2), 300.0, dtype=np.float32), "F")
    path = _save(tmp_path, "big.tif", big)
    with pytest.raises(ImageModeError, match=r"mode F holds values 300\.\.300, outside 0\.\.1"):
        load_image(path)
    i32 = Image.fromarray(np.full((2, 2), 70000, dtype=np.int32), "I")
    with pytest.raises(ImageModeError, match="outside 0..65535"):
        load_image(_save(tmp_path, "i.tif", i32))
    # In a dataset the refusal is a named, unreadable record, not a crash.
    item, index = ImageFileDataset([path], image_transform(8, (0, 0, 0), (1, 1, 1)))[0]
    assert isinstance(item, Unreadable) and "ImageModeError" in item.reason and "mode F" in item.reason
