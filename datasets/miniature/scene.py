"""Drawing one street scene: a pinhole camera, a canvas that draws image, element map and depth together,
the scene composer, the domain colour transform and the adverse conditions (fog, night, rain, snow)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .elements import (_BASE_RGB, _BUILDING_COLOURS, _BUS_COLOURS, _CAR_COLOURS, _CLOTHES, _N_ELEMENTS, _SKIN,
                       _TEXTURE, _TRUCK_COLOURS, E)
from .styles import _SKIES, STYLES, DomainStyle

_FAR = 1000.0  # depth of sky / skyline (metres)


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at (0, height, 0) looking along +Z; X right, Y up (metres)."""

    f: float
    cx: float
    hy: float
    height: float

    def proj(self, X, Y, Z) -> np.ndarray:
        Z = np.maximum(np.asarray(Z, np.float64), 0.05)
        return np.stack([self.cx + self.f * np.asarray(X) / Z, self.hy + self.f * (self.height - np.asarray(Y)) / Z], -1)

    def k(self, Z: float) -> float:
        """Pixels per metre at depth Z."""
        return self.f / max(Z, 0.05)


def domain_materials(style: DomainStyle) -> np.ndarray:
    """The domain's own colour offset of every element [elements, 3] (zeros for ``materials=0``)."""
    if not style.materials:
        return np.zeros(_BASE_RGB.shape, np.float32)
    rng = np.random.default_rng([0x4D41, style.materials_seed])
    return rng.normal(0.0, style.materials, _BASE_RGB.shape).astype(np.float32)


class _Canvas:
    """Image (float32 RGB), element map and depth map drawn together with the same primitives."""

    def __init__(self, w: int, h: int, rng: np.random.Generator, style: DomainStyle, night_mode: bool) -> None:
        self.w, self.h = w, h
        self.rng = rng
        self.style = style
        self.night = night_mode
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.full((h, w), int(E.SKY), np.uint8)
        self.depth = np.full((h, w), _FAR, np.float32)
        self.lights: list[tuple[float, float, float, tuple[float, float, float]]] = []
        self.materials = domain_materials(style)
        self.palette = _BASE_RGB + self.materials + (
            rng.normal(0, style.palette_jitter, _BASE_RGB.shape).astype(np.float32) if style.palette_jitter else 0)

    def colour(self, e: E, base: np.ndarray | None = None, jitter: float | None = None) -> tuple[float, float, float]:
        c = self.palette[int(e)] if base is None else np.asarray(base, np.float32) + self.materials[int(e)]
        j = self.style.instance_jitter if jitter is None else jitter
        if j:
            c = c + self.rng.normal(0, j, 3)
        return tuple(float(v) for v in np.clip(c, 0, 255))

    @staticmethod
    def _pts(pts) -> np.ndarray:
        return np.round(np.asarray(pts, np.float64) * 4).astype(np.int32).reshape(-1, 2)

    def poly(self, pts, e: E | None, rgb, z: float = 0.0) -> None:
        p = [self._pts(pts)]
        cv2.fillPoly(self.img, p, rgb, cv2.LINE_8, 2)
        if e is not None:
            cv2.fillPoly(self.lab, p, int(e), cv2.LINE_8, 2)
            cv2.fillPoly(self.depth, p, float(z), cv2.LINE_8, 2)

    def circle(self, c, r: float, e: E | None, rgb, z: float = 0.0, thickness: int = -1) -> None:
        cc = tuple(int(round(v * 4)) for v in c)
        rr = max(int(round(r * 4)), 2)
        cv2.circle(self.img, cc, rr, rgb, thickness, cv2.LINE_8, 2)
        if e is not None:
            cv2.circle(self.lab, cc, rr, int(e), thickness, cv2.LINE_8, 2)
            cv2.circle(self.depth, cc, rr, float(z), thickness, cv2.LINE_8, 2)

    def line(self, p0, p1, width: float, e: E | None, rgb, z: float = 0.0) -> None:
        a, b = tuple(int(round(v * 4)) for v in p0), tuple(int(round(v * 4)) for v in p1)
        t = max(int(round(width)), 1)
        cv2.line(self.img, a, b, rgb, t, cv2.LINE_8, 2)
        if e is not None:
            cv2.line(self.lab, a, b, int(e), t, cv2.LINE_8, 2)
            cv2.line(self.depth, a, b, float(z), t, cv2.LINE_8, 2)


def _shade(rgb, f: float) -> tuple[float, float, float]:
    return tuple(float(min(255.0, v * f)) for v in rgb)


def _box(cv: _Canvas, cam: _Camera, x0, x1, y0, y1, z0, z1, e: E, rgb) -> None:
    """Axis-aligned 3D box: draws the faces visible from the camera (sides, top, then near face)."""
    P = lambda X, Y, Z: cam.proj(X, Y, Z)  # noqa: E731
    zm = 0.5 * (z0 + z1)
    if x0 > 0:  # left face visible
        cv.poly(P([x0, x0, x0, x0], [y0, y1, y1, y0], [z0, z0, z1, z1]), e, _shade(rgb, 0.78), zm)
    if x1 < 0:  # right face visible
        cv.poly(P([x1, x1, x1, x1], [y0, y1, y1, y0], [z0, z0, z1, z1]), e, _shade(rgb, 0.78), zm)
    if y1 < cam.height:  # top visible
        cv.poly(P([x0, x1, x1, x0], [y1, y1, y1, y1], [z0, z0, z1, z1]), e, _shade(rgb, 1.12), zm)
    cv.poly(P([x0, x1, x1, x0], [y0, y0, y1, y1], [z0, z0, z0, z0]), e, rgb, z0)


def _ground(cv: _Canvas, cam: _Camera, x0, x1, z0, z1, e: E | None, rgb) -> None:
    cv.poly(cam.proj([x0, x1, x1, x0], [0, 0, 0, 0], [z0, z0, z1, z1]), e, rgb, 0.5 * (z0 + z1))


def _window_grid(cv: _Canvas, cam: _Camera, face: str, fixed: float, u0, u1, y0, y1, rgb_win, lit: float) -> None:
    """Windows on a facade (image only). face 'x': plane X=fixed spanning Z in [u0,u1]; 'z': plane Z=fixed."""
    nu = max(1, int((u1 - u0) / 3.2))
    ny = max(1, int((y1 - y0 - 1.0) / 3.0))
    du, dy = (u1 - u0) / nu, (y1 - y0 - 1.0) / ny
    a = u0 + np.arange(nu) * du + 0.25 * du
    b = a + 0.5 * du
    c = 1.0 + y0 + np.arange(ny) * dy + 0.25 * dy
    d = c + 0.55 * dy
    A, C = np.meshgrid(a, c, indexing="ij")
    B, D = np.meshgrid(b, d, indexing="ij")
    A, B, C, D = (v.ravel() for v in (A, B, C, D))
    n = A.size
    if face == "x":
        pts = cam.proj(np.full((n, 4), fixed), np.stack([C, D, D, C], 1), np.stack([A, A, B, B], 1))
    else:
        pts = cam.proj(np.stack([A, B, B, A], 1), np.stack([C, C, D, D], 1), np.full((n, 4), fixed))
    quads = np.round(pts * 4).astype(np.int32)  # (n, 4, 2), 2 fractional bits
    on = cv.rng.random(n) < lit if cv.night else np.zeros(n, bool)
    for mask, col in ((~on, rgb_win), (on, (235.0, 205.0, 120.0))):
        if mask.any():
            cv2.fillPoly(cv.img, list(quads[mask]), col, cv2.LINE_8, 2)


def _person(cv: _Canvas, cam: _Camera, X: float, Z: float, e: E = E.PERSON, seated: bool = False,
            facing: float = 1.0) -> None:
    """A pedestrian (or, with ``seated``, a rider's body above a bike centred at X)."""
    rng = cv.rng
    k = cam.k(Z)
    bx, by = cam.proj(X, 0.0, Z)
    hgt = rng.uniform(1.55, 1.9)
    shirt = cv.colour(e, _CLOTHES[rng.integers(len(_CLOTHES))])
    trousers = cv.colour(e, _CLOTHES[rng.integers(len(_CLOTHES))] * 0.6)
    skin = cv.colour(e, _SKIN[rng.integers(len(_SKIN))], 4.0)
    u = lambda dx, dy: (bx + dx * k * facing, by - dy * k)  # noqa: E731
    if seated:  # rider: hip at seat height ~0.95 m, torso leaning forward, legs to pedals
        hip, sh = u(-0.2, 0.95), u(0.1, 1.5)
        cv.line(hip, u(0.0, 0.4), 0.14 * k, e, trousers, Z)
        cv.line(hip, u(0.05, 0.5), 0.14 * k, e, trousers, Z)
        cv.poly([u(-0.38, 0.9), u(-0.02, 0.9), u(0.3, 1.5), u(-0.08, 1.55)], e, shirt, Z)
        cv.line(sh, u(0.35, 1.0), 0.09 * k, e, shirt, Z)
        cv.circle(u(0.16, 1.68), 0.12 * k, e, skin, Z)
        cv.circle(u(0.15, 1.73), 0.12 * k, e, _shade(shirt, 0.5), Z)  # helmet
        return
    stride = rng.uniform(-0.15, 0.15)
    leg_top = 0.47 * hgt
    cv.poly([u(-0.17 + stride, 0), u(-0.05 + stride, 0), u(0.0, leg_top), u(-0.14, leg_top)], e, trousers, Z)
    cv.poly([u(0.05 - stride, 0), u(0.17 - stride, 0), u(0.14, leg_top), u(0.0, leg_top)], e, trousers, Z)
    cv.poly([u(-0.21, leg_top - 0.04), u(0.21, leg_top - 0.04), u(0.2, 0.82 * hgt), u(-0.2, 0.82 * hgt)], e, shirt, Z)
    cv.poly([u(-0.27, 0.5 * hgt), u(-0.2, 0.5 * hgt), u(-0.19, 0.81 * hgt), u(-0.26, 0.8 * hgt)], e, shirt, Z)
    cv.poly([u(0.2, 0.5 * hgt), u(0.27, 0.5 * hgt), u(0.26, 0.8 * hgt), u(0.19, 0.81 * hgt)], e, shirt, Z)
    cv.circle(u(0.0, 0.9 * hgt), 0.115 * k, e, skin, Z)
    cv.poly([u(-0.11, 0.92 * hgt), u(0.11, 0.92 * hgt), u(0.1, 0.97 * hgt), u(-0.1, 0.97 * hgt)], e, (40.0, 30.0, 25.0), Z)


def _bicycle(cv: _Canvas, cam: _Camera, X: float, Z: float, facing: float) -> None:
    k = cam.k(Z)
    bx, by = cam.proj(X, 0.0, Z)
    u = lambda dx, dy: (bx + dx * k * facing, by - dy * k)  # noqa: E731
    frame = cv.colour(E.BICYCLE, _CLOTHES[cv.rng.integers(len(_CLOTHES))])
    tyre = (28.0, 28.0, 30.0)
    t = max(0.06 * k, 1.0)
    for dx in (-0.52, 0.52):
        cv.circle(u(dx, 0.34), 0.34 * k, E.BICYCLE, tyre, Z, thickness=max(int(round(t)), 1))
    for a, b in (((-0.52, 0.34), (0.0, 0.3)), ((0.0, 0.3), (-0.2, 0.9)), ((-0.2, 0.9), (-0.52, 0.34)),
                 ((-0.2, 0.9), (0.35, 0.92)), ((0.35, 0.92), (0.0, 0.3)), ((0.35, 0.92), (0.52, 0.34)),
                 ((0.35, 0.92), (0.3, 1.08)), ((-0.3, 0.95), (-0.1, 0.95))):
        cv.line(u(*a), u(*b), t, E.BICYCLE, frame, Z)


def _motorcycle(cv: _Canvas, cam: _Camera, X: float, Z: float, facing: float) -> None:
    k = cam.k(Z)
    bx, by = cam.proj(X, 0.0, Z)
    u = lambda dx, dy: (bx + dx * k * facing, by - dy * k)  # noqa: E731
    body = cv.colour(E.MOTORCYCLE, _CAR_COLOURS[cv.rng.integers(len(_CAR_COLOURS))])
    for dx in (-0.72, 0.72):
        cv.circle(u(dx, 0.32), 0.32 * k, E.MOTORCYCLE, (25.0, 25.0, 27.0), Z)
        cv.circle(u(dx, 0.32), 0.13 * k, E.MOTORCYCLE, (150.0, 150.0, 155.0), Z)
    cv.poly([u(-0.85, 0.5), u(-0.55, 0.85), u(-0.1, 0.95), u(0.35, 1.0), u(0.7, 0.78), u(0.8, 0.45),
             u(0.2, 0.35), u(-0.4, 0.38)], E.MOTORCYCLE, body, Z)
    cv.poly([u(-0.05, 0.7), u(0.45, 0.68), u(0.4, 1.02), u(0.0, 1.0)], E.MOTORCYCLE, _shade(body, 1.2), Z)
    cv.line(u(0.55, 0.9), u(0.7, 1.18), max(0.05 * k, 1.0), E.MOTORCYCLE, (40.0, 40.0, 40.0), Z)
    if cv.night:
        cv.lights.append((*u(0.78, 0.8), 0.12 * k, (255.0, 240.0, 200.0)))


def _vehicle(cv: _Canvas, cam: _Camera, kind: E, X: float, Z: float, oncoming: bool) -> None:
    """Car / truck / bus / train as 3D boxes with windows, wheels and lights."""
    rng = cv.rng
    if kind == E.CAR:
        wdt, length, hgt = rng.uniform(1.7, 1.9), rng.uniform(3.9, 4.7), rng.uniform(1.4, 1.6)
        body = cv.colour(E.CAR, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))])
    elif kind == E.TRUCK:
        wdt, length, hgt = 2.5, rng.uniform(6.5, 9.0), rng.uniform(3.2, 3.8)
        body = cv.colour(E.TRUCK, _TRUCK_COLOURS[rng.integers(len(_TRUCK_COLOURS))])
    elif kind == E.BUS:
        wdt, length, hgt = 2.55, rng.uniform(10.0, 12.0), rng.uniform(3.0, 3.3)
        body = cv.colour(E.BUS, _BUS_COLOURS[rng.integers(len(_BUS_COLOURS))])
    else:  # train / tram
        wdt, length, hgt = 2.65, rng.uniform(22.0, 30.0), 3.5
        body = cv.colour(E.TRAIN)
    x0, x1 = X - wdt / 2, X + wdt / 2
    z0, z1 = Z, Z + length
    dark = (22.0, 24.0, 28.0)
    glass = cv.colour(kind, (50, 62, 75), 5.0)
    # wheels (visible under the body)
    for zw in (z0 + 0.12 * length + 0.4, z1 - 0.12 * length - 0.4):
        for xw in (x0 + 0.05, x1 - 0.3):
            _box(cv, cam, xw, xw + 0.25, 0.0, 0.7 if kind != E.CAR else 0.6, zw - 0.35, zw + 0.35, kind, dark)
    if kind == E.CAR:
        _box(cv, cam, x0, x1, 0.28, 0.55 * hgt + 0.2, z0, z1, kind, body)
        cz0, cz1 = z0 + 0.22 * length, z1 - 0.25 * length
        _box(cv, cam, x0 + 0.12, x1 - 0.12, 0.55 * hgt + 0.2, hgt, cz0, cz1, kind, _shade(body, 0.95))
        # near windscreen / rear window (image only)
        cv.poly(cam.proj([x0 + 0.25, x1 - 0.25, x1 - 0.25, x0 + 0.25],
                         [0.58 * hgt + 0.2, 0.58 * hgt + 0.2, hgt - 0.08, hgt - 0.08], [cz0] * 4), None, glass)
        for xs, visible in ((x0 + 0.12, x0 + 0.12 > 0), (x1 - 0.12, x1 - 0.12 < 0)):
            if visible:  # side windows on the visible cabin face
                cv.poly(cam.proj([xs] * 4, [0.6 * hgt + 0.2, hgt - 0.1, hgt - 0.1, 0.6 * hgt + 0.2],
                                 [cz0 + 0.15, cz0 + 0.15, cz1 - 0.15, cz1 - 0.15]), None, glass)
        light_y = 0.55 * hgt
    else:
        lower = 0.45 if kind != E.TRAIN else 0.9
        if kind == E.TRUCK:
            cab = 2.2
            _box(cv, cam, x0 + 0.05, x1 - 0.05, lower, 2.9, z0, z0 + cab, kind, _shade(body, 0.9))
            _box(cv, cam, x0, x1, lower, hgt, z0 + cab + 0.2, z1, kind, body)
            cv.poly(cam.proj([x0 + 0.25, x1 - 0.25, x1 - 0.25, x0 + 0.25], [1.7, 1.7, 2.6, 2.6], [z0] * 4), None, glass)
        else:
            _box(cv, cam, x0, x1, lower, hgt, z0, z1, kind, body)
            # window band on the visible side and the near face
            for xs in (x0, x1):
                if (xs == x0 and xs > 0) or (xs == x1 and xs < 0):
                    n = int(length / 1.6)
                    for i in range(n):
                        a = z0 + 0.6 + i * (length - 1.2) / n
                        b = a + 0.75 * (length - 1.2) / n
                        cv.poly(cam.proj([xs] * 4, [1.55, hgt - 0.35, hgt - 0.35, 1.55], [a, a, b, b]), None, glass)
            cv.poly(cam.proj([x0 + 0.2, x1 - 0.2, x1 - 0.2, x0 + 0.2], [1.4, 1.4, hgt - 0.3, hgt - 0.3], [z0] * 4), None, glass)
            if kind == E.TRAIN:  # coloured stripe
                stripe = cv.colour(E.TRAIN, (200, 40, 40) if rng.random() < 0.5 else (30, 80, 170))
                cv.poly(cam.proj([x0, x1, x1, x0], [1.0, 1.0, 1.3, 1.3], [z0] * 4), None, stripe)
        light_y = 0.8
    # lights on the near face
    col = (255.0, 245.0, 215.0) if oncoming else (215.0, 30.0, 25.0)
    for xl in (x0 + 0.25, x1 - 0.45):
        pts = cam.proj([xl, xl + 0.2, xl + 0.2, xl], [light_y, light_y, light_y + 0.15, light_y + 0.15], [z0] * 4)
        cv.poly(pts, None, col)
        if cv.night:
            c = pts.mean(0)
            cv.lights.append((float(c[0]), float(c[1]), 0.12 * cam.k(z0), col))


def _pole(cv: _Canvas, cam: _Camera, X: float, Z: float, road_side: float, kind: str) -> None:
    """Pole with a traffic light, a traffic sign (front or back), a street light, or nothing."""
    rng = cv.rng
    k = cam.k(Z)
    hgt = {"light": rng.uniform(3.2, 4.5), "sign": rng.uniform(2.4, 3.2), "street": rng.uniform(6.0, 8.0),
           "plain": rng.uniform(3.0, 6.0)}[kind]
    pc = cv.colour(E.POLE)
    base, top = cam.proj(X, 0.0, Z), cam.proj(X, hgt, Z)
    cv.line(base, top, max(0.14 * k, 1.0), E.POLE, pc, Z)
    if kind == "light":
        cx, cy = top[0], top[1]
        w_, h_ = 0.36 * k, 0.95 * k
        cv.poly([(cx - w_ / 2, cy), (cx + w_ / 2, cy), (cx + w_ / 2, cy + h_), (cx - w_ / 2, cy + h_)],
                E.TRAFFIC_LIGHT, cv.colour(E.TRAFFIC_LIGHT, jitter=4.0), Z)
        if rng.random() < 0.85:  # facing the camera: lamps
            on = int(rng.integers(3))
            for i, lc in enumerate(((230.0, 40.0, 30.0), (240.0, 180.0, 30.0), (40.0, 220.0, 90.0))):
                c = (cx, cy + h_ * (0.2 + 0.3 * i))
                cv.circle(c, 0.1 * k, None, lc if i == on else _shade(lc, 0.3))
                if i == on and cv.night:
                    cv.lights.append((c[0], c[1], 0.15 * k, lc))
        if rng.random() < 0.5:  # second head on an arm over the road
            ax = top[0] + road_side * rng.uniform(1.5, 3.0) * k
            cv.line(top, (ax, top[1]), max(0.1 * k, 1.0), E.POLE, pc, Z)
            cv.poly([(ax - w_ / 2, cy), (ax + w_ / 2, cy), (ax + w_ / 2, cy + h_), (ax - w_ / 2, cy + h_)],
                    E.TRAFFIC_LIGHT, cv.colour(E.TRAFFIC_LIGHT, jitter=4.0), Z)
    elif kind == "sign":
        back = rng.random() < 0.3
        e = E.SIGN_BACK if back else E.TRAFFIC_SIGN
        cx, cy = top[0], top[1] + 0.1 * k
        r = rng.uniform(0.3, 0.42) * k
        shape = int(rng.integers(4))
        if back:
            face, inner = cv.colour(E.SIGN_BACK), None
        else:
            face = cv.colour(E.TRAFFIC_SIGN, ((200, 35, 35), (30, 75, 190), (230, 190, 30), (200, 35, 35))[shape])
            inner = (240.0, 240.0, 236.0) if shape in (0, 3) else None
        if shape == 0:
            cv.circle((cx, cy), r, e, face, Z)
            if inner:
                cv.circle((cx, cy), 0.72 * r, None, inner)
        elif shape == 1:
            cv.poly([(cx - r, cy - 0.75 * r), (cx + r, cy - 0.75 * r), (cx + r, cy + 0.75 * r), (cx - r, cy + 0.75 * r)], e, face, Z)
            if not back:
                cv.line((cx - 0.6 * r, cy), (cx + 0.5 * r, cy), max(0.15 * r, 1.0), None, (240.0, 240.0, 240.0))
        elif shape == 2:
            cv.poly([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], e, face, Z)
        else:
            cv.poly([(cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r), (cx, cy - 0.95 * r)], e, face, Z)
            if inner:
                cv.poly([(cx - 0.6 * r, cy + 0.55 * r), (cx + 0.6 * r, cy + 0.55 * r), (cx, cy - 0.5 * r)], None, inner)
    elif kind == "street":
        ax = top[0] + road_side * rng.uniform(1.2, 2.2) * k
        cv.line(top, (ax, top[1] + 0.1 * k), max(0.1 * k, 1.0), E.POLE, pc, Z)
        lamp = [(ax - 0.35 * k, top[1]), (ax + 0.35 * k, top[1]), (ax + 0.25 * k, top[1] + 0.28 * k),
                (ax - 0.25 * k, top[1] + 0.28 * k)]
        cv.poly(lamp, E.STREET_LIGHT, cv.colour(E.STREET_LIGHT, jitter=4.0), Z)
        if cv.night:
            cv.lights.append((ax, top[1] + 0.25 * k, 0.3 * k, (255.0, 215.0, 150.0)))


def _tree(cv: _Canvas, cam: _Camera, X: float, Z: float) -> None:
    rng = cv.rng
    k = cam.k(Z)
    hgt = rng.uniform(4.0, 9.0)
    base, top = cam.proj(X, 0.0, Z), cam.proj(X, hgt * 0.6, Z)
    cv.line(base, top, max(0.3 * k, 1.0), E.VEGETATION, cv.colour(E.VEGETATION, (85, 65, 45)), Z)
    green = cv.colour(E.VEGETATION)
    for _ in range(int(rng.integers(3, 6))):
        cx = top[0] + rng.normal(0, 0.9) * k
        cy = cam.proj(X, hgt * rng.uniform(0.6, 0.95), Z)[1]
        cv.circle((cx, cy), rng.uniform(1.0, 2.0) * k, E.VEGETATION, _shade(green, rng.uniform(0.8, 1.15)), Z)


def _render_scene(rng: np.random.Generator, w: int, h: int, style: DomainStyle, feature: int,
                  night_mode: bool) -> _Canvas:
    """Compose one street scene; ``feature`` (0-3) forces train/truck/bus/motorcycle and wall vs fence."""
    cv = _Canvas(w, h, rng, style, night_mode)
    f = w * rng.uniform(*style.focal)
    hy = h * rng.uniform(*style.horizon)
    cam = _Camera(f, w * (0.5 + rng.uniform(-style.vp_jitter, style.vp_jitter)), hy, rng.uniform(*style.cam_height))
    zmin = f * cam.height / max(h - hy, 1.0)  # ground distance at the bottom row
    zfar = 300.0
    no_ttt = style.no_terrain_truck_train
    terrain = E.VEGETATION if no_ttt else E.TERRAIN

    # sky
    sky_name = "night" if night_mode else style.sky[int(rng.integers(len(style.sky)))]
    top, bottom = (np.array(c, np.float32) for c in _SKIES[sky_name])
    t = np.clip(np.arange(h, dtype=np.float32) / max(hy, 1.0), 0, 1)[:, None, None]
    cv.img[:] = top + (bottom - top) * t
    cv.palette = cv.palette.copy()
    cv.palette[int(E.SKY)] = bottom

    # far skyline on the horizon
    x = 0.0
    while x < w:
        bw = w * rng.uniform(0.03, 0.12)
        kind = rng.random()
        hh = h * rng.uniform(0.015, 0.12)
        if kind < 0.55:
            c = cv.colour(E.BUILDING, _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))] * 0.9)
            cv.poly([(x, hy - hh), (x + bw, hy - hh), (x + bw, hy + 2), (x, hy + 2)], E.BUILDING, c, zfar)
        elif kind < 0.9:
            cv.circle((x + bw / 2, hy - hh * 0.3), max(bw / 2, 2.0), E.VEGETATION, cv.colour(E.VEGETATION), zfar)
        else:
            cv.poly([(x + bw * 0.3, hy - hh * 1.5), (x + bw * 0.6, hy - hh * 1.5), (x + bw * 0.6, hy + 2),
                     (x + bw * 0.3, hy + 2)], E.VOID, cv.colour(E.VOID), zfar)
        x += bw

    # street geometry (metres): road [xl, xr], sidewalks, zone boundaries
    road_w = rng.uniform(*style.road_width)
    xl = -road_w * rng.uniform(0.3, 0.7)
    xr = xl + road_w
    swl, swr = rng.uniform(1.8, 4.0), rng.uniform(1.8, 4.0)
    edges = {-1: xl - swl, 1: xr + swr}  # outer sidewalk edge per side
    cv.poly([(0, hy), (w, hy), (w, h), (0, h)], E.SIDEWALK, cv.colour(E.SIDEWALK), 50.0)

    # side zones along depth
    z = zmin * 0.6
    bounds = [z]
    while z < 140:
        z += rng.uniform(8.0, 30.0)
        bounds.append(z)
    bounds[-1] = zfar
    zone_things: list[tuple[float, Callable[[], None]]] = []
    boundary_forced = "wall" if feature % 2 == 0 else "fence"
    forced_done = False
    for side in (-1, 1):
        xe = edges[side]
        for i, (z0, z1) in enumerate(zip(bounds[:-1], bounds[1:])):
            r = rng.random()
            if side == 1 and i == 0:
                r = 1.0  # the nearest right zone is always green: terrain + the forced wall/fence
            if r < style.building_prob:
                zone = "building"
            elif r < style.building_prob + 0.12:
                zone = "parking"
            else:
                zone = "green"
            if zone == "building":
                hb = rng.uniform(7.0, 26.0)
                col = cv.colour(E.BUILDING, _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))])
                bx0, bx1 = (xe - 18.0, xe) if side < 0 else (xe, xe + 18.0)

                def draw_building(bx0=bx0, bx1=bx1, z0=z0, z1=z1, hb=hb, col=col, xe=xe):
                    _box(cv, cam, bx0, bx1, 0.0, hb, z0 + 0.5, z1, E.BUILDING, col)
                    win = _shade(col, 0.45)
                    _window_grid(cv, cam, "x", xe, z0 + 0.5, min(z1, z0 + 60), 0.0, hb, win, 0.35)
                    _window_grid(cv, cam, "z", z0 + 0.5, bx0 + 0.5, bx1 - 0.5, 0.0, hb, win, 0.35)

                zone_things.append((z1 + 100.0, draw_building))
                continue
            ground_e = E.PARKING if zone == "parking" else terrain
            outer = xe + side * 60.0
            _ground(cv, cam, min(xe, outer), max(xe, outer), z0, z1, ground_e, cv.colour(ground_e))
            # boundary wall/fence, set back from the sidewalk so the zone's ground stays visible
            kind = None
            if not forced_done and (z0 < 40 or (side == 1 and i == 0)):
                kind, forced_done = boundary_forced, True
            elif rng.random() < 0.35:
                kind = "wall" if rng.random() < 0.5 else "fence"
            setback = rng.uniform(1.0, 6.0) if kind else 0.0
            if kind:
                bh = rng.uniform(0.8, 2.4) if kind == "wall" else rng.uniform(1.0, 2.0)
                bxe = xe + side * setback
                zone_things.append((z0 + 50.0, lambda kind=kind, bxe=bxe, z0=z0, z1=z1, bh=bh, side=side:
                                    _boundary(cv, cam, kind, bxe, side, z0, z1, bh)))
            if zone == "green":
                for _ in range(int(rng.integers(1, 4))):
                    tx = xe + side * (setback + rng.uniform(1.5, 12.0))
                    tz = rng.uniform(z0, z1)
                    zone_things.append((tz + 100.0, lambda tx=tx, tz=tz: _tree(cv, cam, tx, tz)))
                if rng.random() < 0.35:  # a far building behind the green
                    hb = rng.uniform(8.0, 20.0)
                    bx = xe + side * rng.uniform(15.0, 30.0)
                    col = cv.colour(E.BUILDING, _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))])
                    lo, hi = (bx - 15.0, bx) if side < 0 else (bx, bx + 15.0)
                    zone_things.append((z1 + 200.0, lambda lo=lo, hi=hi, z0=z0, z1=z1, hb=hb, col=col:
                                        _box(cv, cam, lo, hi, 0.0, hb, z0, z1, E.BUILDING, col)))
            else:  # parked cars in the parking area (void ground)
                for _ in range(int(rng.integers(1, 3))):
                    px = xe + side * (setback + rng.uniform(2.0, 8.0))
                    pz = rng.uniform(z0, max(z0 + 0.1, z1 - 5.0))
                    zone_things.append((pz + 60.0, lambda px=px, pz=pz: _vehicle(cv, cam, E.CAR, px, pz, False)))

    # the road surface and markings
    _ground(cv, cam, xl, xr, zmin * 0.5, zfar, E.ROAD, cv.colour(E.ROAD))
    _ground(cv, cam, xl - 0.25, xl, zmin * 0.5, zfar, E.CURB, cv.colour(E.CURB))
    _ground(cv, cam, xr, xr + 0.25, zmin * 0.5, zfar, E.CURB, cv.colour(E.CURB))
    mark = cv.colour(E.LANE_MARKING, jitter=3.0)
    if rng.random() < 0.45:  # bike lane along the right edge
        bz0 = zmin * rng.uniform(0.5, 2.0)
        _ground(cv, cam, xr - 1.6, xr, bz0, bz0 + rng.uniform(20, 80), E.BIKE_LANE,
                cv.colour(E.BIKE_LANE, (178, 82, 66) if rng.random() < 0.6 else (70, 150, 90)))
    n_lanes = max(2, int(road_w / 3.3))
    dash0 = rng.uniform(0, 9.0)
    for j in range(1, n_lanes):
        lx = xl + j * road_w / n_lanes
        zz = zmin * 0.6 + dash0
        while zz < 120:
            _ground(cv, cam, lx - 0.08, lx + 0.08, zz, zz + 3.0, E.LANE_MARKING, mark)
            zz += 9.0
    for ex in (xl + 0.3, xr - 0.45):
        _ground(cv, cam, ex, ex + 0.15, zmin * 0.5, 150.0, E.LANE_MARKING, mark)
    cross_z = None
    if rng.random() < 0.5:  # zebra crossing
        cross_z = zmin * rng.uniform(1.3, 4.0)
        sx = xl + 0.5
        while sx < xr - 0.5:
            _ground(cv, cam, sx, sx + 0.5, cross_z, cross_z + 4.0, E.CROSSWALK, mark)
            sx += 1.0
    if rng.random() < 0.5:  # manhole cover
        mx, mz = rng.uniform(xl + 1.0, xr - 1.0), zmin * rng.uniform(1.1, 3.0)
        ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        cv.poly(cam.proj(mx + 0.35 * np.cos(ang), np.zeros(16), mz + 0.35 * np.sin(ang)), E.MANHOLE,
                cv.colour(E.MANHOLE), mz)
    train_x = None
    if feature == 0 and not no_ttt:  # tram on rails in the road
        train_x = rng.uniform(xl + 1.5, xr - 1.5)
        _ground(cv, cam, train_x - 0.9, train_x + 0.9, zmin * 0.5, zfar, E.RAIL_TRACK, cv.colour(E.RAIL_TRACK))
        for rx in (train_x - 0.72, train_x + 0.65):
            _ground(cv, cam, rx, rx + 0.07, zmin * 0.5, zfar, None, (150.0, 150.0, 155.0))

    # per-row ground depth (for fog), then objects overwrite their own depth
    rows = np.arange(h, dtype=np.float32)
    ground_depth = np.where(rows > hy, f * cam.height / np.maximum(rows - hy, 0.5), _FAR).astype(np.float32)
    cv.depth = np.minimum(cv.depth, ground_depth[:, None]).astype(np.float32)

    # things: (depth for painter's order, draw function)
    things: list[tuple[float, Callable[[], None]]] = list(zone_things)
    lanes = [xl + (j + 0.5) * road_w / n_lanes for j in range(n_lanes)]
    zlo = zmin * 1.3
    for _ in range(int(rng.integers(style.cars[0], style.cars[1] + 1))):
        lx = lanes[int(rng.integers(n_lanes))] + rng.normal(0, 0.2)
        cz = zlo + rng.exponential(18.0)
        things.append((cz, lambda lx=lx, cz=cz: _vehicle(cv, cam, E.CAR, lx, cz, lx < 0)))
    big: list[E] = []
    if feature == 1 or rng.random() < 0.15:
        big.append(E.TRUCK)
    if feature == 2 or rng.random() < 0.15:
        big.append(E.BUS)
    if no_ttt:
        big = [E.BUS if b == E.TRUCK else b for b in big]
    for kind in big:
        lx = lanes[int(rng.integers(n_lanes))]
        cz = zlo * rng.uniform(1.5, 4.0)
        things.append((cz, lambda kind=kind, lx=lx, cz=cz: _vehicle(cv, cam, kind, lx, cz, lx < 0)))
    if train_x is not None:
        cz = zlo * rng.uniform(1.5, 3.5)
        things.append((cz, lambda cz=cz: _vehicle(cv, cam, E.TRAIN, train_x, cz, train_x < 0)))
    # riders (crossing, side view): bicycle always possible, motorcycle forced by feature 3
    riders = []
    if feature % 2 == 1 or rng.random() < 0.6:
        riders.append("bicycle")
    if feature == 3 or rng.random() < 0.2:
        riders.append("motorcycle")
    for vehicle in riders:
        rx = rng.uniform(xl + 0.5, xr - 0.5)
        rz = zlo * rng.uniform(1.0, 3.5)
        facing = 1.0 if rng.random() < 0.5 else -1.0

        def draw_rider(vehicle=vehicle, rx=rx, rz=rz, facing=facing):
            (_bicycle if vehicle == "bicycle" else _motorcycle)(cv, cam, rx, rz, facing)
            _person(cv, cam, rx, rz, E.RIDER, seated=True, facing=facing)

        things.append((rz, draw_rider))
    # pedestrians on the sidewalks (and on the crossing)
    for _ in range(int(rng.integers(1, 6))):
        side = -1 if rng.random() < 0.5 else 1
        px = (xl - rng.uniform(0.4, swl - 0.3)) if side < 0 else (xr + rng.uniform(0.4, swr - 0.3))
        pz = zlo + rng.exponential(12.0)
        things.append((pz, lambda px=px, pz=pz: _person(cv, cam, px, pz)))
    if cross_z is not None and rng.random() < 0.7:
        px = rng.uniform(xl + 1, xr - 1)
        things.append((cross_z + 2, lambda px=px: _person(cv, cam, px, cross_z + 2)))
    # parked bicycles / motorcycles on the sidewalk
    if rng.random() < 0.4:
        bx = xr + rng.uniform(0.5, swr - 0.5)
        bz = zlo * rng.uniform(1.0, 3.0)
        parked = _bicycle if rng.random() < 0.7 else _motorcycle
        things.append((bz, lambda bx=bx, bz=bz, parked=parked: parked(cv, cam, bx, bz, 1.0)))
    # poles: a traffic light and a sign in every image, plus street lights / plain poles
    pole_kinds = ["light", "sign"] + [["street", "plain", "sign", "light"][int(rng.integers(4))]
                                      for _ in range(int(rng.integers(1, 4)))]
    for kind in pole_kinds:
        side = -1 if rng.random() < 0.5 else 1
        px = (xl - rng.uniform(0.3, 0.8)) if side < 0 else (xr + rng.uniform(0.3, 0.8))
        pz = zlo * rng.uniform(1.0, 5.0)
        things.append((pz, lambda kind=kind, px=px, pz=pz, side=side: _pole(cv, cam, px, pz, -side, kind)))
    for _ in range(int(rng.integers(0, 3))):  # bins / bollards (static, void)
        side = -1 if rng.random() < 0.5 else 1
        sx = (xl - rng.uniform(0.5, 1.5)) if side < 0 else (xr + rng.uniform(0.5, 1.5))
        sz = zlo * rng.uniform(1.0, 4.0)
        things.append((sz, lambda sx=sx, sz=sz: _box(cv, cam, sx - 0.3, sx + 0.3, 0.0, 1.0, sz, sz + 0.6, E.STATIC,
                                                     cv.colour(E.STATIC))))
    for _, draw in sorted(things, key=lambda t: -t[0]):
        draw()

    # ego vehicle (Cityscapes) / dashboard (BDD)
    if style.hood != "none":
        frac = rng.uniform(0.04, 0.07) if style.hood == "ego" else rng.uniform(0.1, 0.16)
        xs = np.linspace(0, w, 24)
        bulge = frac * h * (1.0 - 0.55 * ((xs - w / 2) / (w / 2)) ** 2)
        pts = np.concatenate([np.stack([xs, h - bulge], 1), [[w, h + 1], [0, h + 1]]])
        cv.poly(pts, E.EGO, cv.colour(E.EGO, jitter=3.0), 0.5)
    return cv


def _boundary(cv: _Canvas, cam: _Camera, kind: str, xe: float, side: int, z0: float, z1: float, bh: float) -> None:
    """A wall or fence along the outer sidewalk edge (plane X = xe)."""
    e = E.WALL if kind == "wall" else E.FENCE
    col = cv.colour(e)
    x0, x1 = (xe - 0.25, xe) if side < 0 else (xe, xe + 0.25)
    _box(cv, cam, x0, x1, 0.0, bh, z0, z1, e, col)
    face_x = x1 if side < 0 else x0
    if kind == "fence":  # lattice (image only)
        light = _shade(col, 1.5)
        zz = z0
        while zz < min(z1, z0 + 40.0):
            a = cam.proj([face_x, face_x], [0.0, bh], [zz, zz + 0.8])
            b = cam.proj([face_x, face_x], [bh, 0.0], [zz, zz + 0.8])
            cv.line(a[0], a[1], 1, None, light)
            cv.line(b[0], b[1], 1, None, light)
            zz += 0.8
    else:  # block courses
        dark = _shade(col, 0.8)
        for yy in np.arange(0.4, bh, 0.4):
            a = cam.proj([face_x, face_x], [yy, yy], [z0, min(z1, z0 + 60.0)])
            cv.line(a[0], a[1], 1, None, dark)


# ----------------------------------------------------------------------------------------------
# Appearance post-processing and adverse conditions
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_INV = np.linalg.inv(_YIQ).astype(np.float32)


def _colour_matrix(sat: float, hue_deg: float, gain: np.ndarray) -> np.ndarray:
    a = math.radians(hue_deg)
    rot = np.array([[1, 0, 0], [0, math.cos(a) * sat, -math.sin(a) * sat], [0, math.sin(a) * sat, math.cos(a) * sat]],
                   np.float32)
    return (np.diag(gain).astype(np.float32) @ _YIQ_INV @ rot @ _YIQ).astype(np.float32)


def _as_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) if img.dtype != np.float32 else img.copy()


def fog(img: np.ndarray, depth: np.ndarray, rng: np.random.Generator, *, density: tuple[float, float] = (0.025, 0.06),
        airlight: tuple[float, float] = (185.0, 215.0)) -> np.ndarray:
    """Homogeneous fog (Koschmieder): I = I0*t + A*(1 - t), t = exp(-beta * depth[m])."""
    out = _as_float(img)
    beta = rng.uniform(*density)
    a = rng.uniform(*airlight)
    t = np.exp(-beta * np.minimum(depth, 400.0))[..., None].astype(np.float32)
    return out * t + np.float32(a) * (1.0 - t) * np.array([0.98, 1.0, 1.02], np.float32)


def night(img: np.ndarray, rng: np.random.Generator, *, lights=(), gain: tuple[float, float] = (0.16, 0.28)) -> np.ndarray:
    """Night: strong darkening with a blue cast, gamma, and glowing light sources.

    ``lights`` = iterable of (x, y, radius_px, rgb) (traffic lights, street lights, car lights)."""
    out = _as_float(img)
    g = rng.uniform(*gain)
    out = 255.0 * np.power(np.clip(out / 255.0, 0, 1), 1.3) * g * np.array([0.85, 0.92, 1.15], np.float32)
    if lights:
        glow = np.zeros_like(out)
        for x, y, r, c in lights:
            cv2.circle(glow, (int(round(x)), int(round(y))), max(int(round(r)), 1), tuple(float(v) for v in c), -1)
        halo = cv2.GaussianBlur(glow, (0, 0), 4.0)
        out = out + glow * 0.6 + halo * 1.2
    return out


def rain(img: np.ndarray, rng: np.random.Generator, *, streaks: int = 350) -> np.ndarray:
    """Rain: darker, desaturated, slightly blurred, with slanted bright streaks."""
    out = _as_float(img)
    h, w = out.shape[:2]
    lum = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    out = 0.75 * (0.6 * out + 0.4 * lum[..., None])
    out = cv2.GaussianBlur(out, (0, 0), 0.8)
    layer = np.zeros((h, w), np.float32)
    slant = rng.uniform(-0.35, 0.35)
    xs, ys = rng.uniform(0, w, streaks), rng.uniform(0, h, streaks)
    ls = rng.uniform(6, 18, streaks)
    for x, y, length in zip(xs, ys, ls):
        cv2.line(layer, (int(x), int(y)), (int(x + slant * length), int(y + length)), 1.0, 1)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.7)
    return out + layer[..., None] * 70.0


def snow(img: np.ndarray, rng: np.random.Generator, *, ground: np.ndarray | None = None, flakes: int = 500) -> np.ndarray:
    """Snow: bright low-contrast scene, snow cover on ``ground`` (bool mask), falling flakes."""
    out = _as_float(img)
    h, w = out.shape[:2]
    lum = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    out = 0.55 * out + 0.25 * lum[..., None] + 45.0
    if ground is not None:
        cover = cv2.resize(rng.uniform(0.3, 0.9, (h // 8 + 1, w // 8 + 1)).astype(np.float32), (w, h),
                           interpolation=cv2.INTER_LINEAR)
        cover = (cover * ground)[..., None]
        out = out * (1 - cover) + 235.0 * cover
    layer = np.zeros((h, w), np.float32)
    for x, y, r in zip(rng.uniform(0, w, flakes), rng.uniform(0, h, flakes), rng.uniform(0.6, 2.0, flakes)):
        cv2.circle(layer, (int(x), int(y)), int(round(r)), 1.0, -1)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.6)
    return out * (1 - 0.8 * layer[..., None]) + 250.0 * 0.8 * layer[..., None]


CONDITIONS: tuple[str, ...] = ("fog", "night", "rain", "snow")
_SNOW_GROUND = np.zeros(_N_ELEMENTS, bool)
_SNOW_GROUND[[int(E.SIDEWALK), int(E.TERRAIN), int(E.VEGETATION), int(E.CURB), int(E.PARKING), int(E.WALL)]] = True


def render_scene(seed, style: DomainStyle | str, *, feature: int = 0, condition: str | None = None,
                 night_mode: bool | None = None, with_depth: bool = False):
    """Render one scene: (image uint8[H,W,3] RGB, element map uint8[H,W] of ``E`` values), plus the depth
    map float32[H,W] in metres (sky and skyline at 1000) when ``with_depth``.

    ``seed`` is anything ``np.random.default_rng`` accepts; ``condition`` one of ``CONDITIONS``.
    """
    st = STYLES[style] if isinstance(style, str) else style
    rng = np.random.default_rng(seed)
    sizes = st.sizes
    w, h = sizes[int(rng.choice(len(sizes), p=st.size_probs or None))]
    if night_mode is None:
        night_mode = condition == "night" or (st.night_prob > 0 and rng.random() < st.night_prob)
    cv = _render_scene(rng, w, h, st, feature % 4, night_mode)
    img, lab = cv.img, cv.lab
    # texture (luminance noise, per-element amplitude)
    fine = cv2.resize(rng.standard_normal(((h + 1) // 2, (w + 1) // 2), dtype=np.float32), (w, h),
                      interpolation=cv2.INTER_LINEAR) * np.float32(1.6)
    low = cv2.resize(rng.standard_normal((h // 6 + 2, w // 6 + 2), dtype=np.float32), (w, h),
                     interpolation=cv2.INTER_LINEAR)
    amp = _TEXTURE[lab] * np.float32(st.texture)
    img += (fine * amp[..., 0] + low * amp[..., 1])[..., None]
    # domain colour transform
    gain = np.asarray(st.tint, np.float32) * np.float32(rng.uniform(*st.brightness))
    m = _colour_matrix(rng.uniform(*st.saturation), rng.uniform(*st.hue_shift), gain)
    con = float(rng.uniform(*st.contrast))
    affine = np.concatenate([m * con, np.full((3, 1), 128.0 * (1 - con), np.float32)], 1)
    img = cv2.transform(img, affine)
    if night_mode:
        img = night(img, rng, lights=cv.lights)
    if condition == "fog":
        img = fog(img, cv.depth, rng)
    elif condition == "rain":
        img = rain(img, rng)
    elif condition == "snow":
        img = snow(img, rng, ground=_SNOW_GROUND[lab].astype(np.float32))
    elif condition not in (None, "night"):
        raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
    if st.blur:
        img = cv2.GaussianBlur(img, (0, 0), st.blur)
    if st.sensor_noise:
        img += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(st.sensor_noise * (2.0 if night_mode else 1.0))
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return (img, lab, cv.depth) if with_depth else (img, lab)
