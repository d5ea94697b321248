"""Demo pictures a person can read (issue 31, finding 8): tiny images enlarged for display, line width and
TrueType labels scaled with the picture, masks filled and outlined."""
import torch
from PIL import ImageColor

from ifr.visualization import draw_instances
from ifr.visualization.draw import PALETTE, display_scale, font_size, line_width

BLUE = torch.tensor(ImageColor.getrgb(PALETTE[0]), dtype=torch.uint8)


def _one_square(height, width, box):
    x0, y0, x1, y1 = box
    masks = torch.zeros(1, height, width, dtype=torch.bool)
    masks[0, y0:y1, x0:x1] = True
    return {"boxes": torch.tensor([box], dtype=torch.float32), "scores": torch.tensor([0.9]),
            "classes": torch.tensor([0]), "masks": masks}


def _label_rows(drawn, box, size):
    """Rows above a box's top edge (and its line) where the label's colour box shows, in the label's columns."""
    band = drawn[:, :box[1] - size // 4, box[0]:box[0] + 4 * size]
    return int((band == BLUE[:, None, None]).all(dim=0).any(dim=1).sum())


def test_a_tiny_image_is_enlarged_by_a_whole_factor_with_its_pixels_repeated():
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    drawn = draw_instances(image, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "classes": torch.zeros(0)})
    assert display_scale(64, 96) == 8 and drawn.shape == (3, 512, 768)
    assert torch.equal(drawn[:, ::8, ::8], image)
    big = torch.zeros(3, 600, 800, dtype=torch.uint8)
    assert draw_instances(big, _one_square(600, 800, (100, 200, 300, 400))).shape == big.shape


def test_labels_and_lines_grow_with_the_picture():
    heights = {}
    for side in (500, 2000):
        box = (side // 5, side // 2, side // 2, side * 4 // 5)
        size = font_size(side, side)
        drawn = draw_instances(torch.full((3, side, side), 255, dtype=torch.uint8), _one_square(side, side, box))
        heights[side] = _label_rows(drawn, box, size)
        # the label's text: white pixels on the colour box, over several rows
        label = drawn[:, box[1] - heights[side] - size // 4:box[1] - size // 4, box[0]:box[0] + 4 * size]
        assert heights[side] >= size * 3 // 4 and (label == 255).all(dim=0).any(dim=1).sum() > size // 3
    assert heights[2000] > 3 * heights[500]
    assert line_width(2000, 2000) > line_width(500, 500) and font_size(2000, 2000) > font_size(500, 500)


def test_masks_are_filled_and_outlined_in_their_class_colour():
    side = 600
    drawn = draw_instances(torch.full((3, side, side), 255, dtype=torch.uint8), _one_square(side, side, (100, 100, 400, 400)),
                           mask_alpha=0.4)
    assert torch.equal(drawn[:, 250, 100 + 1], BLUE)  # outline: the colour itself
    inside = drawn[:, 250, 250].float()  # the fill: blended with the white picture
    assert torch.allclose(inside, 0.4 * BLUE.float() + 0.6 * 255, atol=1.5)
