"""The built-in demo domains: procedural street scenes, a "synthetic" source and a "real" target.

Both domains draw their scenes from one distribution (sky, skyline of buildings and trees, a road
to a vanishing point with sidewalks, verges, fences, and objects scaled by depth: cars, persons,
poles with signs and lights, occasionally trucks, buses, riders, bicycles and motorcycles), so
shapes and layout transfer. Only the look differs:

* source, GTA5 layout (``gta/images``, ``gta/labels`` as palette PNGs of Cityscapes ids), 320x180:
  flat saturated colours per class and instance, mild gradients, sharp edges, clear blue sky;
* target, Cityscapes layout (``cityscapes/leftImg8bit``, ``gtFine/*_labelIds``), 256x128:
  other, desaturated colours, texture, haze, side lighting and vignette, a colour cast, blur,
  sensor noise, a paler cloudy sky and the ego-vehicle's bonnet (ignored in evaluation).

Every file is a pure function of ``(seed, domain, split, index)``, so the same seed gives the same
bytes whatever the number of workers.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cluda_deploy.data import layout
from cluda_deploy.data.io import write_image_png, write_json, write_label_png
from cluda_deploy.data.prepare import prepare_dataset

DEMO_VERSION = 2  # bump when the look or the geometry changes: old sets then regenerate
SOURCE_SIZE = (180, 320)  # (h, w), GTA5-like 16:9
TARGET_SIZE = (128, 256)  # (h, w), Cityscapes-like 2:1
DEMO_CITY = "democity"
# Scenes are laid out in [0, 1] image coordinates; object heights assume this width/height ratio.
ASPECT = 2.0
_SUBPIXEL_BITS = 4  # cv2 drawing precision: coordinates in 1/16 pixel

# Cityscapes label ids drawn by the generator (research/data.md section 2).
EGO_VEHICLE, ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = 1, 7, 8, 11, 12, 13, 17
TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 32, 33

# Materials: what a surface looks like; each domain paints them its own way.
(SKY_M, FACADE, ROAD_M, LANE, SIDEWALK_M, FOLIAGE, TRUNK, GRASS, PAINT, GLASS, TIRE, CLOTH, SKIN,
 METAL, SIGN_FACE, LAMP_BOX, LAMP, FENCE_M, WALL_M, SHADOW, HOOD) = range(21)  # fmt: skip
N_MATERIALS = 21
# Materials whose colour comes from the part's own (hue, saturation, value).
PAINTED = (FACADE, PAINT, CLOTH, SIGN_FACE, LAMP)

# Source ("game") colour of the materials that are not painted per instance.
_SOURCE_COLOURS = {
    ROAD_M: (84, 80, 96), LANE: (250, 250, 250), SIDEWALK_M: (214, 164, 196),
    FOLIAGE: (36, 182, 46), TRUNK: (128, 74, 30), GRASS: (176, 220, 76), GLASS: (96, 170, 235),
    TIRE: (22, 22, 22), SKIN: (250, 204, 160), METAL: (176, 178, 196), LAMP_BOX: (40, 40, 46),
    FENCE_M: (214, 136, 56), WALL_M: (230, 216, 166), SHADOW: (58, 56, 70), HOOD: (30, 30, 30),
}  # fmt: skip
SOURCE_WINDOW = (110, 200, 250)


@dataclass(frozen=True)
class TargetLook:
    """How the "real" target departs from the source look; (low, high) ranges are drawn per image.

    Colours: the source colour's chroma is rotated about the grey axis by ``hue_deg``, scaled by
    ``saturation`` and the result by ``gain``; glass and windows turn dark, the sky paler and cloudy.
    Then texture per material, haze at the horizon, side light, vignette, a colour cast, gamma,
    blur and sensor noise.
    """

    hue_deg: tuple[float, float] = (5.0, 15.0)
    saturation: tuple[float, float] = (0.6, 0.85)
    gain: tuple[float, float] = (0.8, 1.0)
    window: tuple[int, int, int] = (70, 88, 108)
    sky_top: tuple[int, int, int] = (80, 130, 200)
    sky_horizon: tuple[int, int, int] = (190, 205, 225)
    texture: tuple[tuple[int, float], ...] = (
        (FOLIAGE, 0.28), (GRASS, 0.2), (ROAD_M, 0.08), (SIDEWALK_M, 0.1), (FACADE, 0.08),
        (WALL_M, 0.1), (TRUNK, 0.14), (FENCE_M, 0.07), (PAINT, 0.04),
    )  # fmt: skip
    haze: tuple[float, float] = (0.1, 0.25)
    side_light: tuple[float, float] = (0.1, 0.25)
    vignette: float = 0.3
    red_cast: tuple[float, float] = (0.97, 1.08)
    blue_cast: tuple[float, float] = (0.88, 0.98)
    gamma: tuple[float, float] = (0.9, 1.1)
    blur_sigma: tuple[float, float] = (0.4, 0.8)
    noise_std: tuple[float, float] = (2.0, 5.0)


TARGET_LOOK = TargetLook()


# --------------------------------------------------------------------------- scene description


@dataclass
class Shape:
    """One filled shape in [0, 1] image coordinates (x right, y down)."""

    kind: str  # poly | ellipse | ring | line
    # poly: ((x, y), ...); ellipse: (cx, cy, rx, ry); ring: (cx, cy, r, width);
    # line: (x0, y0, x1, y1, width)
    points: tuple
    label: int  # Cityscapes label id
    material: int
    hsv: tuple[float, float, float] = (0.0, 0.0, 0.0)  # colour of painted materials
    # facade windows: (period x, period y, fill x, fill y, origin x, origin y); fence: (post period,)
    pattern: tuple[float, ...] = ()


@dataclass
class Scene:
    horizon: float
    shapes: list[Shape] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.shapes.append(Shape(*args, **kwargs))


def _rect(x0: float, y0: float, x1: float, y1: float) -> tuple:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


class _Street:
    """Road geometry: lines from the vanishing point to the bottom edge; depth t in (0, 1]."""

    def __init__(self, rng: np.random.Generator):
        self.horizon = rng.uniform(0.36, 0.48)
        self.vx = rng.uniform(0.38, 0.62)
        self.road = (rng.uniform(-0.3, 0.12), rng.uniform(0.88, 1.3))
        self.walk = (self.road[0] - rng.uniform(0.18, 0.4), self.road[1] + rng.uniform(0.18, 0.4))

    def y(self, t: float) -> float:
        return self.horizon + (1 - self.horizon) * t

    def x(self, bottom_x: float, t: float) -> float:
        """x at depth t of the line from the vanishing point to (bottom_x, 1)."""
        return self.vx + (bottom_x - self.vx) * t

    def wedge(self, x_a: float, x_b: float, t0: float = 0.0) -> tuple:
        """Ground region between two lines through the vanishing point, from depth t0 down."""
        return (
            (self.x(x_a, t0), self.y(t0)), (self.x(x_b, t0), self.y(t0)),
            (self.x(x_b, 1.3), self.y(1.3)), (self.x(x_a, 1.3), self.y(1.3)),
        )  # fmt: skip


def _random_hsv(rng: np.random.Generator) -> tuple[float, float, float]:
    return (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))


def _skyline(scene: Scene, street: _Street, rng: np.random.Generator) -> None:
    """Buildings and tree lines along the horizon, taller towards the sides (they are closer)."""
    x = -rng.uniform(0, 0.1)
    while x < 1.0:
        width = rng.uniform(0.06, 0.2)
        near = 1 + 1.6 * abs(x + width / 2 - street.vx)
        if rng.random() < 0.68:
            top = street.horizon - rng.uniform(0.08, 0.26) * near
            period = rng.uniform(0.025, 0.05) * near
            pattern = (period, period * rng.uniform(1.2, 2.0), rng.uniform(0.35, 0.6),
                       rng.uniform(0.35, 0.6), x + rng.uniform(0, period), top + 0.02)  # fmt: skip
            scene.add("poly", _rect(x, top, x + width, 1.0), BUILDING, FACADE,
                      _random_hsv(rng), pattern)  # fmt: skip
        else:
            crown = street.horizon - rng.uniform(0.05, 0.16) * near
            scene.add("poly", _rect(x, crown, x + width, 1.0), VEGETATION, FOLIAGE)
            for cx in np.linspace(x, x + width, rng.integers(2, 4)):
                r = rng.uniform(0.03, 0.07) * near
                scene.add("ellipse", (cx, crown, r, r * ASPECT * 0.8), VEGETATION, FOLIAGE)
        x += width


def _ground(scene: Scene, street: _Street, rng: np.random.Generator) -> None:
    """Verges, sidewalks, road, lane markings; fences and walls along the sidewalk edge."""
    (rl, rr), (sl, sr) = street.road, street.walk
    for side, outer in ((-1, sl), (1, sr)):
        if rng.random() < 0.5:
            scene.add("poly", street.wedge(outer, outer + side * rng.uniform(0.2, 0.9),
                                           rng.uniform(0.1, 0.5)), TERRAIN, GRASS)  # fmt: skip
    scene.add("poly", street.wedge(sl, sr), SIDEWALK, SIDEWALK_M)
    scene.add("poly", street.wedge(rl, rr), ROAD, ROAD_M)
    if rng.random() < 0.5:  # a grass strip between road and sidewalk
        side = rng.choice([0, 1])
        edge, inner = (rl, rl - 0.08) if side == 0 else (rr, rr + 0.08)
        scene.add("poly", street.wedge(inner, edge, 0.05), TERRAIN, GRASS)
    centre = (rl + rr) / 2 + rng.uniform(-0.1, 0.1)
    for edge in (rl + 0.03, rr - 0.03):  # solid edge lines
        scene.add("poly", street.wedge(edge - 0.008, edge + 0.008, 0.02), ROAD, LANE)
    t = rng.uniform(0.03, 0.08)
    while t < 1.1:  # dashes grow with depth
        length = 0.25 * t
        scene.add("poly", street.wedge(centre - 0.012, centre + 0.012, t)[:2]
                  + street.wedge(centre - 0.012, centre + 0.012, t + length)[1::-1],
                  ROAD, LANE)  # fmt: skip
        t += 2.2 * length
    for outer in (sl, sr):
        r = rng.random()
        if r < 0.55:
            label, material = (FENCE, FENCE_M) if r < 0.35 else (WALL, WALL_M)
            t0, t1 = sorted(rng.uniform(0.05, 1.0, size=2))
            height = rng.uniform(0.1, 0.2)
            p0, p1 = (street.x(outer, t0), street.y(t0)), (street.x(outer, t1), street.y(t1))
            scene.add("poly", (p0, p1, (p1[0], p1[1] - height * t1), (p0[0], p0[1] - height * t0)),
                      label, material, (0.0, 0.0, 0.0), (rng.uniform(0.008, 0.02),))  # fmt: skip


def _car(scene: Scene, x: float, y: float, s: float, rng: np.random.Generator, label=CAR) -> None:
    side_view = rng.random() < 0.35
    w = s * (0.36 if side_view else 0.2) * (1.5 if label in (TRUCK, BUS) else 1.0)
    h = s * 0.17 * ASPECT * (1.9 if label == BUS else 1.6 if label == TRUCK else 1.0)
    paint = _random_hsv(rng)
    scene.add("ellipse", (x, y, 0.6 * w, 0.05 * s), ROAD, SHADOW)
    if label == CAR:
        scene.add(
            "poly", _rect(x - w / 2, y - 0.62 * h, x + w / 2, y - 0.12 * h), label, PAINT, paint
        )
        top = ((x - 0.32 * w, y - h), (x + 0.3 * w, y - h), (x + 0.42 * w, y - 0.6 * h),
               (x - 0.44 * w, y - 0.6 * h))  # fmt: skip
        scene.add("poly", top, label, PAINT, paint)
        scene.add(
            "poly", _rect(x - 0.34 * w, y - 0.94 * h, x + 0.32 * w, y - 0.66 * h), label, GLASS
        )
    else:
        scene.add("poly", _rect(x - w / 2, y - h, x + w / 2, y - 0.1 * h), label, PAINT, paint)
        rows = 1 if label == TRUCK else 2
        for k in range(rows):
            y0 = y - h + (0.08 + 0.3 * k) * h
            scene.add("poly", _rect(x - 0.44 * w, y0, x + 0.44 * w, y0 + 0.18 * h), label, GLASS)
    for wx in (x - 0.34 * w, x + 0.34 * w):
        scene.add("ellipse", (wx, y - 0.1 * h, 0.1 * w, 0.11 * h), label, TIRE)


def _person(scene: Scene, x: float, y: float, s: float, rng: np.random.Generator, label=PERSON,
            legs: bool = True) -> None:  # fmt: skip
    h, w = s * 0.34, s * 0.035
    cloth, trousers = _random_hsv(rng), _random_hsv(rng)
    if legs:
        stride = rng.uniform(0, 0.6) * w
        scene.add("line", (x - 0.3 * w, y - 0.45 * h, x - 0.3 * w - stride, y, 0.55 * w), label,
                  CLOTH, trousers)  # fmt: skip
        scene.add("line", (x + 0.3 * w, y - 0.45 * h, x + 0.3 * w + stride, y, 0.55 * w), label,
                  CLOTH, trousers)  # fmt: skip
    scene.add("poly", _rect(x - w, y - 0.82 * h, x + w, y - 0.42 * h), label, CLOTH, cloth)
    scene.add("ellipse", (x, y - 0.9 * h, 0.55 * w, 0.08 * h), label, SKIN)


def _two_wheeler(scene: Scene, x: float, y: float, s: float, rng: np.random.Generator,
                 label: int, rider: bool) -> None:  # fmt: skip
    r, half = s * 0.028, s * 0.06
    thick = (0.45 if label == MOTORCYCLE else 0.2) * r
    for wx in (x - half, x + half):
        scene.add("ring", (wx, y - r * ASPECT, r, thick), label, TIRE)
    frame = _random_hsv(rng)
    scene.add(
        "line", (x - half, y - r * ASPECT, x, y - 2.4 * r * ASPECT, 0.25 * r), label, PAINT, frame
    )
    scene.add(
        "line", (x + half, y - r * ASPECT, x, y - 2.4 * r * ASPECT, 0.25 * r), label, PAINT, frame
    )
    if label == MOTORCYCLE:
        scene.add(
            "ellipse", (x, y - 1.6 * r * ASPECT, 0.7 * half, 0.8 * r * ASPECT), label, PAINT, frame
        )
    if rider:
        _person(scene, x, y - 1.3 * r * ASPECT, s, rng, label=RIDER, legs=False)


def _pole(scene: Scene, x: float, y: float, s: float, rng: np.random.Generator) -> None:
    height, width = s * rng.uniform(0.4, 0.65), s * 0.01
    top = y - height
    scene.add("poly", _rect(x - width, top, x + width, y), POLE, METAL)
    r = rng.random()
    if r < 0.45:  # traffic sign: rectangle, disc or triangle
        size = s * rng.uniform(0.025, 0.04)
        hue = rng.choice([0.0, 0.15, 0.6, 0.33])
        hsv = (float(hue), 0.8 + 0.2 * rng.random(), 0.8 + 0.2 * rng.random())
        shape = rng.integers(3)
        if shape == 0:
            pts = _rect(x - size, top, x + size, top + size * ASPECT * 0.8)
            scene.add("poly", pts, TRAFFIC_SIGN, SIGN_FACE, hsv)
        elif shape == 1:
            scene.add("ellipse", (x, top + size * ASPECT * 0.5, size, size * ASPECT * 0.5),
                      TRAFFIC_SIGN, SIGN_FACE, hsv)  # fmt: skip
        else:
            pts = ((x - size, top), (x + size, top), (x, top + size * ASPECT))
            scene.add("poly", pts, TRAFFIC_SIGN, SIGN_FACE, hsv)
    elif r < 0.8:  # traffic light: a dark box with one lit lamp
        bw, bh = s * 0.014, s * 0.05 * ASPECT
        scene.add("poly", _rect(x - bw, top, x + bw, top + bh), TRAFFIC_LIGHT, LAMP_BOX)
        lit = rng.integers(3)
        hue = (0.0, 0.12, 0.35)[lit]
        cy = top + bh * (0.2 + 0.3 * lit)
        scene.add("ellipse", (x, cy, 0.7 * bw, 0.12 * bh), TRAFFIC_LIGHT, LAMP, (hue, 1.0, 1.0))


def _tree(scene: Scene, x: float, y: float, s: float, rng: np.random.Generator) -> None:
    height = s * rng.uniform(0.4, 0.7)
    scene.add("poly", _rect(x - 0.012 * s, y - height, x + 0.012 * s, y), VEGETATION, TRUNK)
    r = s * rng.uniform(0.06, 0.11)
    for _ in range(3):
        cx, cy = x + rng.uniform(-0.6, 0.6) * r, y - height + rng.uniform(-0.3, 0.3) * r * ASPECT
        scene.add("ellipse", (cx, cy, r, r * ASPECT * 0.7), VEGETATION, FOLIAGE)


def _objects(scene: Scene, street: _Street, rng: np.random.Generator) -> None:
    """Place objects at random depths, on the road or sidewalk, and draw them far to near."""
    (rl, rr), (sl, sr) = street.road, street.walk
    placed = []  # (depth, draw function, x position)

    def on_road(t, u):
        return street.x(rl + (rr - rl) * u, t)

    def on_walk(t, u):
        left = rng.random() < 0.5
        a, b = (sl, rl) if left else (rr, sr)
        return street.x(a + (b - a) * u, t)

    def curb(t, u):
        return street.x(rl - 0.05 if u < 0.5 else rr + 0.05, t)

    def draw(fn, **kw):
        return lambda x, y, s: fn(scene, x, y, s, rng, **kw)

    counts = [
        (rng.integers(1, 6), draw(_car), on_road, (0.05, 1.0)),
        (rng.poisson(2.0), draw(_person), on_walk, (0.05, 0.95)),
        (rng.integers(1, 5), draw(_pole), curb, (0.08, 1.0)),
        (rng.integers(0, 3), draw(_tree), on_walk, (0.1, 0.9)),
        (int(rng.random() < 0.18), draw(_car, label=TRUCK), on_road, (0.1, 0.7)),
        (int(rng.random() < 0.15), draw(_car, label=BUS), on_road, (0.1, 0.6)),
        (int(rng.random() < 0.25), draw(_two_wheeler, label=BICYCLE, rider=True), on_road, (0.2, 1.0)),
        (int(rng.random() < 0.15), draw(_two_wheeler, label=MOTORCYCLE, rider=True), on_road, (0.2, 1.0)),
        (int(rng.random() < 0.2), draw(_two_wheeler, label=BICYCLE, rider=False), on_walk, (0.2, 1.0)),
        (int(rng.random() < 0.12), draw(_two_wheeler, label=MOTORCYCLE, rider=False), on_walk, (0.2, 1.0)),
    ]  # fmt: skip
    for n, fn, where, (t0, t1) in counts:
        for _ in range(int(n)):
            t = rng.uniform(t0, t1)
            placed.append((t, fn, where(t, rng.uniform(0.15, 0.85))))
    for t, fn, x in sorted(placed, key=lambda item: item[0]):
        fn(x, street.y(t), t)


def sample_scene(rng: np.random.Generator) -> Scene:
    """One random street scene, independent of image size and domain."""
    street = _Street(rng)
    scene = Scene(horizon=street.horizon)
    scene.add("poly", _rect(0, 0, 1, 1), SKY, SKY_M)
    _skyline(scene, street, rng)
    _ground(scene, street, rng)
    _objects(scene, street, rng)
    return scene


# --------------------------------------------------------------------------- rasterise


def rasterize(scene: Scene, height: int, width: int, hood: bool = False):
    """Scene -> (label ids (H, W) uint8, part index (H, W) uint16, list of the shapes per part).

    Shapes are drawn in order (later ones cover earlier ones) into a part-index map; the label map
    is read off it, so the two always agree.
    """
    part = np.zeros((height, width), dtype=np.uint16)
    shapes = list(scene.shapes)
    if hood:  # the ego vehicle's bonnet along the bottom edge, as in Cityscapes
        shapes.append(Shape("ellipse", (0.5, 1.1, 0.75, 0.16), EGO_VEHICLE, HOOD))
    for index, shape in enumerate(shapes):
        _draw(part, shape, index, width, height)
    labels = np.array([s.label for s in shapes], dtype=np.uint8)
    return labels[part], part, shapes


def _draw(canvas: np.ndarray, shape: Shape, value: int, width: int, height: int) -> None:
    """Fill one shape with ``value``; coordinates go to cv2 in 1/16 pixel (``shift``)."""
    one, shift = 1 << _SUBPIXEL_BITS, _SUBPIXEL_BITS
    sx, sy = width * one, height * one

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(x * sx), round(y * sy)

    if shape.kind == "poly":
        points = np.round(np.asarray(shape.points) * (sx, sy)).astype(np.int32)
        cv2.fillPoly(canvas, [points], value, cv2.LINE_8, shift)
    elif shape.kind == "ellipse":
        cx, cy, rx, ry = shape.points
        cv2.ellipse(canvas, pt(cx, cy), pt(rx, ry), 0, 0, 360, value, -1, cv2.LINE_8, shift)
    elif shape.kind == "ring":
        cx, cy, r, w = shape.points
        thick = max(1, round(w * width))
        cv2.circle(canvas, pt(cx, cy), round(r * sx), value, thick, cv2.LINE_8, shift)
    elif shape.kind == "line":
        x0, y0, x1, y1, w = shape.points
        thick = max(1, round(w * width))
        cv2.line(canvas, pt(x0, y0), pt(x1, y1), value, thick, cv2.LINE_8, shift)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")


# --------------------------------------------------------------------------- render


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(N, 3) hue/saturation/value in [0, 1] -> (N, 3) RGB in [0, 255]."""
    h, s, v = (hsv[:, i] for i in range(3))
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    rgb = v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return (rgb * 255).astype(np.float32)


def _source_colours(shapes: list[Shape]) -> tuple[np.ndarray, np.ndarray]:
    """Per part: source RGB (float32) and material. Painted parts get vivid, game-like colours."""
    material = np.array([s.material for s in shapes], dtype=np.int64)
    table = np.zeros((N_MATERIALS, 3), dtype=np.float32)
    for m, rgb in _SOURCE_COLOURS.items():
        table[m] = rgb
    colours = table[material]
    hsv = np.array([s.hsv for s in shapes], dtype=np.float64)
    hsv[:, 1] = 0.55 + 0.45 * hsv[:, 1]
    hsv[:, 2] = 0.65 + 0.35 * hsv[:, 2]
    hsv[material == LAMP, 1:] = 1.0  # lit lamps are fully bright
    painted = np.isin(material, PAINTED)
    colours[painted] = _hsv_to_rgb(hsv[painted])
    return colours, material


def shift_colours(rgb: np.ndarray, hue_deg: float, saturation: float, gain: float) -> np.ndarray:
    """Rotate the chroma of (..., 3) RGB about the grey axis, scale it, then scale brightness."""
    grey = rgb.mean(axis=-1, keepdims=True)
    chroma = rgb - grey
    axis = np.full(3, 3**-0.5)
    theta = np.deg2rad(hue_deg)
    # Rodrigues' rotation; chroma is orthogonal to the axis, so the axis term vanishes.
    rotated = chroma * np.cos(theta) + np.cross(axis, chroma) * np.sin(theta)
    return ((grey + saturation * rotated) * gain).astype(np.float32)


def _patterns(part: np.ndarray, shapes: list[Shape], material: np.ndarray, image: np.ndarray,
              window_rgb: tuple[int, int, int]) -> None:  # fmt: skip
    """Windows on facades and posts on fences, in place (same geometry in both domains)."""
    height, width = part.shape
    params = np.zeros((len(shapes), 6), dtype=np.float32)
    for i, s in enumerate(shapes):
        if s.pattern:
            params[i, : len(s.pattern)] = s.pattern
    mat = material[part]
    yy, xx = np.nonzero((mat == FACADE) | (mat == FENCE_M))
    p = params[part[yy, xx]]
    xn, yn = (xx + 0.5) / width, (yy + 0.5) / height
    facade = mat[yy, xx] == FACADE
    f, q, xf, yf = ~facade, p[facade], xn[facade], yn[facade]
    windows = (np.mod(xf - q[:, 4], q[:, 0]) < q[:, 0] * q[:, 2]) & (
        np.mod(yf - q[:, 5], q[:, 1]) < q[:, 1] * q[:, 3]
    )
    posts = np.mod(xn[f], p[f, 0]) < 0.4 * p[f, 0]
    image[yy[facade][windows], xx[facade][windows]] = window_rgb
    image[yy[f][posts], xx[f][posts]] *= 0.6


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Value noise in about [-1, 1]: a random grid of ``cells`` rows, upsampled bicubically."""
    grid = rng.standard_normal((cells, max(2, cells * width // height))).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def render(shapes: list[Shape], part: np.ndarray, horizon: float, domain: str,
           rng: np.random.Generator, look: TargetLook = TARGET_LOOK) -> np.ndarray:  # fmt: skip
    """Paint a rasterised scene in the style of ``domain`` ('source' or 'target') -> (H, W, 3) uint8."""
    height, width = part.shape
    colours, material = _source_colours(shapes)
    mat = material[part]
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :, None]
    sky_t = np.clip(y / max(horizon, 1e-3), 0, 1)
    sky = mat[..., None] == SKY_M
    if domain == "source":
        image = colours[part]
        _patterns(part, shapes, material, image, SOURCE_WINDOW)
        gradient = (30, 105, 225) + sky_t * np.array([120, 95, 30], dtype=np.float32)
        image = np.where(sky, gradient, image * (1.06 - 0.12 * y))  # mild top-lit shading
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)
    colours = shift_colours(
        colours, rng.uniform(*look.hue_deg), rng.uniform(*look.saturation), rng.uniform(*look.gain)
    )
    colours[material == GLASS] = look.window
    image = colours[part]
    _patterns(part, shapes, material, image, look.window)
    return _realistic(image, mat, sky, sky_t, x, y, horizon, rng, look)


def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance uniform noise (float32): a quarter the cost of Gaussian noise."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(12**0.5)


def _realistic(image, mat, sky, sky_t, x, y, horizon, rng, look: TargetLook) -> np.ndarray:
    """Target look: cloudy sky, texture, haze, side light, vignette, cast, gamma, blur, noise."""
    height, width = mat.shape
    clouds = _smooth_noise(rng, height, width, 3)[..., None]
    top, bottom = np.array(look.sky_top, np.float32), np.array(look.sky_horizon, np.float32)
    image = np.where(sky, top + sky_t * (bottom - top) + 10 * clouds, image)
    amplitude = np.zeros(N_MATERIALS, dtype=np.float32)
    for m, a in look.texture:
        amplitude[m] = a
    fine = _uniform_noise(rng, (height, width))
    texture = 0.6 * _smooth_noise(rng, height, width, 24) + 0.4 * fine
    image *= 1 + (amplitude[mat] * texture)[..., None]
    haze = rng.uniform(*look.haze) * np.exp(-np.abs(y - horizon) / 0.1)
    side = rng.choice([-1.0, 1.0]) * rng.uniform(*look.side_light)
    vignette = 1 - look.vignette * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    cast = np.array([rng.uniform(*look.red_cast), 1.0, rng.uniform(*look.blue_cast)], np.float32)
    light = (1 + side * (x - 0.5)) * vignette * cast
    hazy = np.float32(0.5) * (top + bottom) * haze
    image = np.clip((image * (1 - haze) + hazy) * light + 0.5, 0, 255).astype(np.uint8)
    gamma = 255 * (np.arange(256) / 255) ** rng.uniform(*look.gamma)
    image = cv2.LUT(image, np.clip(gamma + 0.5, 0, 255).astype(np.uint8))
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*look.blur_sigma))
    noise = _uniform_noise(rng, image.shape) * rng.uniform(*look.noise_std)
    return np.clip(image + noise + 0.5, 0, 255).astype(np.uint8)


def render_sample(
    seed: int, domain: str, split: str, index: int, look: TargetLook = TARGET_LOOK
) -> tuple[np.ndarray, np.ndarray]:
    """The (image, Cityscapes label ids) of one demo file; a pure function of its arguments."""
    domain_code, split_code = {"source": 0, "target": 1}[domain], {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([seed, domain_code, split_code, index])
    scene = sample_scene(rng)
    height, width = SOURCE_SIZE if domain == "source" else TARGET_SIZE
    label, part, shapes = rasterize(scene, height, width, hood=domain == "target")
    return render(shapes, part, scene.horizon, domain, rng, look), label


# --------------------------------------------------------------------------- files


def _cityscapes_palette() -> np.ndarray:
    """(256, 3) palette: Cityscapes label id -> its colour (GTA5 label PNGs carry this palette)."""
    from cityscapesscripts.helpers.labels import labels

    palette = np.zeros((256, 3), dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256:
            palette[lab.id] = lab.color
    return palette


def _paths(root: Path, domain: str, split: str, index: int) -> tuple[Path, Path]:
    if domain == "source":
        stem = f"{index + 1:05d}"
        return root / "gta/images" / f"{stem}.png", root / "gta/labels" / f"{stem}.png"
    base = f"{DEMO_CITY}_000000_{index:06d}"
    return (
        root
        / "cityscapes/leftImg8bit"
        / split
        / DEMO_CITY
        / (base + layout.CITYSCAPES_IMAGE_SUFFIX),
        root / "cityscapes/gtFine" / split / DEMO_CITY / (base + layout.CITYSCAPES_LABEL_ID_SUFFIX),
    )


def _jobs(counts: dict[str, int]) -> list[tuple[str, str, int]]:
    splits = (("source", "train", counts["n_source"]), ("target", "train", counts["n_target_train"]),
              ("target", "val", counts["n_target_val"]))  # fmt: skip
    return [(domain, split, i) for domain, split, n in splits for i in range(n)]


def _write_sample(args: tuple) -> None:
    root, seed, domain, split, index = args
    image, label = render_sample(seed, domain, split, index)
    image_path, label_path = _paths(root, domain, split, index)
    write_image_png(image_path, image, compress_level=1)
    palette = _cityscapes_palette() if domain == "source" else None
    write_label_png(label_path, label, palette=palette, compress_level=1)


def _expected_files(root: Path, counts: dict[str, int]) -> list[Path]:
    files = []
    for domain, split, index in _jobs(counts):
        image, label = _paths(root, domain, split, index)
        suffix = layout.TRAIN_ID_SUFFIX if domain == "source" else layout.CITYSCAPES_TRAIN_ID_SUFFIX
        raw_suffix = ".png" if domain == "source" else layout.CITYSCAPES_LABEL_ID_SUFFIX
        files += [image, label, label.with_name(label.name[: -len(raw_suffix)] + suffix)]
    for sub in ("gta", "cityscapes"):
        files += [root / sub / name for name in layout.CLASS_STATS_FILES]
    return files


def _is_complete(root: Path, manifest: dict) -> bool:
    path = root / layout.DEMO_MANIFEST
    if not path.is_file():
        return False
    try:
        if json.loads(path.read_text()) != manifest:
            return False
    except ValueError:
        return False
    return all(p.is_file() for p in _expected_files(root, manifest))


def _clear(root: Path) -> None:
    """Remove an old demo set; refuse to touch folders that are not ours."""
    ours = (root / layout.DEMO_MANIFEST).is_file()
    for sub in ("gta", "cityscapes"):
        folder = root / sub
        if folder.exists() and any(folder.iterdir()):
            if not ours:
                raise FileExistsError(
                    f"{folder} holds files but {root / layout.DEMO_MANIFEST} is missing; it may be "
                    "real data: choose an empty demo root or delete that folder yourself"
                )
            shutil.rmtree(folder)
    (root / layout.DEMO_MANIFEST).unlink(missing_ok=True)


def generate_demo_domains(
    root: str | Path = "data/demo",
    n_source: int = 160,
    n_target_train: int = 160,
    n_target_val: int = 40,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> dict:
    """Write the demo source (``root/gta``) and target (``root/cityscapes``) and prepare both.

    Skips the work when ``root/demo_manifest.json`` matches these arguments and every file is
    present. Returns a report with the two dataset roots and whether anything was generated.
    """
    root, start = Path(root), time.perf_counter()
    counts = {"n_source": n_source, "n_target_train": n_target_train, "n_target_val": n_target_val}
    manifest = {"version": DEMO_VERSION, "seed": seed, **counts,
                "source_size": list(SOURCE_SIZE), "target_size": list(TARGET_SIZE)}  # fmt: skip
    report = {"root": str(root), "source_root": str(root / "gta"),
              "target_root": str(root / "cityscapes"), **manifest}  # fmt: skip
    if _is_complete(root, manifest):
        return {**report, "generated": False, "seconds": round(time.perf_counter() - start, 3)}
    if min(counts.values()) < 1:
        raise ValueError(f"demo counts must be >= 1, got {counts}")
    _clear(root)
    jobs = [(root, seed, *job) for job in _jobs(counts)]
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        done = pool.map(_write_sample, jobs, chunksize=8) if pool else map(_write_sample, jobs)
        for _ in tqdm(done, total=len(jobs), desc="demo domains", disable=not progress):
            pass
    prepare_dataset("demo-source", root / "gta", workers=workers, progress=progress)
    prepare_dataset("demo-target", root / "cityscapes", workers=workers, progress=progress)
    write_json(root / layout.DEMO_MANIFEST, manifest)  # last: its presence means complete
    return {**report, "generated": True, "seconds": round(time.perf_counter() - start, 3)}
