"""Five-point alignment against hand-computed similarity transforms and exact-pixel warps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.align import ARCFACE_DST, align_face, alignment_matrix, reference_points, similarity_transform

# the ArcFace template as the spec writes it (spec/face_eval.md §3)
SPEC_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]])


def rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def test_reference_points_for_112_multiples_and_128_multiples():
    np.testing.assert_allclose(reference_points(112), SPEC_DST, atol=1e-4)
    np.testing.assert_allclose(reference_points(224), 2 * SPEC_DST, atol=1e-4)
    shifted = SPEC_DST.copy()
    shifted[:, 0] += 8
    np.testing.assert_allclose(reference_points(128), shifted, atol=1e-4)
    np.testing.assert_allclose(reference_points(256), 2 * shifted, atol=1e-4)  # 256 % 112 != 0: the 128 rule
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        reference_points(100)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-9), (np.float32, 2e-4)])
def test_similarity_recovers_a_known_rotation_scale_and_shift(dtype, tolerance):
    # target = scale * R @ source + shift, exactly: the least-squares fit must give back scale * R | shift
    scale, angle, shift = 1.7, 0.3, np.array([5.0, -3.0])
    target = SPEC_DST
    source = (target - shift) @ rotation(angle) / scale  # rows: R^T (target - shift) / scale
    matrix = similarity_transform(source.astype(dtype), target.astype(dtype))
    np.testing.assert_allclose(matrix[:, :2], scale * rotation(angle), atol=tolerance)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=tolerance * 50)


def test_similarity_is_the_least_squares_fit_without_reflection():
    # a mirrored square cannot be matched by a rotation: A = diag(-1, 1), d = [1, -1], scale = (1 - 1) / 2 = 0,
    # so every point maps to the target centre
    square = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    mirrored = square * [-1.0, 1.0] + [3.0, 4.0]
    matrix = similarity_transform(square, mirrored)
    np.testing.assert_allclose(matrix, [[0, 0, 3], [0, 0, 4]], atol=1e-12)


def test_collinear_points_take_the_rank_one_branch():
    # points on the x axis mapped onto the y axis at twice the spacing: 90 degrees, scale 2, no shift
    source = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    target = np.array([[0.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    np.testing.assert_allclose(similarity_transform(source, target), [[0, -2, 0], [2, 0, 0]], atol=1e-12)


def test_equal_points_have_no_transform():
    assert np.isnan(similarity_transform(np.ones((5, 2)), SPEC_DST)).all()


def test_alignment_matrix_of_shifted_template_is_a_translation():
    matrix = alignment_matrix(SPEC_DST + [10.0, 20.0])
    np.testing.assert_allclose(matrix, [[1, 0, -10], [0, 1, -20]], atol=1e-4)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (260, 250, 3), dtype=np.uint8)


def test_integer_shift_crops_exact_pixels(image):
    crop = align_face(image, ARCFACE_DST + np.float32([10, 20]))
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, image[20:132, 10:122])


def test_half_scale_samples_every_second_pixel(image):
    # landmarks at twice the template: the crop pixel (x, y) is the image pixel (2x, 2y), no interpolation
    crop = align_face(image, 2 * ARCFACE_DST)
    np.testing.assert_array_equal(crop, image[0:224:2, 0:224:2])


def test_128_crop_uses_the_shifted_template_and_black_border(image):
    crop = align_face(image, reference_points(128) + np.float32([-5, 0]), size=128)
    assert crop.shape == (128, 128, 3)
    np.testing.assert_array_equal(crop[:, 5:], image[:128, :123])
    assert (crop[:, :5] == 0).all()  # outside the image: BORDER_CONSTANT 0


def test_channels_kept_and_tensors_accepted(image):
    landmarks = ARCFACE_DST + np.float32([10, 20])
    swapped = align_face(image[:, :, ::-1].copy(), landmarks)
    np.testing.assert_array_equal(swapped, image[20:132, 10:122, ::-1])
    from_tensor = align_face(torch.from_numpy(image), torch.from_numpy(landmarks.reshape(-1)))
    np.testing.assert_array_equal(from_tensor, image[20:132, 10:122])
