"""Synthetic N-, K- and S-like stand-in domains, written in the real datasets' on-disk formats.

The real NYU-v2, KITTI and ScanNet cannot be downloaded everywhere, so this module renders
procedural scenes with an exact, vectorized numpy ray caster (axis-aligned planes, boxes and
spheres) and writes them exactly like the real releases (see docs/DESIGN.md and
shared/reference/formats.md), so that loaders.py reads them with the real formats' rules.

Depth is the z-distance along the optical axis (the NYU/KITTI convention), obtained for free by
casting rays d = R @ ((u-cx)/fx, (v-cy)/fy, 1): the ray parameter t of a hit *is* its depth.

Monocular cues a network can learn: perspective of floors and roads, object sizes, textures
defined in world coordinates (so their image scale shrinks with distance, and they fade when a
pixel covers more than a texture period), shading by normal and light distance, haze outdoors.

Domains (per-scene randomness: sizes, object counts, colours, textures, lights):
  N  "nyu"      warm indoor rooms 3-8 m wide, up to 10 m deep; dense GT; NYU intrinsics 640x480.
  K  "kitti"    streets seen from 1.65 m; sparse LiDAR-like GT (scan lines), sky without GT; 1216x352.
  S  "scannet"  small cool-lit rooms up to ~6 m; noisy depth with holes; colour JPEG 1296x968.

Python API (the command is cli/synthetic.py, `python synthetic.py`):
  generate(out, n_train=300, n_test=100, seed=0, workers=None, replay_size=500, domains="NKS",
           scale=1.0, progress=True) -> meta dict (also written to <out>/meta.json)
  check_settings(n_train, n_test, replay_size, workers, scale, domains) -> domain letters
  check_out(out, letters, overwrite=False): refuses to write over a real dataset
  render_sample(domain, split, index, seed=0, scale=1.0) -> dict with the arrays of one sample
Settings that cannot work raise base.errors.InputError (the message names the command's option).
"""
import csv
import math
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import Pool
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from base.domains import SENSORS, Intrinsics, get_domain
from base.errors import InputError
from data.prepare import write_replay_csv
from base.safeio import check_folder, check_write, read_json, write_json

GENERATOR_VERSION = "1.0"
EPS = 1e-4                 # minimum ray parameter of a hit (metres of depth)
NEAR = 0.05                # near plane used when bounding primitives on screen
SPLITS = ("train", "test")
JPEG_QUALITY = 92
PNG_LEVEL = 1              # zlib level: noisy renders barely compress further, level 1 is fastest


# ============================================================================ domain table
@dataclass(frozen=True)
class DomainConfig:
    """Fixed facts of one synthetic domain (sizes at scale 1)."""
    name: str
    letter: str
    code: int                              # enters the per-image seed
    camera: Intrinsics                     # the depth map's (and the render's) camera at scale 1
    color_size: Tuple[int, int]            # (W, H) of the written colour image
    depth_range: Tuple[float, float]       # stated range of the written ground truth (metres)
    frames_per_scene: Dict[str, int]       # consecutive samples sharing one room / drive
    csv: Dict[str, str]                    # split -> index CSV name

    @property
    def size(self) -> Tuple[int, int]:
        """(W, H) of the render and of the depth map at scale 1."""
        return self.camera.size


def _config(letter: str, code: int, depth_range, frames_per_scene) -> DomainConfig:
    """A built-in domain's synthetic config: its sensor (base.domains.SENSORS) and CSV names (base/domains.py)."""
    sensor, spec = SENSORS[letter], get_domain(letter)
    return DomainConfig(spec.name, letter, code, sensor.depth, sensor.color_size, depth_range,
                        frames_per_scene,
                        {"train": spec.train_csv, "test": spec.test_csv, "replay": spec.replay_csv})


DOMAINS: Dict[str, DomainConfig] = {
    "N": _config("N", 1, (0.0, 10.0), {"train": 10, "test": 4}),
    "K": _config("K", 2, (0.0, 80.0), {"train": 50, "test": 20}),
    "S": _config("S", 3, (0.0, 6.5), {"train": 20, "test": 10}),
}
_BY_NAME = {c.name: c for c in DOMAINS.values()}


def get_config(domain: str) -> DomainConfig:
    """Domain by letter or name (case-insensitive)."""
    key = domain.strip()
    if key.upper() in DOMAINS:
        return DOMAINS[key.upper()]
    if key.lower() in _BY_NAME:
        return _BY_NAME[key.lower()]
    raise ValueError(f"unknown synthetic domain {domain!r}; expected one of N/nyu, K/kitti, S/scannet")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Generator seeded from (seed, keys...): results never depend on worker count or order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed)] + [int(k) for k in keys]))


def _scaled_size(size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    return max(8, int(round(size[0] * scale))), max(8, int(round(size[1] * scale)))


# ============================================================================ camera and rays
@dataclass(frozen=True, eq=False)
class RenderCamera(Intrinsics):
    """The renderer's camera: a pinhole (base.domains.Intrinsics: fx, fy, cx, cy, width, height) with
    a pose; R maps camera coordinates (x right, y down, z forward) to the world (y up), ``origin`` is
    its centre in the world."""
    R: np.ndarray
    origin: Tuple[float, float, float]


def _rot(axis: int, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation (radians). pitch > 0 looks down, yaw > 0 turns towards +x."""
    flip = np.diag([1.0, -1.0, 1.0])   # camera y points down, world y up
    return _rot(1, yaw) @ _rot(0, pitch) @ _rot(2, roll) @ flip


def make_camera(cfg: DomainConfig, scale: float, origin, yaw, pitch, roll) -> RenderCamera:
    """Camera of a domain at `scale` (intrinsics scaled with the image)."""
    k = cfg.camera.resized(*_scaled_size(cfg.size, scale))
    return RenderCamera(k.fx, k.fy, k.cx, k.cy, k.width, k.height, camera_rotation(yaw, pitch, roll),
                        tuple(float(o) for o in origin))


@lru_cache(maxsize=8)
def _pixel_grid(w: int, h: int, fx: float, fy: float, cx: float, cy: float):
    """Normalized image coordinates as broadcastable (1,W) and (H,1) float32 arrays, and |d|^2
    of the camera-frame rays (x, y, 1) as a flat (H*W,) array (rotation does not change it)."""
    xn = ((np.arange(w, dtype=np.float32) - np.float32(cx)) / np.float32(fx))[None, :]
    yn = ((np.arange(h, dtype=np.float32) - np.float32(cy)) / np.float32(fy))[:, None]
    d2 = (xn * xn + yn * yn + 1).ravel()
    return xn, yn, d2, np.sqrt(d2)


class Rays:
    """World-space rays of every pixel as three (H,W) float32 arrays; t along d equals depth."""

    def __init__(self, cam: RenderCamera):
        xn, yn, self.d2, self.dn = _pixel_grid(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy)
        R = cam.R
        # Python floats keep the float32 dtype of the grids (numpy 2 promotion rules).
        self.d = [float(R[i, 0]) * xn + float(R[i, 1]) * yn + float(R[i, 2]) for i in range(3)]
        self.o = cam.origin
        with np.errstate(divide="ignore"):
            self.inv = [np.float32(1.0) / d for d in self.d]


class Hits:
    """Closest-hit buffers: depth t (inf = miss), material id (-1 = miss), the axis (0,1,2) the
    surface (mostly) faces, and explicit normals only for curved surfaces: a flat axis-aligned
    face's normal follows from its axis and the ray (see normals), which saves most writes."""

    def __init__(self, h: int, w: int):
        self.t = np.full((h, w), np.inf, np.float32)
        self.mat = np.full((h, w), -1, np.int16)
        self.axis = np.zeros((h, w), np.int8)
        self.curved = np.zeros((h, w), bool)
        self.cn = [np.zeros((h, w), np.float32) for _ in range(3)]

    def write(self, sl, hit, t, mat, axis, normal=None) -> None:
        """Store hits (mask `hit` over window `sl`): t, material, axis (+ normal if curved)."""
        np.copyto(self.t[sl], t, where=hit)
        np.copyto(self.mat[sl], mat, where=hit)
        np.copyto(self.axis[sl], axis, where=hit)
        np.copyto(self.curved[sl], normal is not None, where=hit)
        if normal is not None:
            for k in range(3):
                np.copyto(self.cn[k][sl], normal[k], where=hit)

    def normals(self, d: List[np.ndarray]) -> List[np.ndarray]:
        """Flat (N,) normal components: -sign(ray) on the face axis, stored ones where curved."""
        ax = self.axis.ravel()
        n = [np.where(ax == k, -np.sign(d[k]), np.float32(0)) for k in range(3)]
        cv = np.flatnonzero(self.curved.ravel())
        if cv.size:
            for k in range(3):
                n[k][cv] = self.cn[k].ravel()[cv]
        return n


# ============================================================================ scenes
@dataclass
class Material:
    """Albedo c1/c2 mixed by a world-space pattern of feature size `scale` (metres)."""
    c1: Tuple[float, float, float]
    c2: Tuple[float, float, float]
    pattern: str = "plain"
    scale: float = 1.0
    noise: float = 0.0          # amplitude of a multiplicative low-frequency albedo variation
    noise_scale: float = 0.5    # its feature size (metres)
    emit: float = 0.0           # self-illumination (lamps, windows, screens)
    salt: int = 0               # varies hashes and noise between materials
    extra: tuple = ()           # pattern-specific parameters


@dataclass
class Scene:
    """Axis-aligned planes, boxes and spheres with materials and a lighting description."""
    materials: List[Material] = field(default_factory=list)
    planes: List[Tuple[int, float, int]] = field(default_factory=list)
    boxes: List[Tuple[float, float, float, float, float, float, int]] = field(default_factory=list)
    spheres: List[Tuple[float, float, float, float, int]] = field(default_factory=list)
    light: dict = field(default_factory=dict)
    room: Optional[tuple] = None   # (lo, hi, wall, floor, ceiling material): a box seen from inside

    def mat(self, c1, c2=None, pattern="plain", scale=1.0, noise=0.0, noise_scale=0.5, emit=0.0,
            extra=()) -> int:
        """Add a material; returns its id."""
        c2 = c1 if c2 is None else c2
        self.materials.append(Material(tuple(map(float, c1)), tuple(map(float, c2)), pattern, float(scale),
                                       float(noise), float(noise_scale), float(emit),
                                       len(self.materials) * 7919 + 11, tuple(extra)))
        return len(self.materials) - 1

    def box(self, lo, hi, m: int) -> None:
        """Add an axis-aligned box (lo, hi corners)."""
        self.boxes.append((*map(float, lo), *map(float, hi), int(m)))

    def sphere(self, c, r: float, m: int) -> None:
        self.spheres.append((*map(float, c), float(r), int(m)))

    def plane(self, axis: int, value: float, m: int) -> None:
        """Infinite plane {p[axis] = value} (a road)."""
        self.planes.append((int(axis), float(value), int(m)))

    def set_room(self, lo, hi, wall: int, floor: int, ceiling: int) -> None:
        """The enclosing room: an axis-aligned box seen from inside (camera must be inside)."""
        self.room = (tuple(map(float, lo)), tuple(map(float, hi)), int(wall), int(floor), int(ceiling))


# ============================================================================ ray casting
_CORNER_BITS = np.array([[(i >> k) & 1 for k in range(3)] for i in range(8)], bool)      # (8,3)
_EDGES = np.array([(i, i | b) for i in range(8) for b in (1, 2, 4) if not i & b])         # (12,2)


def screen_windows(cam: RenderCamera, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Pixel windows (v0, v1, u0, u1) bounding boxes lo/hi (N,3) on screen; v1 == v0 if invisible.

    Exact for boxes that cross the camera plane: the box is clipped at the near plane (its corners
    in front plus the points where its 12 edges cross the near plane), so big boxes beside the
    camera (sidewalks, walls) only test the pixels they can cover.
    """
    n = len(lo)
    out = np.zeros((n, 4), np.int64)
    if n == 0:
        return out
    corners = np.where(_CORNER_BITS[None], hi[:, None, :], lo[:, None, :])         # (N,8,3)
    c = (corners - np.asarray(cam.origin)) @ cam.R                                # camera coords
    z = c[..., 2]
    a, b = c[:, _EDGES[:, 0]], c[:, _EDGES[:, 1]]                                 # (N,12,3)
    za, zb = a[..., 2], b[..., 2]
    cross = (za > NEAR) != (zb > NEAR)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(cross, (NEAR - za) / (zb - za), 0.0)
    e = a + s[..., None] * (b - a)
    pts = np.concatenate([c, e], 1)                                               # (N,20,3)
    ok = np.concatenate([z > NEAR, cross], 1)
    pz = np.where(ok, np.maximum(pts[..., 2], NEAR), 1.0)
    u = cam.fx * pts[..., 0] / pz + cam.cx
    v = cam.fy * pts[..., 1] / pz + cam.cy
    big = 1e9
    u0 = np.where(ok, u, big).min(1)
    u1 = np.where(ok, u, -big).max(1)
    v0 = np.where(ok, v, big).min(1)
    v1 = np.where(ok, v, -big).max(1)
    out[:, 0] = np.clip(np.floor(v0) - 1, 0, cam.height)
    out[:, 1] = np.clip(np.ceil(v1) + 2, 0, cam.height)
    out[:, 2] = np.clip(np.floor(u0) - 1, 0, cam.width)
    out[:, 3] = np.clip(np.ceil(u1) + 2, 0, cam.width)
    bad = ~ok.any(1) | (out[:, 1] <= out[:, 0]) | (out[:, 3] <= out[:, 2])
    out[bad, 1] = out[bad, 0]
    return out


_ALL = (slice(None), slice(None))


def _cast_planes(hits: Hits, rays: Rays, planes) -> None:
    for axis, value, m in planes:
        t = (np.float32(value - rays.o[axis])) * rays.inv[axis]
        hit = (t > EPS) & (t < hits.t)
        hits.write(_ALL, hit, t, m, axis)


def _cast_room(hits: Hits, rays: Rays, room) -> None:
    """Exit point of every ray from the enclosing room: per axis the plane ahead of the ray
    (the larger of the two slab distances), then the nearest of the three. First writer, so the
    buffers are filled directly instead of through masks (a third of the work of six planes)."""
    lo, hi, wall, floor, ceiling = room
    o = rays.o
    with np.errstate(invalid="ignore"):
        tk = [np.maximum(np.float32(lo[k] - o[k]) * rays.inv[k], np.float32(hi[k] - o[k]) * rays.inv[k])
              for k in range(3)]
    t = np.minimum(np.minimum(tk[0], tk[1]), tk[2])
    on_y = tk[1] == t
    on_x = (tk[0] == t) & ~on_y
    on_z = ~(on_x | on_y)
    hits.t[...] = t
    hits.axis[...] = on_y.view(np.int8) + 2 * on_z.view(np.int8)
    up = rays.d[1] > 0
    hits.mat[...] = np.where(on_y, np.where(up, np.int16(ceiling), np.int16(floor)), np.int16(wall))


def _cast_boxes(hits: Hits, rays: Rays, cam: RenderCamera, boxes: np.ndarray) -> None:
    """Slab test of every box, restricted to its screen window."""
    if len(boxes) == 0:
        return
    lo, hi, mats = boxes[:, 0:3], boxes[:, 3:6], boxes[:, 6].astype(np.int64)
    win = screen_windows(cam, lo, hi)
    o = rays.o
    for i in np.flatnonzero(win[:, 1] > win[:, 0]):
        v0, v1, u0, u1 = win[i]
        sl = (slice(v0, v1), slice(u0, u1))
        tmin, tmax = [], []
        for k in range(3):
            inv = rays.inv[k][sl]
            with np.errstate(invalid="ignore"):
                a = np.float32(lo[i, k] - o[k]) * inv
                b = np.float32(hi[i, k] - o[k]) * inv
            tmin.append(np.minimum(a, b))
            tmax.append(np.maximum(a, b))
        tn = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
        tf = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
        hit = (tn <= tf) & (tn > EPS) & (tn < hits.t[sl])
        if not hit.any():
            continue
        # The entry face is the slab whose near distance is the largest.
        isx = tmin[0] == tn
        isy = (tmin[1] == tn) & ~isx
        isz = ~(isx | isy)
        hits.write(sl, hit, tn, mats[i], isy.view(np.int8) + 2 * isz.view(np.int8))


def _cast_spheres(hits: Hits, rays: Rays, cam: RenderCamera, spheres: np.ndarray) -> None:
    if len(spheres) == 0:
        return
    ctr, r = spheres[:, 0:3], spheres[:, 3:4]
    win = screen_windows(cam, ctr - r, ctr + r)
    o = np.asarray(rays.o)
    for i in np.flatnonzero(win[:, 1] > win[:, 0]):
        v0, v1, u0, u1 = win[i]
        sl = (slice(v0, v1), slice(u0, u1))
        dx, dy, dz = (d[sl] for d in rays.d)
        oc = [np.float32(x) for x in o - ctr[i]]
        a = dx * dx + dy * dy + dz * dz
        b = dx * oc[0] + dy * oc[1] + dz * oc[2]
        c = np.float32(oc[0] ** 2 + oc[1] ** 2 + oc[2] ** 2 - r[i, 0] ** 2)
        disc = b * b - a * c
        t = (-b - np.sqrt(np.maximum(disc, 0))) / a
        hit = (disc >= 0) & (t > EPS) & (t < hits.t[sl])
        if not hit.any():
            continue
        rr = np.float32(1.0 / r[i, 0])
        normal = [(np.float32(o[k] - ctr[i, k]) + t * d) * rr for k, d in enumerate((dx, dy, dz))]
        an = [np.abs(x) for x in normal]
        axis = np.where((an[1] >= an[0]) & (an[1] >= an[2]), 1, np.where(an[0] >= an[2], 0, 2)).astype(np.int8)
        hits.write(sl, hit, t, int(spheres[i, 4]), axis, normal)


def _drop_enclosing(boxes: np.ndarray, origin, margin: float) -> np.ndarray:
    """Boxes whose (margin-grown) volume contains the camera would fill the view from inside: drop."""
    if len(boxes) == 0:
        return boxes
    o = np.asarray(origin)
    inside = np.all((boxes[:, 0:3] - margin < o) & (o < boxes[:, 3:6] + margin), axis=1)
    return boxes[~inside]


def cast(scene: Scene, cam: RenderCamera, boxes: Optional[np.ndarray] = None) -> Tuple[Rays, Hits]:
    """Closest hits of all pixels against the scene (boxes: optional pre-culled (N,7) array)."""
    rays = Rays(cam)
    hits = Hits(cam.height, cam.width)
    if scene.room is not None:
        _cast_room(hits, rays, scene.room)
    _cast_planes(hits, rays, scene.planes)
    if boxes is None:
        boxes = np.asarray(scene.boxes, np.float64).reshape(-1, 7)
    _cast_boxes(hits, rays, cam, boxes)
    _cast_spheres(hits, rays, cam, np.asarray(scene.spheres, np.float64).reshape(-1, 5))
    return rays, hits


# ============================================================================ textures
NOISE_CELL = 16      # texels per noise feature in the lookup table
NOISE_PERIOD = 128   # features per table period


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """Periodic smooth value noise, precomputed once as a flat (2048*2048,) float32 table.

    Rendering then samples it with one gather per pixel (nearest texel, 16 texels per feature,
    so the quantization is invisible) instead of interpolating a lattice per pixel: cheaper
    (measured: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments).
    """
    lattice = np.random.default_rng(20250101).random((NOISE_PERIOD, NOISE_PERIOD))
    x = np.arange(NOISE_PERIOD * NOISE_CELL) / NOISE_CELL
    i0 = np.floor(x).astype(np.int64)
    f = x - i0
    f = f * f * (3 - 2 * f)                                   # smoothstep: no creases
    i1 = (i0 + 1) % NOISE_PERIOD
    rows = lattice[i0] * (1 - f)[:, None] + lattice[i1] * f[:, None]        # interpolate along x
    table = rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]       # then along y
    return table.astype(np.float32).ravel()


def value_noise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0,1] with unit feature size (period NOISE_PERIOD)."""
    size = NOISE_PERIOD * NOISE_CELL
    i = (x * np.float32(NOISE_CELL)).astype(np.int32) & (size - 1)
    j = (y * np.float32(NOISE_CELL)).astype(np.int32) & (size - 1)
    return _noise_table()[i * size + j]


def fbm(x: np.ndarray, y: np.ndarray, octaves: int = 2) -> np.ndarray:
    """Fractal sum of value noise, normalized to about [0,1]."""
    total, amp, norm = 0.0, 1.0, 0.0
    for k in range(octaves):
        f = np.float32(2.0 ** k)
        total = total + amp * value_noise(x * f + np.float32(17.3 * k), y * f + np.float32(5.1 * k))
        norm += amp
        amp *= 0.5
    return total / np.float32(norm)


def hash01(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0,1) per integer cell (a, b)."""
    x = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (salt * 83492791)
    x &= 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0x5BD1E995) & 0xFFFFFFFF
    x ^= x >> 15
    return (x & 0xFFFF).astype(np.float32) * np.float32(1 / 65536)


def _frac(x):
    return x - np.floor(x)


# Mean mix factor of each pattern: what a texture fades to when a pixel covers many periods.
PATTERN_MEAN = {"checker": 0.5, "stripes": 0.5, "planks": 0.35, "tiles": 0.22, "noise": 0.5, "panels": 0.05,
                "books": 0.6, "windows": 0.25, "band": 0.5}


def _pattern(m: Material, u: np.ndarray, v: np.ndarray):
    """Mix factor in [0,1] of c1 -> c2 at texture coordinates (u, v)."""
    s = np.float32(m.scale)
    p = m.pattern
    if p == "checker":
        return ((np.floor(u / s) + np.floor(v / s)) % 2).astype(np.float32)
    if p == "stripes":
        return (np.floor(u / s) % 2).astype(np.float32)
    if p == "planks":          # floor boards: per-board shade, dark seams; u across boards
        i = np.floor(u / s)
        off = hash01(i, i, m.salt) * 7
        j = np.floor(v / (s * 7) + off)
        seam = (_frac(u / s) < 0.06) | (_frac(v / (s * 7) + off) < 0.01)
        return np.where(seam, np.float32(1.0), 0.6 * hash01(i, j, m.salt))
    if p == "tiles":           # tiles with grout lines
        gu, gv = _frac(u / s), _frac(v / s)
        grout = (gu < 0.05) | (gv < 0.05)
        shade = 0.25 * hash01(np.floor(u / s), np.floor(v / s), m.salt)
        return np.where(grout, np.float32(1.0), shade)
    if p == "noise":
        return fbm(u / s + np.float32(m.salt % 97), v / s)
    if p == "panels":          # cabinet doors / drawers: thin dark seams
        return ((_frac(u / s) < 0.025) | (_frac(v / (s * 1.3)) < 0.025)).astype(np.float32)
    if p == "books":           # shelf boards (c1) and book spines of random shade (c2)
        board = _frac(v / 0.38) < 0.09
        spine = hash01(np.floor(u / s), np.floor(v / 0.38), m.salt)
        return np.where(board, np.float32(0.0), 0.35 + 0.65 * spine)
    if p == "windows":         # facade windows (c2) on a grid of floors; extra = (spacing, ground floor)
        spacing, ground = m.extra
        win = ((np.abs(_frac(u / np.float32(spacing)) - 0.5) < 0.22) & (np.abs(_frac(v / s) - 0.55) < 0.22)
               & (v > ground))
        return win.astype(np.float32)
    if p == "band":            # horizontal band: c2 above height extra[0] (wainscot)
        return (v > m.extra[0]).astype(np.float32)
    raise ValueError(f"unknown pattern {p!r}")


def _road_albedo(m: Material, x: np.ndarray, z: np.ndarray) -> List[np.ndarray]:
    """Ground plane of a street: asphalt, lane markings, verges; extra = (half width, dashed centre).
    Returns three channel arrays."""
    half, centre = m.extra
    ax = np.abs(x)
    road = ax < half
    grain = value_noise(x / np.float32(0.5), z / np.float32(0.5) + np.float32(m.salt % 53))
    grain = np.where(road, 0.8 + 0.4 * grain, 0.5 + 1.0 * grain)
    mark = np.abs(ax - (half - 0.3)) < 0.08
    if centre:
        mark |= (ax < 0.07) & (_frac(z / np.float32(9.0)) < 0.35)
    return [np.where(mark, np.float32(0.85), np.where(road, np.float32(a), np.float32(b)) * grain)
            for a, b in zip(m.c1, m.c2)]


# ============================================================================ shading
def _faded_pattern(m: Material, u, v, foot) -> np.ndarray:
    """Pattern mix where the texture is resolved; where a pixel covers more than about a period
    it fades to the pattern's mean instead of aliasing (and is not even evaluated)."""
    mean = np.float32(PATTERN_MEAN[m.pattern])
    fade = np.clip(1.3 - np.float32(1.5 / m.scale) * foot, 0, 1)
    live = np.flatnonzero(fade > 0)
    if live.size == fade.size:
        return mean + (_pattern(m, u, v) - mean) * fade
    mix = np.full(fade.size, mean, np.float32)
    if live.size:
        mix[live] = mean + (_pattern(m, u[live], v[live]) - mean) * fade[live]
    return mix


def _material_tables(scene: Scene):
    """Per-material c1, c2 - c1 (3, M+1) and emission (M+1,); the extra last column is what
    misses (material -1) index: zeros."""
    c1 = np.zeros((3, len(scene.materials) + 1), np.float32)
    dc = np.zeros_like(c1)
    emit = np.zeros(len(scene.materials) + 1, np.float32)
    for i, m in enumerate(scene.materials):
        c1[:, i] = m.c1
        dc[:, i] = np.subtract(m.c2, m.c1)
        emit[i] = m.emit
    return c1, dc, emit


def _albedo(scene: Scene, hits: Hits, p, u, v, foot):
    """Planar albedo (3,N), multiplicative variation (N,) and self-illumination (N,).

    Patterns and noise are evaluated per material on its pixels (grouped by one argsort); the
    colours then come from small per-material tables, which is cheaper than scattering three
    colour channels per material.
    """
    npx = hits.t.size
    mix = np.zeros(npx, np.float32)
    mod = np.ones(npx, np.float32)
    mat = hits.mat.ravel()
    order = np.argsort(mat, kind="stable")
    counts = np.bincount(mat.astype(np.int64) + 1, minlength=len(scene.materials) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    roads = []
    for mi, m in enumerate(scene.materials):
        idx = order[starts[mi + 1]:starts[mi + 2]]
        if idx.size == 0 or (m.pattern == "plain" and m.noise == 0):
            continue
        uu, vv = u[idx], v[idx]
        if m.pattern == "road":
            roads.append((m, idx))
        elif m.pattern != "plain":
            mix[idx] = _faded_pattern(m, uu, vv, foot[idx])
        if m.noise > 0:
            ns = np.float32(1.0 / m.noise_scale)
            n = value_noise(uu * ns + np.float32(m.salt % 101), vv * ns)
            mod[idx] = (1 - m.noise) + np.float32(2 * m.noise) * n
    c1, dc, emit_t = _material_tables(scene)
    albedo = np.empty((3, npx), np.float32)
    for c in range(3):
        np.multiply(dc[c].take(mat), mix, out=albedo[c])
        albedo[c] += c1[c].take(mat)
    for m, idx in roads:
        for c, ch in enumerate(_road_albedo(m, p[0][idx], p[2][idx])):
            albedo[c, idx] = ch
    emit = emit_t.take(mat) if emit_t.any() else np.zeros(npx, np.float32)
    return albedo, mod, emit


def _light_indoor(light: dict, p, n) -> np.ndarray:
    """Scalar irradiance: ambient (brighter facing up) + point lights with distance falloff,
    darkened near the room's edges (ambient occlusion: a cheap, strong cue to the layout)."""
    px, py, pz = p
    nx, ny, nz = n
    out = np.float32(light["ambient"]) * (0.8 + 0.2 * ny)
    for (lx, ly, lz), power in light["points"]:
        vx, vy, vz = np.float32(lx) - px, np.float32(ly) - py, np.float32(lz) - pz
        d2 = vx * vx + vy * vy + vz * vz
        ndl = np.maximum(nx * vx + ny * vy + nz * vz, 0) / np.sqrt(d2 + np.float32(1e-3))
        out += ndl * np.float32(power) / (1 + d2 * np.float32(light["falloff"]))
    xmin, xmax, ymax, zmin, zmax = light["room"]
    # Distances to the walls/floor/ceiling; a surface's own plane (distance ~0) does not count.
    dx = np.float32(xmax) - np.abs(px)
    dy = np.minimum(py, np.float32(ymax) - py)
    dz = np.minimum(pz - np.float32(zmin), np.float32(zmax) - pz)
    dmin = np.minimum(np.minimum(np.where(dx < 0.01, 9, dx), np.where(dy < 0.01, 9, dy)),
                      np.where(dz < 0.01, 9, dz))
    out *= 1 - 0.35 * np.exp(dmin * np.float32(-2.5))
    return out


def _light_outdoor(light: dict, n) -> np.ndarray:
    """Scalar irradiance: sun (Lambert) + sky ambient."""
    sx, sy, sz = (np.float32(x * light["sun"]) for x in light["sun_dir"])
    ndl = np.maximum(n[0] * sx + n[1] * sy + n[2] * sz, 0)
    return ndl + np.float32(light["ambient"]) * (0.75 + 0.25 * n[1])


def _sky(light: dict, d) -> List[np.ndarray]:
    """Sky colour (three channel arrays) of rays d: horizon-to-zenith gradient with soft clouds."""
    dx, dy, dz = d
    el = np.clip(dy / np.sqrt(dx * dx + dy * dy + dz * dz), 0, 1)
    w = np.sqrt(el)
    k = 0.8 / np.maximum(dy, np.float32(0.02))
    cloud = np.clip((fbm(dx * k, dz * k, 2) - np.float32(light["cloud_cover"])) * 3, 0, 1) * 0.8
    out = []
    for top, hor in zip(light["sky_top"], light["sky_horizon"]):
        col = np.float32(hor) + np.float32(top - hor) * w
        out.append((col + (np.float32(0.95) - col) * cloud) * np.float32(light["sun"]))
    return out


def shade(scene: Scene, cam: RenderCamera, rays: Rays, hits: Hits) -> np.ndarray:
    """Linear RGB, planar (3,H,W) float32, of the cast scene before exposure and tint."""
    mat = hits.mat.ravel()
    hit = mat >= 0
    t = hits.t.ravel().copy()
    t[~hit] = 0
    d = [x.ravel() for x in rays.d]
    n = hits.normals(d)
    p = [np.float32(rays.o[k]) + t * d[k] for k in range(3)]
    axis = hits.axis.ravel()
    # Texture coordinates on the facing plane; u is horizontal on walls.
    u = p[0].copy()
    np.copyto(u, p[2], where=axis == 0)
    v = p[1].copy()
    np.copyto(v, p[2], where=axis == 1)
    # Metres covered by one pixel on the surface (grazing angles stretch it).
    ndotd = np.abs(n[0] * d[0] + n[1] * d[1] + n[2] * d[2])
    foot = t * rays.d2 / (np.float32(cam.fx) * np.maximum(ndotd, np.float32(0.15) * rays.dn))
    albedo, mod, emit = _albedo(scene, hits, p, u, v, foot)
    light = scene.light
    if light["kind"] == "indoor":
        irr = (_light_indoor(light, p, n) + emit) * mod
        rgb = albedo * irr
    else:
        irr = (_light_outdoor(light, n) + emit) * mod
        rgb = albedo * irr
        # Aerial perspective: distant surfaces fade towards the horizon colour.
        haze = 1 - np.exp(t * rays.dn * np.float32(-1.0 / light["haze"]))
        hc = np.asarray(light["sky_horizon"], np.float32)[:, None] * np.float32(light["sun"])
        rgb += (hc - rgb) * haze
        miss = np.flatnonzero(~hit)
        if miss.size:
            for c, ch in enumerate(_sky(light, [x[miss] for x in d])):
                rgb[c, miss] = ch
    return rgb.reshape(3, cam.height, cam.width)


@lru_cache(maxsize=8)
def _vignette(w: int, h: int, strength: float) -> np.ndarray:
    x = (np.arange(w, dtype=np.float32) - w / 2) / (w / 2)
    y = (np.arange(h, dtype=np.float32) - h / 2) / (w / 2)
    return (1 - strength * (x[None, :] ** 2 + y[:, None] ** 2)).astype(np.float32)


def develop(rgb: np.ndarray, rng: np.random.Generator, target: float, vignette: float,
            noise: float, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Auto-exposure to a mean brightness, tint, vignetting, sensor noise and a sqrt tone curve:
    planar linear (3,H,W) (non-negative) -> uint8 (H,W,3)."""
    _, h, w = rgb.shape
    mean = float(rgb[:, ::4, ::4].mean()) + 1e-6
    gain = _vignette(w, h, vignette) * np.float32(target ** 2 / mean * 1.4 * 255 ** 2)
    # One luminance noise field (plus the rounding offset): cheap, and no image is perfectly clean.
    offset = rng.standard_normal((h, w), dtype=np.float32) * np.float32(noise * 255) + np.float32(0.5)
    out = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        x = np.sqrt(rgb[c] * (gain * np.float32(tint[c])))
        x += offset
        out[..., c] = np.clip(x, 0, 255)
    return out


# ============================================================================ colour helpers
def _jit(rng, rgb, amount=0.12, bright=(0.85, 1.15)):
    """Colour jitter: per-channel and overall brightness factors."""
    c = np.asarray(rgb, float) * rng.uniform(1 - amount, 1 + amount, 3) * rng.uniform(*bright)
    return tuple(np.clip(c, 0.01, 1.0))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


# ============================================================================ indoor rooms
# Palettes (linear-ish albedo).  N: warm, saturated wood and fabrics; S: cool greys, whites, blues.
STYLE_N = {
    "width": (3.0, 8.0), "depth": (3.5, 9.6), "height": (2.5, 3.2),
    "walls": [(0.80, 0.70, 0.55), (0.85, 0.78, 0.62), (0.75, 0.62, 0.48), (0.82, 0.74, 0.66),
              (0.70, 0.66, 0.52), (0.78, 0.60, 0.45), (0.62, 0.55, 0.45)],
    "wall_patterns": [("plain", 1.0), ("stripes", 0.12), ("noise", 0.35), ("band", 1.0)],
    "floors": [("planks", (0.50, 0.32, 0.18), (0.25, 0.14, 0.07), 0.15),
               ("planks", (0.62, 0.45, 0.28), (0.35, 0.22, 0.12), 0.12),
               ("tiles", (0.70, 0.45, 0.32), (0.35, 0.28, 0.22), 0.40),
               ("noise", (0.55, 0.25, 0.18), (0.35, 0.18, 0.12), 0.08),
               ("checker", (0.75, 0.68, 0.55), (0.40, 0.30, 0.22), 0.30)],
    "ceiling": (0.85, 0.80, 0.70),
    "wood": [(0.45, 0.28, 0.15), (0.60, 0.42, 0.25), (0.30, 0.18, 0.10), (0.70, 0.55, 0.35)],
    "fabric": [(0.60, 0.20, 0.15), (0.70, 0.50, 0.25), (0.45, 0.35, 0.20), (0.55, 0.45, 0.35),
               (0.35, 0.40, 0.25), (0.75, 0.65, 0.50)],
    "light_color": (1.0, 0.80, 0.58), "tint": (1.0, 0.86, 0.68),
    "ambient": (0.15, 0.3), "falloff": (0.08, 0.2),
    "types": ["bedroom", "living_room", "kitchen", "dining_room", "office", "study", "bookstore"],
}
STYLE_S = {
    "width": (2.4, 5.0), "depth": (2.5, 6.2), "height": (2.3, 2.8),
    "walls": [(0.80, 0.82, 0.85), (0.70, 0.74, 0.78), (0.78, 0.82, 0.80), (0.65, 0.70, 0.78),
              (0.86, 0.86, 0.86), (0.60, 0.66, 0.70)],
    "wall_patterns": [("plain", 1.0), ("plain", 1.0), ("noise", 0.6), ("panels", 1.2)],
    "floors": [("checker", (0.40, 0.42, 0.46), (0.30, 0.32, 0.36), 0.5),
               ("noise", (0.45, 0.47, 0.50), (0.30, 0.32, 0.36), 0.04),
               ("planks", (0.62, 0.58, 0.52), (0.45, 0.42, 0.38), 0.20),
               ("tiles", (0.75, 0.76, 0.78), (0.45, 0.47, 0.50), 0.30),
               ("noise", (0.30, 0.35, 0.45), (0.20, 0.22, 0.30), 0.05)],
    "ceiling": (0.88, 0.90, 0.92),
    "wood": [(0.70, 0.62, 0.50), (0.55, 0.55, 0.55), (0.85, 0.85, 0.85), (0.25, 0.25, 0.27)],
    "fabric": [(0.15, 0.15, 0.18), (0.20, 0.30, 0.50), (0.45, 0.50, 0.55), (0.30, 0.45, 0.45),
               (0.60, 0.62, 0.66), (0.55, 0.25, 0.25)],
    "light_color": (0.82, 0.92, 1.0), "tint": (0.9, 0.96, 1.05),
    "ambient": (0.35, 0.55), "falloff": (0.05, 0.12),
    "types": ["office", "bedroom", "lounge", "conference_room", "kitchen", "bathroom", "classroom"],
}


class _Room:
    """Helper that places furniture in a wall-relative frame (a along the wall, b out of it)."""

    def __init__(self, scene: Scene, w: float, dep: float, ht: float):
        self.s, self.w, self.d, self.h = scene, w, dep, ht
        self.footprints: List[Tuple[float, float, float, float]] = []

    def add(self, wall, a0, a1, b0, b1, y0, y1, m, zfree=0.0):
        """Box in wall coordinates; wall in left/right/far/free (free: b towards -z from zfree)."""
        if wall == "left":
            lo, hi = (-self.w / 2 + b0, y0, a0), (-self.w / 2 + b1, y1, a1)
        elif wall == "right":
            lo, hi = (self.w / 2 - b1, y0, a0), (self.w / 2 - b0, y1, a1)
        elif wall == "far":
            lo, hi = (a0, y0, self.d - b1), (a1, y1, self.d - b0)
        else:
            lo, hi = (a0, y0, zfree - b1), (a1, y1, zfree - b0)
        self.s.box(lo, hi, m)
        if y0 < 1.9:   # things the handheld camera must not stand in
            self.footprints.append((lo[0], hi[0], lo[2], hi[2]))


@dataclass
class _Spot:
    """Where a piece of furniture goes: the room, its wall, and materials/randomness to use."""
    room: "_Room"
    rng: np.random.Generator
    wall: str
    zf: float
    mats: dict

    def add(self, *box) -> None:
        """Box (a0, a1, b0, b1, y0, y1, material) in the wall's frame."""
        self.room.add(self.wall, *box, zfree=self.zf)


def _table(sp: _Spot, a0: float) -> float:
    rng, m = sp.rng, sp.mats
    L, D, H = rng.uniform(0.8, 1.8), rng.uniform(0.6, 1.0), rng.uniform(0.70, 0.78)
    b = rng.uniform(0.0, 0.4) if sp.wall != "free" else 0.0
    sp.add(a0, a0 + L, b, b + D, H - 0.04, H, m["wood"])
    for la, lb in ((a0, b), (a0 + L - 0.05, b), (a0, b + D - 0.05), (a0 + L - 0.05, b + D - 0.05)):
        sp.add(la, la + 0.05, lb, lb + 0.05, 0, H - 0.04, m["wood"])
    if rng.random() < 0.6:   # things on the table
        for _ in range(int(rng.integers(1, 4))):
            x = rng.uniform(a0 + 0.1, a0 + L - 0.3)
            sp.add(x, x + rng.uniform(0.1, 0.3), 0.1, rng.uniform(0.25, 0.5), H, H + rng.uniform(0.03, 0.3),
                   _pick(rng, [m["fabric"], m["accent"], m["dark"]]))
    return L


def _desk(sp: _Spot, a0: float) -> float:
    L = _table(sp, a0)
    if sp.rng.random() < 0.8:   # monitor
        x = a0 + sp.rng.uniform(0.1, max(0.15, L - 0.6))
        sp.add(x, x + 0.5, 0.1, 0.14, 0.9, 1.2, sp.mats["screen"])
    return L


def _chair(sp: _Spot, a0: float) -> float:
    rng, m = sp.rng, sp.mats
    S, H = rng.uniform(0.42, 0.5), rng.uniform(0.42, 0.48)
    b = rng.uniform(0.5, 1.0) if sp.wall != "free" else rng.uniform(0.0, 0.4)
    sp.add(a0, a0 + S, b, b + S, H - 0.06, H, m["fabric"])
    sp.add(a0, a0 + S, b + S - 0.05, b + S, H, H + rng.uniform(0.35, 0.5), m["fabric"])
    for la, lb in ((a0, b), (a0 + S - 0.04, b), (a0, b + S - 0.04), (a0 + S - 0.04, b + S - 0.04)):
        sp.add(la, la + 0.04, lb, lb + 0.04, 0, H - 0.06, m["dark"])
    return S


def _cabinet(sp: _Spot, a0: float) -> float:
    L, D, H = sp.rng.uniform(0.5, 1.4), sp.rng.uniform(0.4, 0.6), sp.rng.uniform(0.7, 2.1)
    sp.add(a0, a0 + L, 0, D, 0, H, sp.mats["cabinet"])
    return L


def _shelf(sp: _Spot, a0: float) -> float:
    L, H = sp.rng.uniform(0.7, 1.6), sp.rng.uniform(1.5, 2.2)
    sp.add(a0, a0 + L, 0, 0.35, 0, H, sp.mats["books"])
    return L


def _bed(sp: _Spot, a0: float) -> float:
    rng, m = sp.rng, sp.mats
    L, D = rng.uniform(1.0, 1.8), rng.uniform(1.9, 2.1)
    sp.add(a0, a0 + L, 0, D, 0, 0.3, m["wood"])
    sp.add(a0 + 0.02, a0 + L - 0.02, 0.05, D - 0.02, 0.3, 0.52, m["bedding"])
    sp.add(a0, a0 + L, 0, 0.06, 0, rng.uniform(0.8, 1.2), m["wood"])                  # headboard
    sp.add(a0 + 0.1, a0 + L / 2 - 0.05, 0.1, 0.5, 0.52, 0.66, m["pillow"])
    sp.add(a0 + L / 2 + 0.05, a0 + L - 0.1, 0.1, 0.5, 0.52, 0.66, m["pillow"])
    return L


def _sofa(sp: _Spot, a0: float) -> float:
    rng, fabric = sp.rng, sp.mats["fabric"]
    L, D = rng.uniform(1.5, 2.6), rng.uniform(0.8, 1.0)
    sp.add(a0, a0 + L, 0, D, 0.05, 0.45, fabric)
    sp.add(a0, a0 + L, 0, 0.22, 0.45, rng.uniform(0.8, 0.95), fabric)
    sp.add(a0, a0 + 0.18, 0, D, 0.45, 0.65, fabric)
    sp.add(a0 + L - 0.18, a0 + L, 0, D, 0.45, 0.65, fabric)
    return L


def _counter(sp: _Spot, a0: float) -> float:
    """Kitchen: base cabinets with a worktop, wall cabinets above."""
    L, m = sp.rng.uniform(1.5, 3.5), sp.mats
    sp.add(a0, a0 + L, 0, 0.6, 0, 0.88, m["cabinet"])
    sp.add(a0, a0 + L, 0, 0.62, 0.88, 0.92, m["accent"])
    sp.add(a0, a0 + L, 0, 0.35, 1.45, 2.1, m["cabinet"])
    return L


def _bin(sp: _Spot, a0: float) -> float:
    S = sp.rng.uniform(0.25, 0.4)
    sp.add(a0, a0 + S, 0.05, 0.05 + S, 0, sp.rng.uniform(0.3, 0.6), sp.mats["accent"])
    return S


def _ball(sp: _Spot, a0: float) -> float:
    """A round object (ball, pouf, vase) on the floor: non-planar shading."""
    r = sp.rng.uniform(0.08, 0.2)
    sp.room.s.sphere(_wall_point(sp.room, sp.wall, a0 + r, r + 0.1, sp.zf, r), r, sp.mats["accent"])
    return 2 * r


_FURNITURE = {"table": _table, "desk": _desk, "chair": _chair, "cabinet": _cabinet, "shelf": _shelf,
              "bed": _bed, "sofa": _sofa, "counter": _counter, "bin": _bin, "ball": _ball}


def _furniture(room: _Room, rng, kind: str, wall: str, a0: float, zf: float, mats) -> float:
    """Add one piece at position a0 along `wall`; returns its length along the wall."""
    return _FURNITURE[kind](_Spot(room, rng, wall, zf, mats), a0)


def _wall_point(room: _Room, wall: str, a: float, b: float, zf: float, y: float):
    if wall == "left":
        return (-room.w / 2 + b, y, a)
    if wall == "right":
        return (room.w / 2 - b, y, a)
    if wall == "far":
        return (a, y, room.d - b)
    return (a, y, zf - b)


_KINDS = {   # furniture mix per room type: (kind, weight)
    "bedroom": [("bed", 3), ("cabinet", 2), ("shelf", 1), ("desk", 1), ("chair", 1), ("ball", 1)],
    "living_room": [("sofa", 3), ("table", 2), ("cabinet", 2), ("shelf", 1), ("chair", 1), ("ball", 1)],
    "lounge": [("sofa", 3), ("table", 2), ("chair", 2), ("bin", 1), ("ball", 1)],
    "kitchen": [("counter", 4), ("table", 1), ("chair", 1), ("cabinet", 2), ("bin", 1)],
    "dining_room": [("table", 3), ("chair", 3), ("cabinet", 2), ("ball", 1)],
    "office": [("desk", 4), ("chair", 3), ("cabinet", 2), ("shelf", 1), ("bin", 1)],
    "study": [("desk", 3), ("shelf", 3), ("chair", 2), ("ball", 1)],
    "bookstore": [("shelf", 6), ("table", 1), ("chair", 1)],
    "conference_room": [("table", 3), ("chair", 4), ("cabinet", 1), ("bin", 1)],
    "bathroom": [("cabinet", 3), ("bin", 2), ("counter", 2), ("ball", 1)],
    "classroom": [("desk", 4), ("chair", 4), ("shelf", 1), ("bin", 1)],
}


def _room_materials(scene: Scene, rng, style) -> dict:
    """Per-room materials drawn from the style's palette."""
    j = lambda c, a=0.12: _jit(rng, c, a)   # noqa: E731
    wall_c = j(_pick(rng, style["walls"]), 0.08)
    pat, ps = _pick(rng, style["wall_patterns"])
    wall_c2 = _jit(rng, wall_c, 0.1, (0.75, 0.92))
    extra = (rng.uniform(0.8, 1.1),) if pat == "band" else ()
    fk, f1, f2, fs = _pick(rng, style["floors"])
    mats = {
        "wall": scene.mat(wall_c, wall_c2, pat, ps * rng.uniform(0.8, 1.25), noise=0.06, noise_scale=0.8,
                          extra=extra),
        "floor": scene.mat(j(f1), j(f2), fk, fs * rng.uniform(0.8, 1.25), noise=0.1, noise_scale=0.7),
        "ceiling": scene.mat(j(style["ceiling"], 0.04), None, "plain", 1.0, noise=0.03),
        "wood": scene.mat(j(_pick(rng, style["wood"])), None, "noise", 0.05, noise=0.12, noise_scale=0.3),
        "fabric": scene.mat(j(_pick(rng, style["fabric"])), None, "noise", 0.03, noise=0.1),
        "dark": scene.mat(j((0.08, 0.08, 0.09)), None),
        "accent": scene.mat(j(_pick(rng, style["fabric"] + style["wood"]), 0.3), None, "noise", 0.1, noise=0.15),
        "cabinet": scene.mat(j(_pick(rng, style["wood"])), j((0.1, 0.1, 0.1)), "panels", rng.uniform(0.4, 0.6)),
        "books": scene.mat(j(_pick(rng, style["wood"])), j(_pick(rng, style["fabric"]), 0.3), "books", 0.04),
        "bedding": scene.mat(j((0.85, 0.82, 0.78)), j(_pick(rng, style["fabric"])),
                             _pick(rng, ["plain", "stripes", "checker"]),
                             0.15, noise=0.05),
        "pillow": scene.mat(j((0.9, 0.88, 0.84)), None),
        "screen": scene.mat((0.03, 0.03, 0.04), (0.2, 0.3, 0.45), "noise", 0.2, emit=rng.uniform(0, 1.5)),
        "picture": scene.mat(j(_pick(rng, style["fabric"]), 0.4), j(_pick(rng, style["fabric"]), 0.4), "noise", 0.08),
        "door": scene.mat(j(_pick(rng, style["wood"])), None, "panels", 0.45),
        "window": scene.mat((0.85, 0.9, 1.0), (0.5, 0.55, 0.6), "noise", 0.4, emit=rng.uniform(2.0, 4.0)),
        "lamp": scene.mat(style["light_color"], None, emit=6.0),
    }
    return mats


def _place_along_walls(room: _Room, rng, rtype: str, mats, cam_zone: float) -> None:
    """Fill the walls (and the room's middle) with furniture of the room type."""
    kinds, weights = zip(*_KINDS[rtype])
    prob = np.asarray(weights, float) / sum(weights)
    walls = [("far", -room.w / 2 + 0.1, room.w / 2 - 0.1), ("left", 0.2, room.d - 0.2),
             ("right", 0.2, room.d - 0.2)]
    for wall, start, end in walls:
        a = start + rng.uniform(0, 0.8)
        while a < end - 0.5:
            if rng.random() < 0.7:
                kind = kinds[rng.choice(len(kinds), p=prob)]
                a += _furniture(room, rng, kind, wall, a, 0.0, mats) + rng.uniform(0.05, 0.6)
            else:
                a += rng.uniform(0.4, 1.2)
    # Free-standing pieces in the middle, beyond the camera zone.
    for _ in range(int(rng.integers(0, 4))):
        zf = rng.uniform(cam_zone + 1.2, max(cam_zone + 1.3, room.d - 1.0))
        a = rng.uniform(-room.w / 2 + 0.8, max(-room.w / 2 + 0.9, room.w / 2 - 2.0))
        kind = kinds[rng.choice(len(kinds), p=prob)]
        _furniture(room, rng, kind, "free", a, zf, mats)


def _wall_decor(room: _Room, rng, mats) -> None:
    """Pictures, doors and windows: thin boxes on the walls (no footprint)."""
    for _ in range(int(rng.integers(1, 6))):
        wall = _pick(rng, ["left", "right", "far"])
        span = room.w if wall == "far" else room.d
        lo_a = -span / 2 if wall == "far" else 0.0
        kind = rng.choice(["picture", "picture", "door", "window"])
        if kind == "door":
            L, y0, y1 = 0.9, 0.0, 2.05
        elif kind == "window":
            L, y0 = rng.uniform(0.8, 2.0), rng.uniform(0.8, 1.1)
            y1 = min(room.h - 0.2, y0 + rng.uniform(1.0, 1.6))
        else:
            L, y0 = rng.uniform(0.3, 1.2), rng.uniform(1.2, 1.6)
            y1 = y0 + rng.uniform(0.3, 0.8)
        a = lo_a + rng.uniform(0.2, max(0.3, span - L - 0.2))
        n0 = len(room.footprints)
        room.add(wall, a, a + L, 0, 0.03, y0, y1, mats[kind])
        del room.footprints[n0:]   # flat on the wall: never blocks the camera


@lru_cache(maxsize=4)
def build_room(seed: int, letter: str, split: int, scene_idx: int):
    """One room (shared by the frames of a scene): Scene, room type, dims, camera-free footprints."""
    style = STYLE_N if letter == "N" else STYLE_S
    rng = _rng(seed, DOMAINS[letter].code, split, 0, scene_idx)
    w, dep, ht = (rng.uniform(*style[k]) for k in ("width", "depth", "height"))
    rtype = _pick(rng, style["types"])
    scene = Scene()
    mats = _room_materials(scene, rng, style)
    # The room from inside: six planes; the nearest positive hit is the wall that is seen.
    scene.set_room((-w / 2, 0.0, 0.0), (w / 2, ht, dep), mats["wall"], mats["floor"], mats["ceiling"])
    room = _Room(scene, w, dep, ht)
    cam_zone = min(1.4, dep * 0.3)
    _place_along_walls(room, rng, rtype, mats, cam_zone)
    _wall_decor(room, rng, mats)
    lights = _room_lights(scene, rng, w, dep, ht, mats)
    scene.light = {"kind": "indoor", "points": lights, "ambient": rng.uniform(*style["ambient"]),
                   "tint": _jit(rng, style["tint"], 0.04, (1.0, 1.0)), "falloff": rng.uniform(*style["falloff"]),
                   "room": (-w / 2, w / 2, ht, 0.0, dep)}
    return scene, rtype, (w, dep, ht), tuple(room.footprints)


def _room_lights(scene: Scene, rng, w, dep, ht, mats):
    """Ceiling lights (visible as emissive boxes) -> point lights just below them."""
    lights = []
    n = int(rng.integers(1, 3))
    for _ in range(n):
        x, z = rng.uniform(-w / 2 + 0.5, w / 2 - 0.5), rng.uniform(0.8, dep - 0.5)
        sz = rng.uniform(0.2, 0.6)
        scene.box((x - sz, ht - 0.04, z - sz), (x + sz, ht, z + sz), mats["lamp"])
        lights.append(((x, ht - 0.3, z), rng.uniform(2.0, 4.0) / n ** 0.5))
    return lights


def _indoor_camera(cfg, rng, scale, dims, footprints, letter):
    """Camera pose inside the room, not standing in furniture (rejection sampling)."""
    w, dep, ht = dims
    fp = np.asarray(footprints, float).reshape(-1, 4)
    margin = 0.45
    for _ in range(50):
        x = rng.uniform(-w / 2 + 0.6, w / 2 - 0.6)
        z = rng.uniform(0.25, min(1.4, dep * 0.3))
        if not np.any((fp[:, 0] - margin < x) & (x < fp[:, 1] + margin)
                      & (fp[:, 2] - margin < z) & (z < fp[:, 3] + margin)):
            break
    if letter == "N":   # tripod-like Kinect captures: level-ish
        y, yaw = rng.uniform(1.0, 1.6), rng.uniform(-0.6, 0.6)
        pitch, roll = rng.uniform(-0.08, 0.25), rng.uniform(-0.05, 0.05)
    else:               # handheld scanning: lower/higher, looking down more, more roll
        y, yaw = rng.uniform(0.9, 1.8), rng.uniform(-0.7, 0.7)
        pitch, roll = rng.uniform(0.0, 0.55), rng.uniform(-0.14, 0.14)
    return make_camera(cfg, scale, (x, y, z), yaw, pitch, roll)


# ============================================================================ streets
CAR_COLORS = [(0.8, 0.8, 0.8), (0.55, 0.56, 0.58), (0.06, 0.06, 0.07), (0.5, 0.06, 0.05),
              (0.08, 0.15, 0.4), (0.7, 0.68, 0.6), (0.2, 0.22, 0.25), (0.85, 0.85, 0.9)]
FACADES = [(0.75, 0.70, 0.60), (0.65, 0.45, 0.35), (0.80, 0.78, 0.72), (0.55, 0.55, 0.55),
           (0.72, 0.62, 0.45), (0.62, 0.35, 0.28), (0.85, 0.82, 0.70)]


@lru_cache(maxsize=4)
def build_street(seed: int, split: int, drive: int, n_frames: int):
    """One drive's street: Scene, boxes array (N,7), lane/step info (fixed by seed/split/drive)."""
    rng = _rng(seed, DOMAINS["K"].code, split, 0, drive)
    half, side_w = rng.uniform(3.5, 7.5), rng.uniform(1.5, 3.5)
    step = rng.uniform(3.0, 6.0)                    # metres between saved frames
    length = n_frames * step + 260
    s = Scene()
    road = s.mat(_jit(rng, (0.22, 0.22, 0.23), 0.05), _jit(rng, (0.25, 0.32, 0.12), 0.2), "road", 1.0,
                 extra=(half, bool(half > 4.5)))
    s.plane(1, 0.0, road)
    walk = s.mat(_jit(rng, (0.5, 0.49, 0.47), 0.05), _jit(rng, (0.4, 0.39, 0.37), 0.05), "tiles",
                 rng.uniform(0.3, 0.5), noise=0.1)
    for side in (-1, 1):
        for z0 in np.arange(-40.0, length, 15.0):   # sidewalk in segments: cheap screen windows
            _sbox(s, side, half, half + side_w, 0, 0.14, z0, z0 + 15.0, walk)
        _street_side(s, rng, side, half, side_w, length)
    # Driving lane: clear of the parked cars (inner edge at half - 2 m) and of the lane cars.
    lane = rng.uniform(-(half - 2.9), half - 2.9)
    _cars(s, rng, half, length, lane)
    sun_el, sun_az = rng.uniform(0.3, 1.1), rng.uniform(-math.pi, math.pi)
    s.light = {"kind": "outdoor", "sun_dir": (math.cos(sun_el) * math.sin(sun_az), math.sin(sun_el),
                                              math.cos(sun_el) * math.cos(sun_az)),
               "sun": rng.uniform(0.8, 1.2), "tint": _jit(rng, (1.0, 0.98, 0.94), 0.03, (1.0, 1.0)),
               "ambient": rng.uniform(0.35, 0.55),
               "sky_top": _jit(rng, (0.35, 0.55, 0.9), 0.1), "sky_horizon": _jit(rng, (0.8, 0.85, 0.9), 0.05),
               "haze": rng.uniform(150, 400), "cloud_cover": rng.uniform(0.35, 0.75)}
    boxes = np.asarray(s.boxes, np.float64).reshape(-1, 7)
    return s, boxes, {"step": step, "lane": lane, "half": half}


def _sbox(s: Scene, side: int, x0, x1, y0, y1, z0, z1, m) -> None:
    """Box on one side of the road: x0/x1 are distances from the road centre."""
    if side > 0:
        s.box((x0, y0, z0), (x1, y1, z1), m)
    else:
        s.box((-x1, y0, z0), (-x0, y1, z1), m)


def _street_side(s: Scene, rng, side: int, half: float, side_w: float, length: float) -> None:
    """Buildings, gaps, trees, fences and poles along one side."""
    kerb = half + side_w
    z = -40.0
    foliage = s.mat(_jit(rng, (0.18, 0.3, 0.1), 0.2), _jit(rng, (0.1, 0.18, 0.06), 0.2), "noise", 0.6, noise=0.2)
    trunk = s.mat(_jit(rng, (0.25, 0.18, 0.12)), None, "noise", 0.1)
    metal = s.mat(_jit(rng, (0.4, 0.42, 0.45)), None)
    while z < length:
        kind = rng.choice(["building", "building", "building", "trees", "gap", "fence"])
        L = rng.uniform(6, 25)
        if kind == "building":
            back = kerb + rng.uniform(0, 4)
            fl = rng.uniform(2.8, 3.6)
            fac = s.mat(_jit(rng, _pick(rng, FACADES)), _jit(rng, (0.12, 0.15, 0.2), 0.3), "windows", fl,
                        noise=0.08, noise_scale=1.5, extra=(rng.uniform(1.8, 3.2), rng.uniform(0.0, 3.0)))
            _sbox(s, side, back, back + 12, 0, rng.uniform(4, 20), z, z + L, fac)
        elif kind == "trees":
            for tz in np.arange(z + 2, z + L, rng.uniform(4, 8)):
                tx = kerb + rng.uniform(0.5, 4)
                th, r = rng.uniform(1.5, 3.0), rng.uniform(1.2, 2.6)
                _sbox(s, side, tx - 0.15, tx + 0.15, 0, th + r * 0.5, tz - 0.15, tz + 0.15, trunk)
                s.sphere((side * tx, th + r * 0.8, tz), r, foliage)
        elif kind == "fence":
            fm = s.mat(_jit(rng, _pick(rng, FACADES)), None, "stripes", 0.15, noise=0.1)
            x = kerb + rng.uniform(0, 1)
            _sbox(s, side, x, x + 0.1, 0, rng.uniform(0.8, 2.0), z, z + L, fm)
        z += L + (rng.uniform(0, 6) if rng.random() < 0.4 else 0)
    for pz in np.arange(-20.0 + rng.uniform(0, 20), length, rng.uniform(20, 45)):   # lamp posts
        ph = rng.uniform(4, 8)
        _sbox(s, side, half + 0.3, half + 0.45, 0, ph, pz, pz + 0.15, metal)
        _sbox(s, side, half - 1.2, half + 0.45, ph - 0.15, ph, pz, pz + 0.15, metal)


def _cars(s: Scene, rng, half: float, length: float, lane: float) -> None:
    """Parked cars along both kerbs and a few cars in other lanes (body, cabin, wheels, shadow)."""
    shadow = s.mat((0.03, 0.03, 0.03), None)
    tyre = s.mat((0.04, 0.04, 0.04), None)
    glass = s.mat((0.05, 0.07, 0.09), (0.2, 0.25, 0.3), "noise", 0.5)
    spots = []
    for side in (-1, 1):
        for z in np.arange(-30.0, length, 5.5):
            if rng.random() < 0.45:
                spots.append((side * (half - 1.05), z))
    for _ in range(int(length / 25)):
        x = rng.uniform(-half + 1.2, half - 1.2)
        if abs(x - lane) > 2.4:   # never in the camera's own lane (it would drive into it)
            spots.append((x, rng.uniform(10, length)))
    for x, z in spots:
        L, W = rng.uniform(3.8, 4.8), rng.uniform(1.65, 1.9)
        body = s.mat(_jit(rng, _pick(rng, CAR_COLORS), 0.05), None, "noise", 0.3, noise=0.05)
        s.box((x - W / 2 - 0.15, 0, z - 0.15), (x + W / 2 + 0.15, 0.01, z + L + 0.15), shadow)
        s.box((x - W / 2, 0.3, z), (x + W / 2, rng.uniform(0.9, 1.05), z + L), body)
        c0 = z + rng.uniform(0.7, 1.2)
        s.box((x - W / 2 + 0.1, 0.9, c0), (x + W / 2 - 0.1, rng.uniform(1.35, 1.55), c0 + rng.uniform(1.8, 2.5)),
              glass)
        for wz in (z + 0.5, z + L - 1.1):
            s.box((x - W / 2 - 0.02, 0, wz), (x + W / 2 + 0.02, 0.62, wz + 0.62), tyre)


def _street_camera(cfg, rng, scale, info, frame: int):
    """Camera 1.65 m above the road, driving along +z (small yaw, pitch, roll)."""
    z = 5.0 + frame * info["step"]
    x = info["lane"] + rng.uniform(-0.3, 0.3)
    pose = (x, 1.65 + rng.uniform(-0.03, 0.03), z)
    return make_camera(cfg, scale, pose, rng.uniform(-0.05, 0.05), rng.uniform(-0.02, 0.02),
                       rng.uniform(-0.012, 0.012))


# HDL-64E beam elevations (degrees): upper block 2 .. -8.33 by 1/3, lower block -8.83 .. -24.33 by 1/2.
_BEAMS = np.concatenate([2.0 - np.arange(32) / 3.0, -8.83 - np.arange(32) * 0.5])
AZIMUTH_STEP_DEG = 0.1


def lidar_mask(cam: RenderCamera, yaw: float, scale: float, rng: np.random.Generator, drop: float = 0.03) -> np.ndarray:
    """Pixels hit by a level 64-beam scanner at the camera (bool (H,W)).

    At reduced scale every round(1/scale)-th beam is kept and the azimuth step grows by 1/scale,
    so the fraction of pixels with ground truth stays about the same at every scale.
    """
    keep = max(1, int(round(1.0 / scale)))
    el = np.deg2rad(_BEAMS[::keep])[:, None]
    az = np.deg2rad(np.arange(-50.0, 50.0, AZIMUTH_STEP_DEG / scale))[None, :]
    # Directions in the vehicle frame (world y up), turned by the vehicle heading.
    d = np.stack([np.cos(el) * np.sin(az + yaw), np.sin(el) * np.ones_like(az),
                  np.cos(el) * np.cos(az + yaw)], -1).reshape(-1, 3)
    c = d @ cam.R
    ok = c[:, 2] > 1e-3
    u = np.round(cam.fx * c[ok, 0] / c[ok, 2] + cam.cx).astype(np.int64)
    v = np.round(cam.fy * c[ok, 1] / c[ok, 2] + cam.cy).astype(np.int64)
    inb = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    inb &= rng.random(inb.shape) >= drop            # occasional lost returns
    mask = np.zeros((cam.height, cam.width), bool)
    mask[v[inb], u[inb]] = True
    return mask


# ============================================================================ samples
def _scene_of(cfg: DomainConfig, split: str, index: int) -> Tuple[int, int]:
    fps = cfg.frames_per_scene[split]
    return index // fps, index % fps


def render_sample(domain: str, split: str, index: int, seed: int = 0, scale: float = 1.0) -> dict:
    """Render one sample. Returns image (uint8 HxWx3 at the written colour size), depth (float32
    metres exactly as a reader decodes the written file, 0 = none), depth_exact (float32, inf = sky),
    scene (scene/drive index), frame (index within it) and the camera."""
    cfg = get_config(domain)
    sp = SPLITS.index(split)
    scene_idx, frame = _scene_of(cfg, split, index)
    rng = _rng(seed, cfg.code, sp, 1, index)
    if cfg.letter == "K":
        return _render_street(cfg, seed, sp, scene_idx, frame, rng, scale, split)
    return _render_room(cfg, seed, sp, scene_idx, frame, rng, scale, split)


def _render_room(cfg, seed, sp, scene_idx, frame, rng, scale, split) -> dict:
    scene, rtype, dims, footprints = build_room(seed, cfg.letter, sp, scene_idx)
    cam = _indoor_camera(cfg, rng, scale, dims, footprints, cfg.letter)
    boxes = _drop_enclosing(np.asarray(scene.boxes, np.float64).reshape(-1, 7), cam.origin, 0.1)
    rays, hits = cast(scene, cam, boxes)
    rgb = shade(scene, cam, rays, hits)
    exact = hits.t
    if cfg.letter == "N":
        image = develop(rgb, rng, rng.uniform(0.38, 0.5), 0.25, 0.012, scene.light["tint"])
        depth = _quantize_nyu(exact, split)
    else:
        image = develop(rgb, rng, rng.uniform(0.45, 0.58), 0.15, 0.025, scene.light["tint"])
        depth = _scannet_depth(exact, image, rng)
        image = np.asarray(Image.fromarray(image).resize(_scaled_size(cfg.color_size, scale), Image.BILINEAR))
    return {"image": image, "depth": depth, "depth_exact": exact, "scene": scene_idx, "frame": frame,
            "room_type": rtype, "camera": cam}


def _quantize_nyu(exact: np.ndarray, split: str) -> np.ndarray:
    """Depth as decoded from NYU files: train 8-bit (v/255*10 m), test 16-bit mm; clipped to 10 m."""
    z = np.minimum(exact, 10.0)
    if split == "train":
        return (np.clip(np.round(z / 10.0 * 255.0), 1, 255) * (10.0 / 255.0)).astype(np.float32)
    return (np.clip(np.round(z * 1000.0), 1, 10000) / 1000.0).astype(np.float32)


@lru_cache(maxsize=4)
def _pixel_coords(w: int, h: int):
    """Column and row index of every pixel as broadcastable float32 arrays."""
    return np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]


def _scannet_depth(exact: np.ndarray, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Structure-sensor-like depth: depth-dependent noise, holes, lost dark/bright/edge/far pixels."""
    h, w = exact.shape
    z = np.where(np.isfinite(exact), exact, 0).astype(np.float32)
    noisy = z + rng.standard_normal((h, w), dtype=np.float32) * (0.002 + 0.003 * z + 0.0015 * z * z)
    drop = z < 0.4                                             # below the minimum range
    # Far range: returns thin out from ~5.3 m and vanish past 6.5 m.
    coin = rng.random((h, w), dtype=np.float32)                # shared by the random drops below
    drop |= coin < np.clip((z - 5.3) / 1.0, 0, 1)
    # Random blobs: thresholded low-frequency noise at a random offset (features ~1/16 of the width).
    xs, ys = _pixel_coords(w, h)
    ox, oy = rng.uniform(0, NOISE_PERIOD, 2)
    k = np.float32(16.0 / w)
    drop |= value_noise(ys * k + np.float32(oy), xs * k + np.float32(ox)) > rng.uniform(0.8, 0.9)
    # Very dark (absorbing) and saturated (specular) surfaces return nothing.
    lum = image.mean(2)
    drop |= ((lum < 18) | (lum > 248)) & (coin < 0.7)
    # Depth discontinuities: mixed pixels are discarded.
    gx = np.abs(np.diff(z, axis=1, append=z[:, -1:]))
    gy = np.abs(np.diff(z, axis=0, append=z[-1:, :]))
    drop |= np.maximum(gx, gy) > 0.04 * np.maximum(z, 0.5)
    noisy = np.where(drop | (noisy > 6.5), 0, noisy)
    return (np.clip(np.round(noisy * 1000.0), 0, 65535) / 1000.0).astype(np.float32)


def _render_street(cfg, seed, sp, drive, frame, rng, scale, split) -> dict:
    scene, boxes, info = build_street(seed, sp, drive, cfg.frames_per_scene[split])
    cam = _street_camera(cfg, rng, scale, info, frame)
    cz = cam.origin[2]
    near = boxes[(boxes[:, 5] > cz - 5) & (boxes[:, 2] < cz + 220)]   # cull by distance along the road
    near = _drop_enclosing(near, cam.origin, 0.05)
    sph = np.asarray(scene.spheres, np.float64).reshape(-1, 5)
    sub = Scene(scene.materials, scene.planes, [], [tuple(r) for r in sph[np.abs(sph[:, 2] - cz - 100) < 110]],
                scene.light)
    rays, hits = cast(sub, cam, near)
    rgb = shade(sub, cam, rays, hits)
    image = develop(rgb, rng, rng.uniform(0.42, 0.55), 0.2, 0.01, sub.light["tint"])
    exact = hits.t
    yaw = math.atan2(cam.R[0, 2], cam.R[2, 2])
    mask = lidar_mask(cam, yaw, scale, rng) & np.isfinite(exact) & (exact <= 80.0)
    depth = np.where(mask, np.round(np.where(mask, exact, 0) * 256.0) / 256.0, 0).astype(np.float32)
    return {"image": image, "depth": depth, "depth_exact": exact, "scene": drive, "frame": frame,
            "camera": cam}


# ============================================================================ an unlearned domain
AERIAL_SIZE = (480, 480)     # (W, H) at scale 1: square frames, unlike every learned domain
AERIAL_HFOV_DEG = 70.0
AERIAL_CODE = 4              # enters the per-image seed (N, K, S are 1, 2, 3)


def render_aerial(index: int, seed: int = 0, scale: float = 1.0) -> dict:
    """A fourth synthetic domain that no head learns, of a different kind: a drone looking (nearly)
    straight down on the K-like streets from 25-70 m. Returns image (uint8 HxWx3), depth_exact
    (float32 metres, inf = sky), camera; for out-of-domain tests and bench/bench_frames.py."""
    rng = _rng(seed, AERIAL_CODE, 0, 1, index)
    scene, boxes, info = build_street(seed, 2, index // 10, 10)   # split 2: drives no K split uses
    w, h = _scaled_size(AERIAL_SIZE, scale)
    f = 0.5 * w / math.tan(math.radians(AERIAL_HFOV_DEG) / 2)
    height = rng.uniform(25.0, 70.0)
    cz = 5.0 + (index % 10) * info["step"] * 3 + rng.uniform(0, 20)
    cam = RenderCamera(f, f, (w - 1) / 2, (h - 1) / 2, w, h,
                       camera_rotation(rng.uniform(-math.pi, math.pi), rng.uniform(1.25, 1.5), rng.uniform(-0.05, 0.05)),
                       (info["lane"] + rng.uniform(-4, 4), height, cz))
    near = boxes[(boxes[:, 5] > cz - 150) & (boxes[:, 2] < cz + 150)]
    sph = np.asarray(scene.spheres, np.float64).reshape(-1, 5)
    sub = Scene(scene.materials, scene.planes, [], [tuple(r) for r in sph[np.abs(sph[:, 2] - cz) < 150]],
                scene.light)
    rays, hits = cast(sub, cam, near)
    image = develop(shade(sub, cam, rays, hits), rng, rng.uniform(0.42, 0.55), 0.1, 0.01, sub.light["tint"])
    return {"image": image, "depth_exact": hits.t, "camera": cam}


RECORDING_LAYOUTS = ("tum", "png16")


def write_aerial_recording(out: str, layout: str, frames: int, seed: int = 0, scale: float = 0.5,
                           unit: Optional[float] = None, fps: float = 30.0) -> dict:
    """The aerial frames (:func:`render_aerial`) written as a depth camera's SDK records them, in
    ``layout`` "tum" (``rgb.txt``/``depth.txt`` with timestamps, ``rgb/<t>.png``, ``depth/<t>.png``;
    the depth stream runs on its own clock, a few milliseconds off the colour one, and drops or adds
    the odd frame) or "png16" (``color/<n>.png`` + ``depth/<n>.png`` by frame number, as RealSense
    and Azure Kinect exporters write). Depth is uint16 = metres / ``unit`` (default: TUM 0.002 m,
    i.e. 500 per metre, as 5000 per metre stops at 13 m; png16 0.001 m), 0 where nothing was
    measured: sky, beyond 65535 units, and 1 % dropped pixels. Returns what was written (the
    camera as fx, fy, cx, cy, the unit, the frames written and the ones left unpaired)."""
    if layout not in RECORDING_LAYOUTS:
        raise InputError(f"layout {layout!r}: expected one of {RECORDING_LAYOUTS}")
    unit = float(unit or (0.002 if layout == "tum" else 0.001))
    rng = _rng(seed, AERIAL_CODE, 7)
    os.makedirs(os.path.join(out, "depth"), exist_ok=True)
    colour_dir = os.path.join(out, "rgb" if layout == "tum" else "color")
    os.makedirs(colour_dir, exist_ok=True)
    rgb_lines, depth_lines, unpaired, cam = [], [], [], None
    t0 = 1700000000.0 + seed
    for i in range(frames):
        frame = render_aerial(i, seed=seed, scale=scale)
        cam = frame["camera"]
        exact = frame["depth_exact"]
        raw = np.where(np.isfinite(exact), np.round(np.nan_to_num(exact, posinf=0.0) / unit), 0)
        raw[(raw > 65535) | (rng.random(raw.shape) < 0.01)] = 0
        depth = raw.astype(np.uint16)
        if layout == "png16":
            name = f"{i:06d}.png"
            Image.fromarray(frame["image"]).save(os.path.join(colour_dir, name))
            _write_png16(os.path.join(out, "depth", name), depth)
            continue
        t_rgb = t0 + i / fps
        t_depth = t_rgb + rng.uniform(-0.008, 0.008)   # the depth stream's own clock
        name_rgb, name_depth = f"rgb/{t_rgb:.6f}.png", f"depth/{t_depth:.6f}.png"
        if i % 50 == 17:   # a dropped depth frame: this colour frame has no partner
            unpaired.append(name_rgb)
        else:
            _write_png16(os.path.join(out, name_depth), depth)
            depth_lines.append(f"{t_depth:.6f} {name_depth}")
        Image.fromarray(frame["image"]).save(os.path.join(out, name_rgb))
        rgb_lines.append(f"{t_rgb:.6f} {name_rgb}")
    if layout == "tum":
        extra = f"depth/{t0 + frames / fps + 1.0:.6f}.png"   # depth recorded after the colour stopped
        _write_png16(os.path.join(out, extra), np.zeros((cam.height, cam.width), np.uint16))
        depth_lines.append(f"{t0 + frames / fps + 1.0:.6f} {extra}")
        unpaired.append(extra)
        for fname, lines, what in (("rgb.txt", rgb_lines, "color"), ("depth.txt", depth_lines, "depth")):
            with open(os.path.join(out, fname), "w", encoding="utf-8") as f:
                f.write(f"# {what} images\n# file: 'aerial synthetic recording'\n# timestamp filename\n")
                f.write("\n".join(lines) + "\n")
    return {"layout": layout, "unit": unit, "frames": frames, "unpaired": unpaired,
            "intrinsics": [cam.fx, cam.fy, cam.cx, cam.cy], "size": [cam.width, cam.height]}


def _write_png16(path: str, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)


# ============================================================================ file layout
KITTI_DATES = ("2011_09_26", "2011_09_28", "2011_09_29", "2011_09_30", "2011_10_03")
TEST_SCENE_OFFSET = {"K": 9000, "S": 5000}   # test drives/scenes never share names with train ones


def sample_paths(cfg: DomainConfig, split: str, index: int, room_type: str = "room") -> Tuple[str, str]:
    """(image, depth) paths of one sample relative to the output root, in the real layouts."""
    scene_idx, frame = _scene_of(cfg, split, index)
    if cfg.letter == "N":
        if split == "train":
            d = f"data/nyu2_train/{room_type}_{scene_idx + 1:04d}_out"
            return f"{d}/{frame + 1}.jpg", f"{d}/{frame + 1}.png"
        return f"data/nyu2_test/{index:05d}_colors.png", f"data/nyu2_test/{index:05d}_depth.png"
    if cfg.letter == "K":
        num = scene_idx + 1 if split == "train" else TEST_SCENE_OFFSET["K"] + scene_idx
        date = KITTI_DATES[num % len(KITTI_DATES)]
        drive = f"{date}_drive_{num:04d}_sync"
        fr = f"{5 + 5 * frame:010d}"
        if split == "train":
            return (f"raw/{date}/{drive}/image_02/data/{fr}.png",
                    f"train/{drive}/proj_depth/groundtruth/image_02/{fr}.png")
        return (f"val_selection_cropped/image/{drive}_image_{fr}_image_02.png",
                f"val_selection_cropped/groundtruth_depth/{drive}_groundtruth_depth_{fr}_image_02.png")
    num = scene_idx if split == "train" else TEST_SCENE_OFFSET["S"] + scene_idx
    d = f"scans/scene{num:04d}_00"
    return f"{d}/color/{frame * 10}.jpg", f"{d}/depth/{frame * 10}.png"


def encode_depth(cfg: DomainConfig, split: str, depth: np.ndarray) -> np.ndarray:
    """Depth (metres, 0 = none) -> integer array in the real format of the domain/split."""
    if cfg.letter == "N" and split == "train":
        return np.clip(np.round(depth / 10.0 * 255.0), 0, 255).astype(np.uint8)
    unit = 256.0 if cfg.letter == "K" else 1000.0
    return np.clip(np.round(depth * unit), 0, 65535).astype(np.uint16)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(a: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """PNG file of a uint8 (H,W) / (H,W,3) or uint16 (H,W) array.

    A minimal encoder (one "Sub" filter for every row, zlib level 1): about twice as fast as
    Pillow's adaptive filtering on noisy renders, with the same size; any PNG reader decodes it.
    """
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    if a.dtype == np.uint16:
        raw, bpp, bits = a.astype(">u2").view(np.uint8).reshape(h, -1), 2 * channels, 16
    elif a.dtype == np.uint8:
        raw, bpp, bits = a.reshape(h, -1), channels, 8
    else:
        raise TypeError(f"png_bytes: uint8 or uint16 expected, got {a.dtype}")
    rows = np.empty((h, raw.shape[1] + 1), np.uint8)
    rows[:, 0] = 1                                               # filter type 1 = Sub
    rows[:, 1:1 + bpp] = raw[:, :bpp]
    np.subtract(raw[:, bpp:], raw[:, :-bpp], out=rows[:, 1 + bpp:])   # wraps modulo 256 as PNG wants
    color = {1: 0, 3: 2}[channels]                               # greyscale / truecolour
    ihdr = struct.pack(">IIBBBBB", w, h, bits, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _png_chunk(b"IEND", b""))


def _save(a: np.ndarray, path: str) -> None:
    """Write an image array as PNG or JPEG (by extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".jpg"):
        Image.fromarray(a).save(path, quality=JPEG_QUALITY)
    else:
        with open(path, "wb") as fh:
            fh.write(png_bytes(a))


def _work(task) -> dict:
    """Render and write one sample; returns its CSV row and ground-truth statistics."""
    out, letter, split, index, seed, scale = task
    cfg = DOMAINS[letter]
    s = render_sample(letter, split, index, seed, scale)
    img_rel, dep_rel = sample_paths(cfg, split, index, s.get("room_type", "room"))
    _save(s["image"], os.path.join(out, img_rel))
    _save(encode_depth(cfg, split, s["depth"]), os.path.join(out, dep_rel))
    d = s["depth"]
    valid = d > 0
    n = int(np.count_nonzero(valid))
    return {"letter": letter, "split": split, "index": index, "row": (img_rel, dep_rel),
            "valid": n, "pixels": int(d.size),
            "min": float(np.min(d, where=valid, initial=np.inf)) if n else None,
            "max": float(d.max()) if n else None}


# ============================================================================ CSVs, replay, meta
def _write_csv(path: str, rows: Sequence[Tuple[str, str]]) -> None:
    from base.safeio import atomic_write  # an index CSV appears complete or not at all
    with atomic_write(path, "w", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerows(rows)


def _summary(results: List[dict]) -> dict:
    """Measured depth range and valid-pixel fraction of a list of per-sample results."""
    mins = [r["min"] for r in results if r["min"] is not None]
    maxs = [r["max"] for r in results if r["max"] is not None]
    pixels = sum(r["pixels"] for r in results)
    return {"depth_min": round(min(mins), 4) if mins else None, "depth_max": round(max(maxs), 4) if maxs else None,
            "valid_fraction": round(sum(r["valid"] for r in results) / pixels, 5) if pixels else None}


def _domain_meta(cfg: DomainConfig, scale: float, counts: dict, measured: dict) -> dict:
    k = cfg.camera.resized(*_scaled_size(cfg.size, scale))
    w, h = k.size
    cw, ch = _scaled_size(cfg.color_size, scale)
    enc = {"N": {"train": "8-bit PNG, metres = value / 255 * 10", "test": "16-bit PNG, millimetres"},
           "K": dict.fromkeys(("train", "test"), "16-bit PNG, metres = value / 256, 0 = none"),
           "S": dict.fromkeys(("train", "test"), "16-bit PNG, millimetres, 0 = hole")}
    return {"letter": cfg.letter, "counts": counts, "csv": dict(cfg.csv),
            "depth_size": [h, w], "image_size": [ch, cw],
            "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy,
                           "note": "of the depth map; the colour image has the same field of view"},
            "depth_range": list(cfg.depth_range), "depth_encoding": enc[cfg.letter],
            "frames_per_scene": dict(cfg.frames_per_scene), "measured": measured}


def tune_malloc() -> None:
    """Keep freed large numpy buffers in the heap (glibc) instead of returning them to the OS:
    every image allocates the same big arrays again, and the page faults of fresh mappings
    otherwise cost system time (measured: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments).
    Inherited by forked workers."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 28)   # M_MMAP_THRESHOLD: serve allocations up to 256 MiB from the heap
        libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD: do not trim the heap below 1 GiB of slack
    except (OSError, AttributeError):
        pass                        # not glibc: only slower


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def generate(out: str, n_train: int = 300, n_test: int = 100, seed: int = 0, workers: Optional[int] = None,
             replay_size: int = 500, domains: str = "NKS", scale: float = 1.0, progress: bool = True,
             overwrite: bool = False, option: str = "--out", flag: Optional[str] = "--overwrite") -> dict:
    """Generate the synthetic domains under `out`; returns the meta dict (also meta.json).

    Files are byte-identical for the same (seed, counts, scale) whatever the worker count, since
    each sample is seeded from (seed, domain, split, index); meta.json holds timings and differs.
    Settings that cannot work raise :class:`InputError` before anything is written (check_settings),
    and so does an ``out`` holding a dataset synthetic.py did not make (a real one: :func:`check_out`)
    unless ``overwrite`` (``option``, ``flag``: how the calling command names the root and that
    request, for the message).
    """
    letters = check_settings(n_train, n_test, replay_size, workers, scale, domains)
    check_out(out, letters, overwrite, option, flag)
    t0 = time.time()
    tasks = [(out, L, sp, i, seed, scale) for L in letters for sp, n in (("train", n_train), ("test", n_test))
             for i in range(n)]
    os.makedirs(out, exist_ok=True)
    _noise_table()   # built once here, inherited by forked workers
    results = _run_tasks(tasks, workers or default_workers(), progress)
    data_meta = {"synthetic": True, "generator": "synthetic.py", "generator_version": GENERATOR_VERSION,
            "description": "Procedural ray-cast stand-ins for NYU-v2 (N), KITTI (K) and ScanNet (S) in their "
                           "real on-disk formats; not real data.",
            "seed": seed, "scale": scale, "replay_size": replay_size, "domains": {}}
    for L in letters:
        cfg = DOMAINS[L]
        counts, measured = {}, {}
        for sp in SPLITS:
            rs = sorted((r for r in results if r["letter"] == L and r["split"] == sp), key=lambda r: r["index"])
            _write_csv(os.path.join(out, cfg.csv[sp]), [r["row"] for r in rs])
            counts[sp], measured[sp] = len(rs), _summary(rs)
        counts["replay"] = write_replay_csv(os.path.join(out, cfg.csv["train"]), os.path.join(out, cfg.csv["replay"]),
                                             replay_size, seed)
        data_meta["domains"][cfg.name] = _domain_meta(cfg, scale, counts, measured)
    data_meta["workers"] = workers or default_workers()
    data_meta["generation_seconds"] = round(time.time() - t0, 2)
    data_meta["generated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(os.path.join(out, "meta.json"), data_meta)
    return data_meta


def _parse_domains(domains: str) -> List[str]:
    """'NKS', 'nk' or 'nyu,kitti' -> letters in the given order, no repeats."""
    parts = [p for p in domains.replace(" ", "").split(",") if p]
    letters = []
    for p in parts:
        for L in ([p] if p.lower() in _BY_NAME else list(p)):
            c = get_config(L).letter
            if c not in letters:
                letters.append(c)
    if not letters:
        raise ValueError("no domain given")
    return letters


def _run_tasks(tasks, workers: int, progress: bool) -> List[dict]:
    """Run tasks in a process pool (or inline with one worker) behind a tqdm bar."""
    try:
        from tqdm import tqdm
    except ImportError:   # progress is optional
        tqdm = None
    bar = tqdm(total=len(tasks), desc="synthetic", unit="img", disable=not progress) if tqdm else None
    results = []
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            results.append(_work(t))
            bar and bar.update(1)
    else:
        # Interleave domains so that workers finish together; chunks keep per-scene caches warm.
        with Pool(workers) as pool:
            for r in pool.imap_unordered(_work, tasks, chunksize=4):
                results.append(r)
                bar and bar.update(1)
    if bar:
        bar.close()
    return results


# ============================================================================ settings
def check_settings(n_train: int, n_test: int, replay_size: int, workers: Optional[int], scale: float,
                   domains: str) -> List[str]:
    """The domain letters of ``domains``; an :class:`InputError` naming the command's option for a
    value that cannot work (``workers`` None: one per CPU)."""
    def fail(option, value, expected):
        raise InputError(f"{option} {value!r}: expected {expected}")
    for option, value in (("--train", n_train), ("--test", n_test), ("--replay-size", replay_size)):
        if value < 0:
            fail(option, value, "a count of at least 0")
    if workers is not None and workers < 1:
        fail("--workers", workers, "at least 1 worker process")
    if not 0 < scale < math.inf:
        fail("--scale", scale, "a positive fraction of the real sizes, e.g. 0.25")
    try:
        return _parse_domains(domains)
    except ValueError as e:
        raise InputError(f"--render {domains!r}: {e}") from None


def _made_by_us(out: str) -> bool:
    """Whether ``out`` holds a meta.json that synthetic.py wrote (its files may be regenerated)."""
    try:
        data_meta = read_json(os.path.join(out, "meta.json"))
    except OSError:   # unreadable (a folder named meta.json, no permission): not ours
        return False
    return isinstance(data_meta, dict) and data_meta.get("synthetic") is True and data_meta.get("generator") == "synthetic.py"


def check_out(out: str, letters: Sequence[str], overwrite: bool = False, option: str = "--out",
              flag: Optional[str] = "--overwrite") -> None:
    """An :class:`InputError` unless ``out`` can take the domains' files: a folder (or nothing yet)
    whose index CSVs, if any, synthetic.py wrote (a real dataset's are kept unless ``overwrite``):
    base.safeio.check_write with synthetic.py's meta.json as the mark of its own files.
    ``option``/``flag``: the calling command's names for the root and for asking to overwrite (None:
    the command cannot be asked)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"{option} {out!r}: expected a folder (it is a file)")
    check_folder(out, option)
    clash = [name for L in letters for name in DOMAINS[L].csv.values() if os.path.exists(os.path.join(out, name))]
    ours = _made_by_us(out)
    try:
        for name in clash:
            check_write(os.path.join(out, name), option=option, overwrite=overwrite, ours=lambda p: ours)
    except InputError:
        raise InputError(f"{option} {out} holds {', '.join(clash)}, not made by synthetic.py (no "
                         f"synthetic meta.json there: a real dataset?); its images, depth maps and CSVs "
                         f"would be overwritten. Choose another {option} (e.g. datasets/synthetic)"
                         + (f" or pass {flag}" if flag else "")) from None
