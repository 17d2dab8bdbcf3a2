import numpy as np
import pytest
from PIL import Image

from sam_prompt_learner.visualization import (
    BACKGROUND_COLOR,
    BOX_COLOR,
    GROUND_TRUTH_COLOR,
    MASK_FILL_OPACITY,
    NEGATIVE_POINT_COLOR,
    POSITIVE_POINT_COLOR,
    PREDICTION_COLOR,
    PredictionExample,
    render_prediction_grid,
    save_prediction_grid,
)

GRAY = (100, 100, 100)
PANEL = 256


def _square(top: int, left: int, side: int, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _flat_example(predictions: dict[str, np.ndarray] | None = None, **prompts) -> PredictionExample:
    """A 32 x 32 flat gray image; ground truth and predictions in the top-right corner, away from the IoU label."""
    ground_truth = _square(2, 18, 10)
    if predictions is None:
        predictions = {"zero-shot": _square(4, 20, 10), "adapted": ground_truth.copy()}
    return PredictionExample(Image.new("RGB", (32, 32), GRAY), ground_truth, predictions, **prompts)


def _header_height(grid: Image.Image, num_rows: int) -> int:
    return grid.height - num_rows * PANEL


def _panel(grid: Image.Image, row: int, column: int, num_rows: int) -> np.ndarray:
    """Pixels `(PANEL, PANEL, 3)` of one panel of the grid."""
    top = _header_height(grid, num_rows) + row * PANEL
    return np.asarray(grid)[top : top + PANEL, column * PANEL : (column + 1) * PANEL]


def _blend(color: tuple[int, int, int]) -> list[int]:
    return np.round((1 - MASK_FILL_OPACITY) * np.array(GRAY) + MASK_FILL_OPACITY * np.array(color)).tolist()


def test_grid_size_is_columns_by_rows_of_panels_under_one_header():
    one_row = render_prediction_grid([_flat_example()], panel_size=PANEL)
    three_rows = render_prediction_grid([_flat_example() for _ in range(3)], panel_size=PANEL)
    assert one_row.mode == "RGB"
    assert one_row.width == three_rows.width == 4 * PANEL  # image + prompt, ground truth, two methods
    header = _header_height(one_row, 1)
    assert header > 0
    assert _header_height(three_rows, 3) == header
    # The header holds the column titles: some text pixels over each column.
    header_pixels = np.asarray(three_rows)[:header]
    for column in range(4):
        assert (header_pixels[:, column * PANEL : (column + 1) * PANEL] != BACKGROUND_COLOR).any()


def test_overlays_fill_the_mask_outline_it_and_leave_the_rest_of_the_image():
    grid = render_prediction_grid([_flat_example()], panel_size=PANEL)  # 32 px image at 8x
    scale = PANEL // 32
    prompt, ground_truth, zero_shot = (_panel(grid, 0, column, 1) for column in range(3))
    # Prompt panel: the image unchanged (nothing drawn without prompts), enlarged without blurring.
    assert (prompt[2:-2, 2:-2] == GRAY).all()
    # Ground truth `[2:12, 18:28]`: pink fill inside, opaque pink contour on its first row, image colour outside.
    inside, outside = (7 * scale, 23 * scale), (20 * scale, 23 * scale)  # (y, x)
    assert ground_truth[inside].tolist() == _blend(GROUND_TRUTH_COLOR)
    assert ground_truth[2 * scale, 23 * scale].tolist() == list(GROUND_TRUTH_COLOR)
    assert ground_truth[2 * scale - 1, 23 * scale].tolist() == list(GRAY)
    assert ground_truth[outside].tolist() == list(GRAY)
    # Zero-shot prediction `[4:14, 20:30]`: cyan fill inside, image colour outside (where the ground truth is).
    assert zero_shot[9 * scale, 25 * scale].tolist() == _blend(PREDICTION_COLOR)
    assert zero_shot[3 * scale, 19 * scale].tolist() == list(GRAY)
    assert zero_shot[outside].tolist() == list(GRAY)


def test_nearest_upscaling_keeps_every_image_pixel_a_sharp_square():
    checkerboard = ((np.indices((16, 16)).sum(0) % 2) * 255).astype(np.uint8)
    image = Image.fromarray(checkerboard).convert("RGB")
    empty = np.zeros((16, 16), dtype=bool)
    grid = render_prediction_grid([PredictionExample(image, empty, {"method": empty})], panel_size=PANEL)
    prompt = _panel(grid, 0, 0, 1)[..., 0]  # (PANEL, PANEL); away from the separators at the panel edges
    expected = np.kron(checkerboard, np.ones((16, 16), dtype=np.uint8))
    np.testing.assert_array_equal(prompt[2:-2, 2:-2], expected[2:-2, 2:-2])


def test_points_and_box_are_drawn_at_their_scaled_places():
    points = np.array([[20.0, 8.0], [5.0, 25.0], [10.0, 10.0]])  # x, y pixel indices
    labels = np.array([1, 0, -10])  # positive, negative, padding
    box = np.array([3.0, 16.0, 12.0, 29.0])
    example = _flat_example(points=points, point_labels=labels, box=box)
    prompt = _panel(render_prediction_grid([example], panel_size=PANEL), 0, 0, 1)
    scale = PANEL // 32

    def center(x: float, y: float) -> tuple[int, int]:  # (row, column) in the panel: the pixel's centre
        return int((y + 0.5) * scale), int((x + 0.5) * scale)

    positive_y, positive_x = center(20, 8)
    # Off the white + of the marker, inside its disc; and the disc is not larger than a few pixels.
    assert prompt[positive_y + 2, positive_x + 2].tolist() == list(POSITIVE_POINT_COLOR)
    assert prompt[positive_y - 2, positive_x - 2].tolist() == list(POSITIVE_POINT_COLOR)
    assert prompt[positive_y + 12, positive_x + 12].tolist() == list(GRAY)
    # x and y swapped would be a classic bug: nothing is drawn there.
    swapped_y, swapped_x = center(8, 20)
    assert prompt[swapped_y + 2, swapped_x + 2].tolist() == list(GRAY)
    negative_y, negative_x = center(5, 25)
    assert prompt[negative_y + 2, negative_x + 2].tolist() == list(NEGATIVE_POINT_COLOR)
    padding_y, padding_x = center(10, 10)
    assert prompt[padding_y + 2, padding_x + 2].tolist() == list(GRAY)
    # The box runs along the outer edges of its corner pixels (inclusive indices): x from 3*8 to 13*8 - 1.
    assert prompt[20 * scale, 3 * scale].tolist() == list(BOX_COLOR)
    assert prompt[20 * scale, 13 * scale - 1].tolist() == list(BOX_COLOR)
    assert prompt[16 * scale, 8 * scale].tolist() == list(BOX_COLOR)
    assert prompt[20 * scale, 3 * scale - 1].tolist() == list(GRAY)
    assert prompt[20 * scale, 8 * scale].tolist() == list(GRAY)  # inside the box


def test_non_square_image_is_letterboxed_and_prompts_follow_it():
    # 64 wide x 32 high at 4x: 256 x 128, centred vertically with 64-pixel bars above and below.
    image = Image.new("RGB", (64, 32), GRAY)
    mask = np.zeros((32, 64), dtype=bool)
    mask[10:20, 40:60] = True
    example = PredictionExample(image, mask, {"method": mask}, points=np.array([[8.0, 4.0]]), point_labels=[1])
    grid = render_prediction_grid([example], panel_size=PANEL)
    prompt, ground_truth = _panel(grid, 0, 0, 1), _panel(grid, 0, 1, 1)
    assert (prompt[2:64, 2:-2] == BACKGROUND_COLOR).all()
    assert (prompt[192:-2, 2:-2] == BACKGROUND_COLOR).all()
    assert (prompt[64:192, 2:-2] != BACKGROUND_COLOR).any()
    assert prompt[64 + int(4.5 * 4) + 2, int(8.5 * 4) + 2].tolist() == list(POSITIVE_POINT_COLOR)
    assert ground_truth[64 + 15 * 4, 50 * 4].tolist() == _blend(GROUND_TRUTH_COLOR)
    assert ground_truth[64 + 25 * 4, 50 * 4].tolist() == list(GRAY)


def test_method_panels_differ_only_by_their_mask_and_iou_label():
    same = _flat_example({"a": _square(4, 20, 10), "b": _square(4, 20, 10)})
    grid = render_prediction_grid([same], panel_size=PANEL)
    np.testing.assert_array_equal(_panel(grid, 0, 2, 1)[:, 2:-2], _panel(grid, 0, 3, 1)[:, 2:-2])

    different = _flat_example({"a": _square(4, 20, 10), "b": _square(4, 22, 10)})
    grid = render_prediction_grid([different], panel_size=PANEL)
    assert (_panel(grid, 0, 2, 1) != _panel(grid, 0, 3, 1)).any()

    # Same prediction, different ground truth (so different IoU): only the IoU label in the bottom-left changes.
    prediction = _square(4, 20, 10)
    rows = [
        PredictionExample(Image.new("RGB", (32, 32), GRAY), ground_truth, {"method": prediction})
        for ground_truth in (_square(4, 20, 10), _square(6, 22, 10))
    ]
    grid = render_prediction_grid(rows, panel_size=PANEL)
    # The separators cover the panels' edge pixels differently in the first and last rows.
    changed = (_panel(grid, 0, 2, 2) != _panel(grid, 1, 2, 2))[2:-2, 2:-2].any(-1)  # (PANEL - 4, PANEL - 4)
    assert changed.any()
    changed_rows, changed_columns = np.nonzero(changed)
    assert changed_rows.min() > PANEL * 3 // 4 and changed_columns.max() < PANEL // 2


def test_title_is_drawn_in_the_prompt_panel():
    untitled = _panel(render_prediction_grid([_flat_example()], panel_size=PANEL), 0, 0, 1)
    titled_example = _flat_example()
    titled_example.title = "sample-7"
    titled = _panel(render_prediction_grid([titled_example], panel_size=PANEL), 0, 0, 1)
    changed_rows, _ = np.nonzero((untitled != titled).any(-1))
    assert changed_rows.size > 0 and changed_rows.max() < PANEL // 4


def test_save_writes_a_png_and_creates_folders(tmp_path):
    examples = [_flat_example()]
    path = save_prediction_grid(tmp_path / "figures" / "epoch-1" / "grid.png", examples, panel_size=PANEL)
    assert path == tmp_path / "figures" / "epoch-1" / "grid.png"
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(render_prediction_grid(examples, PANEL)))


def test_invalid_input_raises_a_value_error_naming_the_example():
    with pytest.raises(ValueError, match="No examples"):
        render_prediction_grid([])
    with pytest.raises(ValueError, match="panel_size"):
        render_prediction_grid([_flat_example()], panel_size=16)

    wrong_shape = _flat_example({"zero-shot": np.zeros((16, 32), bool), "adapted": np.zeros((32, 32), bool)})
    wrong_shape.title = "img-42"
    with pytest.raises(ValueError, match=r"examples\[1\] \('img-42'\) prediction 'zero-shot' has shape \(16, 32\)"):
        render_prediction_grid([_flat_example(), wrong_shape])

    wrong_ground_truth = _flat_example()
    wrong_ground_truth.ground_truth = np.zeros((32, 31), bool)
    with pytest.raises(ValueError, match=r"examples\[0\] ground_truth has shape"):
        render_prediction_grid([wrong_ground_truth])

    renamed = _flat_example({"adapted": _square(4, 20, 10), "zero-shot": _square(4, 20, 10)})
    with pytest.raises(ValueError, match=r"examples\[1\] has methods \['adapted', 'zero-shot'\]"):
        render_prediction_grid([_flat_example(), renamed])

    logits = _flat_example({"zero-shot": np.full((32, 32), 0.7), "adapted": _square(4, 20, 10)})
    with pytest.raises(ValueError, match="not binary"):
        render_prediction_grid([logits])

    with pytest.raises(ValueError, match="points and point_labels must be given together"):
        render_prediction_grid([_flat_example(points=np.array([[1.0, 2.0]]))])
    with pytest.raises(ValueError, match="points must have shape"):
        render_prediction_grid([_flat_example(points=np.array([1.0, 2.0]), point_labels=np.array([1]))])
    with pytest.raises(ValueError, match="box must have shape"):
        render_prediction_grid([_flat_example(box=np.array([1.0, 2.0, 3.0]))])
    with pytest.raises(ValueError, match="PIL image"):
        render_prediction_grid([PredictionExample(np.zeros((32, 32, 3)), _square(2, 2, 4), {})])
