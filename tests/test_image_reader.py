"""The one image reader (``ifr.data.read_image``): every PIL mode a file can hold is converted as a
viewer shows it or refused with a message naming the file. Each test writes a real file with PIL."""
import logging
import struct
import warnings
import zlib

import numpy as np
import pytest
import PIL
from PIL import Image

from ifr.data import DatasetError, DatasetMapper, ImageReadError, read_image, to_rgb
from ifr.data.image_reader import check_image_size
from ifr.data.mapper import TTADatasetMapper


def _read(path) -> np.ndarray:
    """(H, W, 3) uint8 array of ``read_image``, failing on any warning PIL emits (e.g. its palette warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(str(path))
    assert image.mode == "RGB"
    return np.asarray(image)


def _grey(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[..., None], 3, axis=2)


def test_rgb_png_is_read_as_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(_read(tmp_path / "rgb.png"), pixels)


def test_bilevel_is_black_and_white(tmp_path):
    checker = (np.indices((4, 6)).sum(axis=0) % 2).astype(bool)
    Image.fromarray(checker).save(tmp_path / "bilevel.png")
    with Image.open(tmp_path / "bilevel.png") as image:
        assert image.mode == "1"
    np.testing.assert_array_equal(_read(tmp_path / "bilevel.png"), _grey(checker.astype(np.uint8) * 255))


def test_greyscale_is_replicated_into_rgb(tmp_path):
    grey = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(_read(tmp_path / "grey.png"), _grey(grey))


@pytest.mark.parametrize("transparency", [None, 1], ids=["opaque", "with-transparency"])
def test_palette_gives_the_palette_colours(tmp_path, transparency):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    image.save(tmp_path / "palette.png", **({"transparency": transparency} if transparency is not None else {}))
    with Image.open(tmp_path / "palette.png") as reopened:
        assert reopened.mode == "P" and ("transparency" in reopened.info) == (transparency is not None)
    expected = np.array(palette, dtype=np.uint8).reshape(3, 3)[indices]
    np.testing.assert_array_equal(_read(tmp_path / "palette.png"), expected)  # transparent pixels keep their colour


def test_grey_with_alpha_drops_the_alpha(tmp_path):
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    alpha = np.array([[255, 0], [0, 128]], dtype=np.uint8)
    Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(_read(tmp_path / "la.png"), _grey(grey))


def test_rgba_drops_the_alpha_and_keeps_the_stored_colours(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(_read(tmp_path / "rgba.png"), rgba[..., :3])


def test_cmyk_is_converted_to_rgb(tmp_path):
    cmyk = np.array([[[0, 255, 255, 0], [0, 0, 0, 255], [0, 0, 0, 0]]], dtype=np.uint8)  # red, black, white
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(_read(tmp_path / "cmyk.tif"), [[[255, 0, 0], [0, 0, 0], [255, 255, 255]]])


def test_ycbcr_is_converted_to_rgb(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]], dtype=np.uint8)
    Image.fromarray(rgb).convert("YCbCr").save(tmp_path / "ycbcr.tif")
    with Image.open(tmp_path / "ycbcr.tif") as image:
        if image.mode != "YCbCr":  # Pillow 12.3 (the newest for Python 3.10) opens it as RGB, then cannot decode it
            pytest.skip(f"Pillow {PIL.__version__} does not read back its own YCbCr TIFF as YCbCr")
    assert np.abs(_read(tmp_path / "ycbcr.tif").astype(int) - rgb).max() <= 2  # YCbCr rounding


def test_lab_is_converted_to_rgb(tmp_path):
    Image.new("LAB", (2, 1), (255, 128, 128)).save(tmp_path / "lab.tif")  # L* 100, a* = b* = 0: white
    assert (_read(tmp_path / "lab.tif") >= 250).all()


@pytest.mark.parametrize("file_name, dtype", [("ramp.png", "<u2"), ("ramp_big_endian.tif", ">u2")])
def test_16_bit_grey_is_scaled_by_its_range_not_clipped(tmp_path, file_name, dtype):
    values = np.arange(0, 65536, 257 * 5, dtype=np.uint32)            # 0, 1285, ..., 65535: 52 values
    values = np.concatenate([values, [128, 129, 385, 386]]).reshape(4, 14)  # and rounding's edges
    Image.fromarray(values.astype(dtype)).save(tmp_path / file_name)
    with Image.open(tmp_path / file_name) as image:
        assert image.mode == ("I;16" if dtype == "<u2" else "I;16B")
    out = _read(tmp_path / file_name)
    expected = np.round(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(out, _grey(expected))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 50  # a ramp, not a white picture


def test_48_bit_rgb_png_is_scaled_by_its_range(tmp_path):
    """16 bits per channel RGB, written by hand (PIL cannot write it): PIL keeps each sample's high
    byte, floor(v / 256), within 1 of the 16-bit grey's round(v / 257)."""
    values = np.array([[[0, 0, 0], [65535, 32768, 257], [1000, 40000, 65535]]], dtype=">u2")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 3, 1, 16, 2, 0, 0, 0)  # 3 x 1, 16 bits, truecolour
    rows = b"".join(b"\x00" + row.tobytes() for row in values)  # filter 0 on each row
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    (tmp_path / "rgb48.png").write_bytes(png)
    out = _read(tmp_path / "rgb48.png").astype(int)
    np.testing.assert_array_equal(out, values.astype(int) // 256)
    assert np.abs(out - np.round(values / 257)).max() <= 1


def test_16_bit_pgm_which_pil_opens_as_mode_i_is_scaled_like_16_bit(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=">u2")
    (tmp_path / "deep.pgm").write_bytes(b"P5\n4 1\n65535\n" + values.tobytes())
    with Image.open(tmp_path / "deep.pgm") as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(_read(tmp_path / "deep.pgm"), _grey(np.array([[0, 4, 128, 255]], np.uint8)))


@pytest.mark.parametrize("mode, dtype, words", [("I", np.int32, "32-bit integer"),
                                                ("F", np.float32, "32-bit floating")])
def test_32_bit_integer_and_float_images_are_refused_with_the_reason(tmp_path, mode, dtype, words):
    path = tmp_path / f"deep_{mode}.tif"
    Image.fromarray(np.array([[0, 1], [2, 3]], dtype=dtype)).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    with pytest.raises(ImageReadError, match=words) as info:
        read_image(str(path))
    assert str(path) in str(info.value) and "save it as an 8-bit or 16-bit" in str(info.value)


@pytest.mark.parametrize("file_name", ["animation.gif", "pages.tif"])
def test_multi_frame_files_give_their_first_frame_with_a_warning(tmp_path, caplog, file_name):
    first = Image.new("RGB", (4, 3), (255, 0, 0))
    second = Image.new("RGB", (4, 3), (0, 0, 255))
    path = tmp_path / file_name
    first.save(path, save_all=True, append_images=[second])
    with Image.open(path) as image:
        assert image.n_frames == 2
    with caplog.at_level(logging.WARNING, logger="ifr.data.image_reader"):
        out = np.asarray(read_image(str(path)))
        read_image(str(path))
    assert (out == [255, 0, 0]).all()
    assert caplog.text.count(f"{path} has 2 frames") == 1  # once per file


def _exif_photo(path, orientation: int) -> None:
    """A 40x20 JPEG, left half red, right half blue, whose EXIF says how to turn it for display."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_as_a_viewer_shows_the_photo(tmp_path):
    _exif_photo(tmp_path / "rotated.jpg", 6)  # 6: rotate 90 degrees clockwise to display
    out = _read(tmp_path / "rotated.jpg").astype(int)
    assert out.shape == (40, 20, 3)  # height 40, width 20 as shown
    assert (np.abs(out[:18] - [255, 0, 0]).max(axis=2) < 40).all()  # the left half is now on top
    assert (np.abs(out[22:] - [0, 0, 255]).max(axis=2) < 40).all()
    # The annotation's size is the displayed one, as detectron2 checks it.
    record = {"file_name": str(tmp_path / "rotated.jpg"), "image_id": 3, "height": 40, "width": 20, "annotations": []}
    assert DatasetMapper([], "RGB", is_train=False)(record)["image"].shape == (3, 40, 20)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_truncated_or_corrupt_files_are_an_error_naming_the_file(tmp_path, damage):
    path = tmp_path / f"{damage}.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x89PNG not really", "empty": b""}[damage])
    with pytest.raises(ImageReadError, match="cannot be decoded") as info:
        read_image(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(str(tmp_path / "missing.png"))


def test_an_image_over_pils_decompression_bomb_limit_is_an_error_naming_the_file(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit
    with pytest.raises(ImageReadError, match="huge.png is larger than PIL's limit against decompression bombs"):
        read_image(str(tmp_path / "huge.png"))


def test_size_disagreeing_with_the_annotation_names_file_id_and_both_sizes(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    record = {"file_name": str(tmp_path / "a.png"), "image_id": 17, "height": 30, "width": 20, "annotations": []}
    for mapper in (DatasetMapper([], "BGR", is_train=False), TTADatasetMapper([20], 100, flip=False)):
        with pytest.raises(DatasetError) as info:
            mapper(record)
        message = str(info.value)
        assert str(tmp_path / "a.png") in message and "image id 17" in message
        assert "is 30x20" in message and "says 20x30" in message
    check_image_size({**record, "height": 20, "width": 30}, read_image(record["file_name"]))


def test_predictor_input_is_converted_like_a_file(tmp_path):
    """``to_rgb`` (what DefaultPredictor applies) gives the same pixels as reading the file."""
    values = np.linspace(0, 65535, 12).astype(np.uint16).reshape(3, 4)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        np.testing.assert_array_equal(np.asarray(to_rgb(image)), _read(tmp_path / "deep.png"))
    with pytest.raises(ImageReadError, match="the image holds 32-bit floating"):
        to_rgb(Image.new("F", (2, 2)))
    with pytest.raises(ImageReadError, match="the image has PIL mode La, which this reader does not convert"):
        to_rgb(Image.new("La", (2, 2)))  # premultiplied alpha: no file format holds it
