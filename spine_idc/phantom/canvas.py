"""The canvas the phantom is painted on: a canonical raster (``[z, y, x]``, LPS axes ascending)
with the signed distance fields of the bone drawn so far, and smooth texture for soft tissue.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .anatomy import _Part
from .spec import Tissue


@dataclasses.dataclass
class _Canvas:
    """The canonical raster (``[z, y, x]``, LPS axes ascending) and the running SDF fields."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    delta: float  # partial-volume width of a surface: the in-plane voxel size
    hu: np.ndarray = None
    tis: np.ndarray = None
    dvert: np.ndarray = None  # SDF of vertebral bone drawn so far (min over levels)
    owner: np.ndarray = None  # level index (0-24) owning dvert; 255 where none
    dother: np.ndarray = None  # SDF of unlabelled bone (ribs, sternum, ilium)
    boost: np.ndarray = None  # extra HU of dense (sclerotic) marrow under the endplates

    def __post_init__(self):
        shape = (len(self.z), len(self.y), len(self.x))
        self.hu = np.empty(shape, np.float32)
        self.tis = np.zeros(shape, np.uint8)
        self.dvert = np.full(shape, 1e3, np.float32)
        self.owner = np.full(shape, 255, np.uint8)
        self.dother = np.full(shape, 1e3, np.float32)

    def window(self, lo, hi):
        """Index slices of the voxels inside the world box ``[lo, hi]``; None if empty."""
        out = []
        for axis, a, b in ((self.z, lo[2], hi[2]), (self.y, lo[1], hi[1]), (self.x, lo[0], hi[0])):
            step = axis[1] - axis[0] if len(axis) > 1 else 1.0
            i0 = max(0, math.ceil((a - axis[0]) / step))
            i1 = min(len(axis), math.floor((b - axis[0]) / step) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def coords(self, sl):
        return (self.z[sl[0]].astype(np.float32)[:, None, None],
                self.y[sl[1]].astype(np.float32)[None, :, None],
                self.x[sl[2]].astype(np.float32)[None, None, :])

    def local(self, part: _Part, lo, hi):
        """Window around a local box of ``part`` and the local (u, v, w) coordinates in it."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        world = part.c + corners @ part.R.T
        sl = self.window(world.min(0), world.max(0))
        if sl is None:
            return None, (None, None, None)
        Z, Y, X = self.coords(sl)
        d = (X - float(part.c[0]), Y - float(part.c[1]), Z - float(part.c[2]))
        R = part.R
        return sl, tuple(float(R[0, i]) * d[0] + float(R[1, i]) * d[1] + float(R[2, i]) * d[2]
                         for i in range(3))

    def blend(self, sl, d, value, code: Tissue):
        """Paint soft tissue ``value`` where ``d < 0``, mixing within ``delta`` of the surface."""
        f = np.clip(0.5 - d / self.delta, 0, 1)
        h = self.hu[sl]
        h += f * (value - h)
        self.tis[sl][d < 0] = code

    def merge(self, field: np.ndarray, sl, d, gap: float, owner: int | None = None):
        """Union ``d`` into an SDF field, kept ``gap`` mm away from vertebral bone drawn so far."""
        dv = self.dvert[sl]
        if owner is None:
            d = np.maximum(d, gap - dv)
        else:  # a bone never keeps a gap to itself (sacral segments fuse)
            d = np.where(self.owner[sl] != owner, np.maximum(d, gap - dv), d)
        old = field[sl]
        better = d < old
        old[better] = d[better]
        if owner is not None:
            self.owner[sl][better] = owner


class _Texture:
    """Smooth Gaussian random fields (unit variance, blobs of ~2 cm), evaluated slice by slice.

    Separable Gaussian interpolation of white noise on a 12 mm lattice: a slice costs two small
    matrix products instead of a full-volume filter.
    """

    def __init__(self, cv: _Canvas, seed: int, fields: int, cell: float = 12.0, sigma: float = 9.0):
        def kernel(coords):
            centres = np.arange(coords[0] - 3 * cell, coords[-1] + 4 * cell, cell)
            k = np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / sigma) ** 2)
            k[k < 1e-4] = 0  # denormal float32 weights would make every product crawl
            return (k / np.sqrt((k ** 2).sum(1, keepdims=True))).astype(np.float32)

        self.kx, self.ky, self.kz = kernel(cv.x), kernel(cv.y), kernel(cv.z)
        shape = (fields, self.kz.shape[1], self.ky.shape[1], self.kx.shape[1])
        self.g = np.random.default_rng([seed, 3]).standard_normal(shape, dtype=np.float32)

    def slice(self, field: int, k: int) -> np.ndarray:
        coarse = np.tensordot(self.kz[k], self.g[field], axes=(0, 0))
        return self.ky @ coarse @ self.kx.T
