"""Five-point face alignment equal to insightface's `norm_crop` (`spec/face_eval.md` §3).

IJB-B/C ship loosely cropped faces with five detected landmarks; every published IJB number aligns
them to the ArcFace template with a least-squares similarity (rotation, uniform scale, translation,
no reflection: Umeyama 1991) and one bilinear warp. The fit is implemented here rather than taken from
scikit-image so that the data layer needs only NumPy and OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np

# the ArcFace destination points for a 112 x 112 crop: left eye, right eye, nose tip, mouth corners
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def reference_points(size: int = 112) -> np.ndarray:
    """The 5 x 2 float32 template for a `size` crop: multiples of 112 scale the points, multiples of
    128 scale them by size / 128 and shift x by 8 * size / 128 (insightface's `estimate_norm`)."""
    if size % 112 == 0:
        ratio, shift_x = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio = size / 128.0
        shift_x = 8.0 * ratio
    else:
        raise ValueError(f"alignment size must be a multiple of 112 or 128, got {size}")
    points = ARCFACE_DST * ratio
    points[:, 0] += shift_x
    return points


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2 x 3 float64 least-squares similarity mapping `source` points (K x 2) onto `target` (K x 2).

    Umeyama's estimate with scale, as scikit-image's `SimilarityTransform.estimate` computes it,
    in the dtype of the inputs (float32 for `norm_crop`): with S, D the centred points,
    A = D^T S / K, R = U diag(d) V^T from the SVD of A (d = [1, -1] when det(A) < 0, so no
    reflection), scale = (singular values . d) / total variance of S, t = mean(D) - scale R mean(S).
    A rank-1 A (collinear points) takes scikit-image's special case; a rank-0 A (all points equal)
    has no transform and gives NaN.
    """
    src, dst = np.asarray(source), np.asarray(target)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"source and target must both be K x 2 points, got {src.shape} and {dst.shape}")
    count, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    covariance = dst_centred.T @ src_centred / count
    signs = np.ones(dim, dtype=np.float64)
    if np.linalg.det(covariance) < 0:
        signs[dim - 1] = -1
    transform = np.eye(dim + 1, dtype=np.float64)
    left, singular, right = np.linalg.svd(covariance)
    rank = np.linalg.matrix_rank(covariance)
    if rank == 0:
        return np.full((2, 3), np.nan)
    if rank == dim - 1:
        if np.linalg.det(left) * np.linalg.det(right) > 0:
            transform[:dim, :dim] = left @ right
        else:
            flipped = signs.copy()
            flipped[dim - 1] = -1
            transform[:dim, :dim] = left @ np.diag(flipped) @ right
    else:
        transform[:dim, :dim] = left @ np.diag(signs) @ right
    scale = 1.0 / src_centred.var(axis=0).sum() * (singular @ signs)
    transform[:dim, dim] = dst_mean - scale * (transform[:dim, :dim] @ src_mean.T)
    transform[:dim, :dim] *= scale
    return transform[:2, :]


def alignment_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2 x 3 forward map (image to crop) of five (x, y) landmarks, as `estimate_norm` returns it."""
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    return similarity_transform(points, reference_points(size))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """A `size` x `size` crop of `image` (uint8 H x W x C, any channel order, kept) aligned on five
    landmarks (5 x 2 or 10 values: left eye, right eye, nose, left and right mouth corner, in image
    pixels), equal to insightface's `norm_crop`: bilinear `cv2.warpAffine`, black border."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    if hasattr(landmarks, "detach"):
        landmarks = landmarks.detach().cpu().numpy()
    matrix = alignment_matrix(landmarks, size)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), borderValue=0.0)
