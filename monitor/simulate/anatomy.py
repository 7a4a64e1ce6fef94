"""The anatomy the simulator draws: frontal and lateral chest templates, lesion sites, positioning.

Everything is in normalised MONOCHROME2 brightness (0 black, 1 white) on an ``size`` x ``size``
grid with coordinates in [-1, 1]: ``u`` across (the patient's right on the left of a frontal
image), ``v`` downwards. An :class:`Anatomy` says which template: the frontal (PA/AP) chest of
an adult, the same chest smaller in the field with a relatively larger heart (a child), or a
lateral view (one overlapping lung field, the heart in front, the spine behind). A
:class:`Positioning` moves, rotates and collimates a rendered image (docs/simulate.md, "Content
shifts").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

FloatImage = npt.NDArray[np.float32]
Grid = npt.NDArray[np.float64]

_EDGE: Final = 0.04
"""Width of the soft edge of every anatomical shape, in half-image units."""
_MID_GREY: Final = 0.45
UNEXPOSED: Final = 0.95
"""Brightness of detector area outside the collimated field: no X-rays reach it, so it reads
as dense as bone (before any electronic shuttering)."""


@dataclass(frozen=True, slots=True)
class Anatomy:
    """Which body the template draws.

    ``scale`` shrinks the frontal chest about the image centre (1 = the adult that fills the
    field); ``heart_scale`` widens the heart's radii (a child's cardiothoracic ratio is larger).
    The lateral view ignores both.
    """

    view: Literal["frontal", "lateral"] = "frontal"
    scale: float = 1.0
    heart_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.3 <= self.scale <= 1.0 or not 0.5 <= self.heart_scale <= 2.0:
            raise ValueError("scale must be in [0.3, 1] and heart_scale in [0.5, 2]")


ADULT_FRONTAL: Final = Anatomy()
LATERAL: Final = Anatomy(view="lateral")


@dataclass(frozen=True, slots=True)
class Positioning:
    """A positioning and collimation change: the anatomy moved by (``shift_u``, ``shift_v``)
    half-image units, rotated by ``rotation_deg`` about the centre, and every side collimated
    by ``collimation`` of the image (blank, unexposed borders)."""

    shift_u: float
    shift_v: float
    rotation_deg: float
    collimation: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.collimation < 0.4:
            raise ValueError("collimation must leave an exposed field: [0, 0.4)")


@lru_cache(maxsize=64)
def anatomy_template(contrast: float, size: int, anatomy: Anatomy = ADULT_FRONTAL) -> FloatImage:
    """The noise-free anatomy at ``size`` x ``size`` with tissue contrast ``contrast``.

    Cached because it is the only costly part of rendering and depends on these values alone;
    the array is read-only so no caller can corrupt the cache.
    """
    v, u = _grid(size)
    if anatomy.view == "lateral":
        brightness = _lateral(u, v)
    else:
        brightness = _frontal(u / anatomy.scale, v / anatomy.scale, anatomy.heart_scale)
    template = (_MID_GREY + contrast * (brightness - _MID_GREY)).astype(np.float32)
    template.setflags(write=False)
    return template


def _frontal(u: Grid, v: Grid, heart_scale: float) -> Grid:
    """Body, two lung fields, heart, spine and ribs of a PA/AP chest."""
    body = _ellipse(u, v, 0.0, 0.1, 0.88, 1.05)
    lungs = np.maximum(
        _ellipse(u, v, -0.4, -0.08, 0.27, 0.62), _ellipse(u, v, 0.4, -0.08, 0.29, 0.64)
    )
    heart = _ellipse(u, v, 0.08, 0.32, 0.3 * heart_scale, 0.26 * heart_scale)
    spine = _soft_band(np.abs(u), 0.07) * body
    # Ribs: curved bands that sag towards the sides, visible only over the lungs.
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * (v - 0.3 * u**2) * 5.5)) ** 4 * lungs * (1.0 - heart)
    brightness = 0.04 + 0.56 * body
    brightness -= 0.36 * lungs * (1.0 - heart)
    brightness += 0.12 * heart + 0.15 * spine + 0.09 * ribs
    return brightness


def _lateral(u: Grid, v: Grid) -> Grid:
    """A lateral chest facing left: one field where both lungs overlap, the heart in front and
    below, the spine behind (with vertebrae), the sternum in front, the arms over the apex."""
    body = _ellipse(u, v, 0.02, 0.12, 0.74, 1.05)
    lung = _ellipse(u, v, 0.05, -0.05, 0.5, 0.66)
    heart = _ellipse(u, v, -0.22, 0.38, 0.32, 0.3)
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * v * 7.0)
    spine = _soft_band(np.abs(u - 0.52), 0.09) * body * vertebrae
    sternum = _soft_band(np.abs(u + 0.62), 0.03) * _ellipse(u, v, -0.62, -0.05, 0.2, 0.5)
    arms = _ellipse(u, v, 0.05, -0.78, 0.55, 0.3) * body
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * (v + 0.2 * u) * 5.5)) ** 4 * lung * (1.0 - heart)
    brightness = 0.04 + 0.56 * body
    brightness -= 0.3 * lung * (1.0 - heart)
    brightness += 0.12 * heart + 0.2 * spine + 0.08 * sternum + 0.1 * arms + 0.05 * ribs
    return brightness


@lru_cache(maxsize=16)
def lesion_centres(size: int, anatomy: Anatomy = ADULT_FRONTAL) -> npt.NDArray[np.intp]:
    """(row, col) of every pixel deep inside a lung field and clear of the heart (and, on a
    lateral view, of the spine)."""
    v, u = _grid(size)
    if anatomy.view == "lateral":
        inner = _ellipse(u, v, 0.05, -0.05, 0.4, 0.55)
        heart = _ellipse(u, v, -0.22, 0.38, 0.4, 0.38) + _soft_band(np.abs(u - 0.52), 0.2)
    else:
        u, v = u / anatomy.scale, v / anatomy.scale
        inner = np.maximum(
            _ellipse(u, v, -0.4, -0.08, 0.2, 0.5), _ellipse(u, v, 0.4, -0.08, 0.22, 0.52)
        )
        grown = anatomy.heart_scale
        heart = _ellipse(u, v, 0.08, 0.32, 0.38 * grown, 0.34 * grown)
    centres = np.argwhere((inner > 0.95) & (heart < 0.05))
    centres.setflags(write=False)
    return centres


def reposition(image: FloatImage, positioning: Positioning, background: float) -> FloatImage:
    """``image`` moved and rotated as ``positioning`` says (the uncovered field shows
    ``background``, the air around the patient), then collimated: every side's
    ``collimation`` share set to :data:`UNEXPOSED`."""
    from scipy import ndimage  # the simulator without a positioning change needs no scipy

    size = image.shape[0]
    angle = np.deg2rad(positioning.rotation_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([(size - 1) / 2.0] * 2)
    moved = centre + np.array([positioning.shift_v, positioning.shift_u]) * (size - 1) / 2.0
    # affine_transform maps each output pixel o to the input pixel rotation @ (o - moved) + centre.
    offset = centre - rotation @ moved
    result: FloatImage = np.asarray(
        ndimage.affine_transform(
            image, rotation, offset=offset, order=1, mode="constant", cval=background
        ),
        dtype=np.float32,
    )
    border = round(positioning.collimation * size)
    if border:
        result[:border, :] = result[-border:, :] = UNEXPOSED
        result[:, :border] = result[:, -border:] = UNEXPOSED
    return result


def background_brightness(contrast: float) -> float:
    """The template's air brightness for ``contrast`` (what a shifted field uncovers)."""
    return _MID_GREY + contrast * (0.04 - _MID_GREY)


def _grid(size: int) -> tuple[Grid, Grid]:
    """Row (v, downwards) and column (u) coordinates in [-1, 1]."""
    axis = np.linspace(-1.0, 1.0, size)
    return axis[:, None] * np.ones(size), np.ones(size)[:, None] * axis


def _ellipse(u: Grid, v: Grid, cu: float, cv: float, ru: float, rv: float) -> Grid:
    """A filled ellipse with a soft edge: 1 inside, 0 outside."""
    radius = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return _sigmoid((1.0 - radius) / _EDGE)


def _soft_band(distance: Grid, half_width: float) -> Grid:
    return _sigmoid((half_width - distance) / _EDGE)


def _sigmoid(x: Grid) -> Grid:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
