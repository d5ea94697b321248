"""Image files -> 8-bit RGB PIL images: the one reader of training, evaluation, test-time
augmentation, the demo and the tools (``read_image``), and the conversion it applies to an image
already open (``to_rgb``, also what ``DefaultPredictor`` applies to the image it is given).

How each PIL mode becomes RGB (the same pixels a user sees in an image viewer, or a refusal that says why):

=====================  =====================================================================
mode                   conversion
=====================  =====================================================================
RGB                    as is
1, L                   grey replicated into R, G, B (bilevel: 0 and 255)
P, PA                  the palette's colours; transparency dropped (see below)
LA, RGBA, RGBX         alpha dropped: the colours as stored, as detectron2, torchvision's
                       ``decode_image(mode=RGB)`` and OpenCV read them
CMYK, YCbCr, HSV, LAB  PIL's colour conversion to RGB
I;16, I;16B, I;16L,    16-bit grey scaled by the type's range, round(v * 255 / 65535), so
I;16N                  0..65535 -> 0..255 (never clipped at 255, which whitens the image)
I from a PGM/PPM file  the same (PIL widens those files' 16-bit samples, scaled to 0..65535,
                       to 32-bit mode I)
I (other files), F     refused: 32-bit integer or float samples have no standard brightness
                       range (float images are 0..1 or 0..255, integer ones are often labels or
                       depth); the message says to save the image as 8 or 16 bits
=====================  =====================================================================

The EXIF orientation of a photograph is applied first (as detectron2's ``read_image`` does), so
the image and its annotation's width/height are those of the picture as shown. A file with several
frames (an animated GIF or PNG, a multi-page TIFF) is read as its first frame with a warning naming
it (once per file and process); MPO files, a camera's photograph followed by its previews or
stereo views, are read as their first frame silently. Missing, truncated, corrupt or oversized
(PIL's decompression-bomb limit) files are an ``ImageReadError`` naming the file.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from .coco import DatasetError

logger = logging.getLogger(__name__)


class ImageReadError(DatasetError):
    """An image file that is missing, cannot be decoded, or holds pixels with no RGB reading."""


def _convert(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _drop_transparency(image: Image.Image) -> Image.Image:
    # Through RGBA: PIL warns when a palette image with transparency goes to RGB directly.
    return image.convert("RGBA").convert("RGB")


def _scale_16_bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.uint32)
    # round(v / 257): 257 is odd, so v / 257 is never halfway and adding 128 before the floor rounds.
    grey = ((values + 128) // 257).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


# PIL mode -> conversion to RGB; modes absent here (and 32-bit I, F) are refused.
_TO_RGB: dict[str, Callable[[Image.Image], Image.Image]] = {
    "RGB": lambda image: image,
    **{mode: _convert for mode in ("1", "L", "LA", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV", "LAB")},
    **{mode: _drop_transparency for mode in ("P", "PA")},
    **{mode: _scale_16_bit for mode in ("I;16", "I;16B", "I;16L", "I;16N")},
}
# Formats whose 16-bit samples PIL opens in 32-bit mode I (already scaled to 0..65535).
_SIXTEEN_BIT_AS_I = ("PPM",)
_SINGLE_PICTURE_FORMATS = ("MPO",)  # further frames are previews of the first, not other pictures
_warned_multi_frame: set[str] = set()


def _converter(image: Image.Image, source: str) -> Callable[[Image.Image], Image.Image]:
    if image.mode == "I" and image.format in _SIXTEEN_BIT_AS_I:
        return _scale_16_bit
    if image.mode in ("I", "F"):
        kind = "integer" if image.mode == "I" else "floating-point"
        raise ImageReadError(f"{source} holds 32-bit {kind} pixels (PIL mode {image.mode}), which have no "
                             "standard brightness range to map to 8-bit colour: save it as an 8-bit or 16-bit "
                             "image (e.g. PNG)")
    if image.mode not in _TO_RGB:
        raise ImageReadError(f"{source} has PIL mode {image.mode}, which this reader does not convert to RGB: "
                             f"save it as RGB or greyscale (readable modes: {', '.join(sorted(_TO_RGB))} and 16-bit "
                             "PGM)")
    return _TO_RGB[image.mode]


def to_rgb(image: Image.Image, source: str = "the image") -> Image.Image:
    """``image`` (any PIL mode, see the module docstring) as an 8-bit RGB image; an
    ``ImageReadError`` whose message starts with ``source`` for the modes refused."""
    return _converter(image, source)(image)


def _warn_multi_frame(image: Image.Image, file_name: str) -> None:
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format not in _SINGLE_PICTURE_FORMATS and file_name not in _warned_multi_frame:
        _warned_multi_frame.add(file_name)
        logger.warning("%s has %d frames (an animation or a multi-page file): reading its first frame only",
                       file_name, frames)


def read_image(file_name: str) -> Image.Image:
    """The RGB image of ``file_name`` (H, W as shown after the EXIF orientation), converted from its
    PIL mode as the module docstring says; an ``ImageReadError`` naming the file and why otherwise."""
    try:
        with Image.open(file_name) as image:
            _warn_multi_frame(image, file_name)
            convert = _converter(image, f"image {file_name}")  # from the file's own mode and format
            return convert(ImageOps.exif_transpose(image))
    except FileNotFoundError:
        raise ImageReadError(f"image {file_name} does not exist") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"image {file_name} is larger than PIL's limit against decompression bombs ({e}); "
                             "raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted") from None
    # PIL reports corrupt data as OSError (truncated files, UnidentifiedImageError) or, from some
    # decoders, SyntaxError / ValueError / EOFError.
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(f"image {file_name} cannot be decoded ({e})") from None


def check_image_size(record: dict, image: Image.Image) -> None:
    """A ``DatasetError`` naming the file, its image id and both sizes when ``image`` (as read,
    after its EXIF orientation) is not the size the record's annotation gives."""
    if (image.height, image.width) != (record["height"], record["width"]):
        raise DatasetError(f"image {record['file_name']} (image id {record.get('image_id')}) is {image.width}x"
                           f"{image.height} (width x height, after its EXIF orientation) but its annotation says "
                           f"{record['width']}x{record['height']}: fix the annotation file's width/height (or the "
                           "image)")
