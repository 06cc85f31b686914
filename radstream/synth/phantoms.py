"""Synthetic anatomy on a voxel grid, drawn from the intensity bands of the reference models.

Every structure is an analytic shape rasterised at voxel centres; the ground truth is the
rasterised mask (its voxel count times the voxel volume), and the analytic volume is kept too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from radstream.models.specs import (
    BRAIN_INTENSITY,
    BRAIN_NOISE,
    HIP_LEVEL,
    HIP_NOISE,
    LIVER_HU,
    LIVER_NOISE_HU,
)


@dataclass(frozen=True)
class Grid:
    """An axial volume grid: ``shape`` is (slices, rows, columns); spacing in mm (z, row, col)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def origin(self) -> tuple[float, float, float]:
        """Patient (x, y, z) of the first voxel centre; the volume is centred on the isocentre."""
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        return (-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, -(nz - 1) / 2 * dz)

    def coords(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Patient x, y, z of every voxel centre (broadcastable arrays, LPS)."""
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        ox, oy, oz = self.origin
        z = (oz + np.arange(nz) * dz)[:, None, None]
        y = (oy + np.arange(ny) * dy)[None, :, None]
        x = (ox + np.arange(nx) * dx)[None, None, :]
        return x, y, z

    @property
    def voxel_ml(self) -> float:
        dz, dy, dx = self.spacing
        return dz * dy * dx / 1000.0


def ellipsoid(
    grid: Grid, centre: tuple[float, float, float], radii: tuple[float, float, float]
) -> np.ndarray[Any, Any]:
    x, y, z = grid.coords()
    cx, cy, cz = centre
    rx, ry, rz = radii
    return np.asarray(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0)


def ellipsoid_ml(radii: tuple[float, float, float]) -> float:
    return float(4.0 / 3.0 * np.pi * radii[0] * radii[1] * radii[2] / 1000.0)


def cylinder_z(grid: Grid, centre_xy: tuple[float, float], radius: float) -> np.ndarray[Any, Any]:
    x, y, _z = grid.coords()
    return np.broadcast_to(((x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2) <= radius**2, grid.shape)


@dataclass
class Phantom:
    image: np.ndarray[Any, Any]  # float, modality units
    masks: dict[str, np.ndarray[Any, Any]]
    analytic_ml: dict[str, float]


def brain(grid: Grid, rng: np.random.Generator, lesion_centre: tuple[float, float, float],
          lesion_radii: tuple[float, float, float]) -> Phantom:
    """FLAIR-like head: scalp, brain, ventricles, one hyperintense lesion."""
    nz, _, _ = grid.shape
    extent_z = nz * grid.spacing[0]
    head = ellipsoid(grid, (0, 0, 0), (72, 92, min(70.0, extent_z / 2 - 2)))
    brain_m = ellipsoid(grid, (0, 0, 0), (64, 84, min(62.0, extent_z / 2 - 8)))
    ventricles = ellipsoid(grid, (0, -5, 5), (12, 24, 10)) | ellipsoid(grid, (0, -5, 5), (4, 30, 4))
    lesion = ellipsoid(grid, lesion_centre, lesion_radii) & brain_m & ~ventricles
    img = np.full(grid.shape, BRAIN_INTENSITY["background"], dtype=np.float64)
    img[head] = BRAIN_INTENSITY["scalp"]
    img[brain_m] = BRAIN_INTENSITY["brain"]
    img[ventricles & brain_m] = BRAIN_INTENSITY["csf"]
    img[lesion] = BRAIN_INTENSITY["lesion"]
    img[head] += rng.normal(0.0, BRAIN_NOISE, int(head.sum()))
    return Phantom(np.clip(img, 0, None), {"lesion": lesion}, {"lesion": ellipsoid_ml(lesion_radii)})


def abdomen(grid: Grid, rng: np.random.Generator, scale: float, split_x: float) -> Phantom:
    """Portal-venous-like abdominal CT: body, fat, spine, a two-lobed liver with vessels."""
    x, y, _z = grid.coords()
    body = np.broadcast_to(((x / 170.0) ** 2 + (y / 120.0) ** 2) <= 1.0, grid.shape)
    inner = np.broadcast_to(((x / 155.0) ** 2 + (y / 105.0) ** 2) <= 1.0, grid.shape)
    spine = cylinder_z(grid, (0.0, 70.0), 18.0)
    radii = (95.0 * scale, 75.0 * scale, 80.0 * scale)
    centre = (-45.0, -5.0, 0.0)
    liver = ellipsoid(grid, centre, radii) & inner & ~spine
    vessels = (cylinder_z(grid, (-60.0, 0.0), 9.0) | cylinder_z(grid, (-15.0, -10.0), 7.0)) & liver
    right = liver & ~vessels & np.broadcast_to(x < split_x, grid.shape)
    left = liver & ~vessels & np.broadcast_to(x >= split_x, grid.shape)
    img = np.full(grid.shape, LIVER_HU["air"], dtype=np.float64)
    img[body] = LIVER_HU["fat"]
    img[inner] = LIVER_HU["soft_tissue"]
    img[spine & inner] = LIVER_HU["bone"]
    img[right] = LIVER_HU["right_lobe"]
    img[left] = LIVER_HU["left_lobe"]
    img[vessels] = LIVER_HU["vessels"]
    img += rng.normal(0.0, LIVER_NOISE_HU, grid.shape)
    return Phantom(
        img,
        {"liver right lobe": right, "liver left lobe": left, "hepatic vessels": vessels},
        {"liver": ellipsoid_ml(radii)},
    )


HIP_FINDINGS = ("normal", "fracture", "hardware")


@dataclass
class Radiograph:
    pixels: np.ndarray[Any, Any]  # uint16, 12 bits stored
    boxes: dict[str, list[float]]  # patient side -> [col0, row0, col1, row1] of the hip (proximal femur)


def pelvis_radiograph(rows: int, cols: int, rng: np.random.Generator, findings: dict[str, str],
                      shift: tuple[float, float] = (0.0, 0.0)) -> Radiograph:
    """AP pelvis: iliac wings, two proximal femurs; fracture = a lucent band across the neck,
    hardware = a dense screw/nail through neck and head. Image left = patient right."""
    r = (np.arange(rows)[:, None] + 0.5) / rows - shift[0]  # 0..1 top to bottom
    c = (np.arange(cols)[None, :] + 0.5) / cols - shift[1]
    level = np.full((rows, cols), HIP_LEVEL["soft_tissue"])
    # pelvis: a bowl of two iliac wings joined by the sacrum (kept apart from the femurs)
    outer = ((c - 0.5) / 0.40) ** 2 + ((r - 0.22) / 0.20) ** 2 <= 1.0
    wings = outer & (((c - 0.5) / 0.30) ** 2 + ((r - 0.17) / 0.12) ** 2 > 1.0)
    sacrum = ((c - 0.5) / 0.07) ** 2 + ((r - 0.36) / 0.12) ** 2 <= 1.0
    level[wings | sacrum] = HIP_LEVEL["pelvis"]
    boxes: dict[str, list[float]] = {}
    for side, cx in (("right", 0.34), ("left", 0.66)):
        sign = 1.0 if side == "right" else -1.0  # lateral is -c for the right hip (image left)
        head = ((c - cx) / 0.07) ** 2 + ((r - 0.52) / 0.07) ** 2 <= 1.0
        # neck runs from the head laterally and down to the shaft
        t = ((c - cx) * (-sign) * 0.6 + (r - 0.52) * 0.8)  # along the neck axis
        d = ((c - cx) * 0.8 - (r - 0.52) * (-sign) * 0.6)  # across it
        neck = (t >= 0) & (t <= 0.16) & (np.abs(d) <= 0.035)
        shaft_c = cx - sign * 0.10
        shaft = (np.abs(c - shaft_c) <= 0.045) & (r >= 0.60) & (r <= 0.95)
        femur = head | neck | shaft
        level[femur] = HIP_LEVEL["femur"]
        if findings[side] == "fracture":
            level[neck & (np.abs(t - 0.07) <= 0.012)] = HIP_LEVEL["fracture_line"]
        elif findings[side] == "hardware":
            level[(neck | head) & (np.abs(d) <= 0.012) & (t >= -0.06)] = HIP_LEVEL["metal"]
        rr, cc = np.nonzero(femur)
        boxes[side] = [float(cc.min()), float(rr.min()), float(cc.max() + 1), float(rr.max() + 1)]
    noisy = level + rng.normal(0.0, HIP_NOISE, level.shape)
    pixels = np.clip(np.rint(noisy * 4095.0), 0, 4095).astype(np.uint16)
    return Radiograph(pixels, boxes)
