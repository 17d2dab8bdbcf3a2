"""Prompt simulation: property tests for points and boxes, placements, and deterministic evaluation prompts."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from sam_prompt_learner.data import ObjectPrompts, PromptConfig, mask_to_box, prompt_rng, sample_object_prompts


@st.composite
def masks(draw) -> np.ndarray:
    """A non-empty mask: a union of 1-3 rectangles, sometimes touching the image border."""
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(draw(st.integers(1, 3))):
        top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        bottom, right = draw(st.integers(top + 1, height)), draw(st.integers(left + 1, width))
        mask[top:bottom, left:right] = True
    return mask


prompt_configs = st.builds(
    PromptConfig,
    num_positive_points=st.tuples(st.integers(1, 3), st.integers(3, 6)),
    num_negative_points=st.tuples(st.integers(0, 2), st.integers(2, 4)),
    point_placement=st.sampled_from(["uniform", "interior", "edge"]),
    edge_width=st.floats(0.01, 0.5),
    negative_margin=st.floats(0.01, 0.5),
    box_jitter=st.floats(0.0, 0.5),
)


@settings(max_examples=150, deadline=None)
@given(mask=masks(), config=prompt_configs, seed=st.integers(0, 2**32 - 1))
def test_prompt_properties(mask, config, seed):
    prompts = sample_object_prompts(mask, config, np.random.default_rng(seed))
    height, width = mask.shape
    positives = prompts.points[prompts.labels == 1].astype(int)
    negatives = prompts.points[prompts.labels == 0].astype(int)
    # Integer pixel indices, positives first.
    np.testing.assert_array_equal(prompts.points, np.round(prompts.points))
    assert (np.diff(prompts.labels) <= 0).all()

    # Every positive point lies inside its mask, and their number is in range.
    assert config.num_positive_points[0] <= len(positives) <= config.num_positive_points[1]
    assert mask[positives[:, 1], positives[:, 0]].all()
    if config.point_placement == "edge":
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        band = max(1.0, config.edge_width * np.sqrt(mask.sum()))
        assert (distance[positives[:, 1], positives[:, 0]] <= band).all()

    # Every negative point lies outside the mask, within the margin; at most the number asked for.
    assert len(negatives) <= config.num_negative_points[1]
    if len(negatives):
        assert ((negatives >= 0) & (negatives < [width, height])).all()
        assert not mask[negatives[:, 1], negatives[:, 0]].any()
        distance_to_mask = ndimage.distance_transform_edt(~mask)
        margin = max(1.0, config.negative_margin * np.sqrt(mask.sum()))
        assert (distance_to_mask[negatives[:, 1], negatives[:, 0]] <= margin).all()

    # The box lies in the image, is ordered, and contains the mask up to the jitter bound.
    x_min, y_min, x_max, y_max = mask_to_box(mask)
    box_width, box_height = x_max - x_min + 1, y_max - y_min + 1
    bound = config.box_jitter * np.array([box_width, box_height, box_width, box_height]) + 1e-9
    box = prompts.box
    assert 0 <= box[0] <= box[2] <= width - 1 and 0 <= box[1] <= box[3] <= height - 1
    assert (np.abs(box - [x_min, y_min, x_max, y_max]) <= bound).all()


def test_box_without_jitter_is_tight():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    box = sample_object_prompts(mask, PromptConfig(), np.random.default_rng(0)).box
    np.testing.assert_array_equal(box, [3, 2, 8, 4])


def test_no_negatives_when_the_mask_fills_its_surroundings():
    prompts = sample_object_prompts(
        np.ones((6, 6), dtype=bool), PromptConfig(num_negative_points=(3, 3)), np.random.default_rng(0)
    )
    assert prompts.labels.tolist() == [1]


def test_interior_placement_is_farther_from_the_edge_than_edge_placement():
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:56, 8:56] = True
    distance = ndimage.distance_transform_edt(mask)

    def mean_distance(placement):
        config = PromptConfig(num_positive_points=(20, 20), point_placement=placement, edge_width=0.05)
        points = sample_object_prompts(mask, config, np.random.default_rng(0)).points.astype(int)
        return distance[points[:, 1], points[:, 0]].mean()

    # Uniform on a 48 px square: mean distance 8.5; edge band 0.05 * 48 = 2.4 px; interior weighted by distance.
    assert mean_distance("edge") <= 2.4 < mean_distance("uniform") < mean_distance("interior")


def test_evaluation_prompts_depend_only_on_seed_sample_and_object():
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:20, 6:28] = True
    config = PromptConfig(num_positive_points=(1, 4), num_negative_points=(0, 2), box_jitter=0.2)

    def prompts(sample_id, object_index, seed=0) -> ObjectPrompts:
        return sample_object_prompts(mask, config, prompt_rng(sample_id, object_index, seed))

    first, again = prompts("img-7", 2), prompts("img-7", 2)
    for field in ObjectPrompts._fields:
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    for other in (prompts("img-8", 2), prompts("img-7", 3), prompts("img-7", 2, seed=1)):
        assert not np.array_equal(first.box, other.box)
    # Stable across processes and Python versions (no salted hash): a value recorded once.
    assert prompt_rng("img-7", 2, 0).integers(0, 1_000_000, size=3).tolist() == [426441, 387507, 575038]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode_weights": {"clicks": 1.0}}, "Unknown prompt modes"),
        ({"mode_weights": {"points": 0.0}}, "positive sum"),
        ({"num_positive_points": (0, 2)}, "num_positive_points"),
        ({"num_negative_points": (3, 1)}, "num_negative_points"),
        ({"point_placement": "center"}, "point_placement"),
        ({"box_jitter": -0.1}, "box_jitter"),
    ],
)
def test_prompt_config_validation(options, message):
    with pytest.raises(ValueError, match=message):
        PromptConfig(**options)


def test_evaluation_mode_needs_one_mode():
    assert PromptConfig(mode_weights={"box": 1.0, "points": 0.0}).evaluation_mode == "box"
    with pytest.raises(ValueError, match="one prompt mode"):
        PromptConfig(mode_weights={"box": 1.0, "points": 1.0}).evaluation_mode  # noqa: B018


def test_sample_mode_follows_weights():
    config = PromptConfig(mode_weights={"points": 3.0, "box": 1.0, "points_and_box": 0.0})
    rng = np.random.default_rng(0)
    modes = [config.sample_mode(rng) for _ in range(2000)]
    assert "points_and_box" not in modes
    assert 0.7 < modes.count("points") / len(modes) < 0.8
