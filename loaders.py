"""Datasets, joint image+depth transforms and data loaders.

Items are dicts::

    {"image": float32 (3,H,W) ImageNet-normalised RGB, "depth": float32 (1,H,W) metres (0 = no GT),
     "domain": domain name, "path": image path as written in the index CSV}

Index CSVs have rows ``image_path,depth_path`` (no header), relative to the data root (absolute
paths are accepted too).  Rules that hold for every domain:

* depth is resampled only with nearest neighbour (resize, rotation), so sparse ground truth stays
  sparse and no depth value is invented; areas rotated in are 0 (= no ground truth);
* the colour image is resampled bilinearly;
* all randomness comes from torch's RNG, so `torch.manual_seed` and the DataLoader's per-worker
  seeds make an epoch reproducible.

`scale` multiplies every size of a recipe (resize targets and crops): each size becomes the nearest
even integer to size*scale (halves rounded up, at least 2), e.g. 304x228 -> 152x114 at 0.5.
The KITTI recipe has no resize step, so there `scale` shrinks only the crop (a smaller window of
the frame at native resolution); store smaller frames to keep the field of view.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from base import domains as dom
from base.images import normalize, scaled
from base.domains import DomainSpec, get_domain, load_domains_from_root
from base.errors import InputError
from base.safeio import read_json

# AlexNet-style PCA lighting noise on ImageNet statistics (as in the authors' transforms).
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])
LIGHTING_STD = 0.1
JITTER = 0.4          # brightness, contrast, saturation
ROTATE_DEG = 5.0      # NYU recipe only
COVER_MARGIN = 240.0 / 228.0   # NYU resizes to 240 rows before its 228-row crop
NYU_ROTATIONS = ("bilinear", "spline")   # image interpolation of the NYU rotation (spline: authors')
SCANNET_RESIZES = ("twice", "once")      # colour to depth size then to the recipe's (ours), or once

H5_EXT = (".h5", ".hdf5")
MAT_EXT = (".mat",)


class DatasetFormatError(InputError):
    """A data file or index row is not in the expected format (message says what was expected)."""


# ============================================================================ reading files
class ImageTooLarge(DatasetFormatError):
    """An image whose header declares more pixels than the caller's limit (nothing was decoded)."""


def _open_image(path: str, what: str, max_pixels: Optional[int] = None,
                limit_name: str = "--max-pixels") -> Image.Image:
    """The decoded image at ``path``; ``what`` ("image" or "depth") names it in the errors.

    ``max_pixels``: refuse, from the header alone (``Image.open`` decodes nothing), an image with
    more pixels: a small compressed file can declare a size whose decoding and processing needs
    tens of gigabytes. ``limit_name`` is how the error names the limit (the command's option)."""
    try:
        if not os.path.isfile(path) and os.path.exists(path):  # a FIFO or device would block or stream
            raise DatasetFormatError(f"{path}: not a regular file")
        with warnings.catch_warnings():  # with a limit of our own, PIL's bomb warning is noise
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
            w, h = img.size
            img.close()
            raise ImageTooLarge(f"{path}: {w}x{h} pixels ({w * h / 1e6:.1f} M) is above the limit of "
                                f"{max_pixels / 1e6:g} M pixels ({limit_name}); shrink the image or raise "
                                f"{limit_name} (predicting costs over 100 bytes of memory per pixel)")
        img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        noun = "image" if what == "image" else f"{what} image"
        raise DatasetFormatError(f"{path}: not a readable {noun} ({e})") from None
    return img


def load_rgb(path: str, apply_exif: bool = False, max_pixels: Optional[int] = None,
             limit_name: str = "--max-pixels") -> Image.Image:
    """Open an image file as 8-bit RGB.

    Grayscale is replicated to three channels, alpha is dropped, palettes are expanded and 16-bit
    images are reduced to 8 bits.  `apply_exif` rotates phone photos upright (off for datasets,
    whose depth maps are aligned with the stored pixel grid).  `max_pixels`: see `_open_image`.
    """
    img = _open_image(path, "image", max_pixels, limit_name)
    if apply_exif:
        img = ImageOps.exif_transpose(img)
    try:
        return _to_rgb(img, path)
    except ValueError as e:  # rgb_array's InputError (NaN pixels ...): a data-format error of the file
        raise DatasetFormatError(str(e)) from None


def _to_rgb(img: Image.Image, what: str = "image") -> Image.Image:
    """Convert any PIL mode to RGB without clipping high bit depths (:func:`rgb_array`'s rules)."""
    if img.mode == "RGB":
        return img
    if img.mode in HIGH_DEPTH_MODES:
        return Image.fromarray(rgb_array(img, what))
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # keeps palette transparency information consistent
    return img.convert("RGB")


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def rgb_array(image, what: str = "image") -> np.ndarray:
    """The one input normaliser of a picture: an (H,W,3) uint8 RGB array of a PIL image (any mode)
    or an array (numpy, or anything ``np.asarray`` takes: a CPU tensor), with one rule per kind:

    - channels: (H,W) or (H,W,1) grey is replicated, (H,W,3) is RGB, (H,W,4) RGBA loses its alpha;
      channels first ((3,H,W)) and anything else are refused;
    - uint8: as is; uint16 (and PIL's I;16 modes): the full 16-bit range (v / 257);
    - other integers (PIL mode I): 8-bit when every value is <= 255, else 16-bit up to 65535;
    - floats (PIL mode F): [0, 1] when every value is <= 1, else [0, 255] up to 255; NaN,
      infinite or negative values are refused (never read as black); so is a float above 255;
    - bool and other kinds are refused.
    InputError names ``what`` and the rule it broke."""
    from base.errors import InputError
    if isinstance(image, Image.Image):
        if image.mode not in HIGH_DEPTH_MODES:
            return np.asarray(_to_rgb(image, what))
        a = np.asarray(image)
        if image.mode.startswith("I;16"):
            a = a.astype(np.uint16)
    else:
        try:
            a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
        except (TypeError, ValueError) as e:
            raise InputError(f"{what}: expected a PIL image or an (H,W,3) array ({e})") from None
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] not in (3, 4) and a.shape[0] in (1, 3, 4):
        raise InputError(f"{what}: shape {a.shape} looks channels-first; expected (H, W, 3) (numpy "
                         f"a.transpose(1, 2, 0), torch t.permute(1, 2, 0))")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or min(a.shape[:2] or (0,)) < 1:
        raise InputError(f"{what}: shape {a.shape}; expected (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA")
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == np.uint16:
        out = (a.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"{what}: integer values {lo}..{hi}; expected 0..255 (8-bit) or 0..65535 (16-bit)")
        out = a.astype(np.uint8) if hi <= 255 else (a.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32, copy=False)
        if not np.isfinite(f).all():
            raise InputError(f"{what}: {int(np.count_nonzero(~np.isfinite(f)))} NaN or infinite pixel value(s); "
                             f"expected finite intensities (float: 0..1, or 0..255)")
        lo, hi = float(f.min()), float(f.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{what}: float values {lo:g}..{hi:g}; expected 0..1 (or 0..255)")
        peak = 1.0 if hi <= 1.0 else 255.0
        out = np.clip(f * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
    else:
        raise InputError(f"{what}: pixel type {a.dtype}; expected uint8, uint16, integers or floats")
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)


def _png_depth_array(img: Image.Image, bits: Optional[int], path: str, what: str) -> np.ndarray:
    """Raw integer values of a single-channel depth PNG, checking the bit depth."""
    mode = img.mode
    sixteen = mode in ("I;16", "I;16B", "I;16L", "I")
    if mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
        raise DatasetFormatError(
            f"{path}: expected a single-channel {f'{bits}-bit' if bits else '8- or 16-bit'} depth image "
            f"({what}), got PIL mode "
            f"{mode!r} ({len(img.getbands())} channel(s)); colour-mapped depth visualisations cannot be read")
    if bits == 16 and not sixteen:
        raise DatasetFormatError(f"{path}: expected a 16-bit depth PNG ({what}), got an 8-bit image (mode {mode!r})")
    if bits == 8 and mode != "L":
        raise DatasetFormatError(f"{path}: expected an 8-bit depth PNG ({what}), got mode {mode!r}")
    a = np.asarray(img)
    if mode == "I" and bits == 16 and a.size and (a.min() < 0 or a.max() > 65535):
        raise DatasetFormatError(f"{path}: values outside 0..65535 in a depth image expected to be 16-bit")
    return a


def decode_depth(path: str, encoding: dict) -> np.ndarray:
    """Decode one depth file to float32 metres (H, W); 0 = no ground truth.

    `encoding` is a domain's encoding dict, e.g. {"kind": "png", "scale": 0.001, "bits": 16}. The
    "npy" kind is float depth: a ``.npy`` array, or an OpenEXR file (``.exr``, :func:`read_exr_depth`).
    """
    kind = encoding.get("kind")
    scale = float(encoding.get("scale", 1.0))
    what = _describe_encoding(encoding)
    if kind == "png":
        img = _open_image(path, "depth")
        raw = _png_depth_array(img, encoding.get("bits"), path, what)
    elif kind == "npy" and path.lower().endswith(EXR_EXT):
        raw = _exr_depth_array(path)
    elif kind == "npy":
        raw = np.load(path)
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != 2:
            raise DatasetFormatError(f"{path}: expected a 2-D depth array ({what}), got shape {raw.shape}")
    elif kind in ("h5", "mat"):
        raise DatasetFormatError(f"{path}: {kind} depth is read together with its colour image by the dataset")
    else:
        raise DatasetFormatError(f"unknown depth encoding kind {kind!r}")
    return _metres(raw, scale)


def _metres(raw: np.ndarray, scale: float) -> np.ndarray:
    """Stored depth values times ``scale``: the float64 product, then float32 (exact to float32
    rounding for every encoding), with no measurement as 0 (:func:`_clean_depth`)."""
    return _clean_depth((raw.astype(np.float64) * float(scale)).astype(np.float32))


def _clean_depth(depth: np.ndarray) -> np.ndarray:
    """Non-finite or negative depth means 'no measurement' (0; a -0.0 becomes +0.0 too: the sign bit)."""
    bad = ~np.isfinite(depth) | np.signbit(depth)
    if bad.any():
        depth = depth.copy()
        depth[bad] = 0.0
    return depth


def _describe_encoding(enc: dict) -> str:
    kind = enc.get("kind")
    if kind == "png":
        bits = enc.get("bits")
        return f"{bits or 'single-channel'}{'-bit' if bits else ''} PNG, metres = value * {enc.get('scale'):.6g}"
    return (f"float depth (.npy or .exr), metres = value * {enc.get('scale', 1.0):.6g}" if kind == "npy"
            else str(kind))


# ---------------------------------------------------------------------------- OpenEXR depth
EXR_EXT = (".exr",)
#: channel names that mean depth when an EXR holds other channels too (a render's R, G, B, A and Z)
EXR_DEPTH_NAMES = ("Z", "depth", "Depth")
EXR_EXPECTED = ("expected one depth channel: Z or depth, or the only channel (an alpha A aside, e.g. Y or R), "
                "or R, G, B holding the same depth")


def _exr_file(path: str, header_only: bool):
    """The OpenEXR.File at ``path`` (the pixels of each channel apart unless ``header_only``)."""
    try:
        import OpenEXR
    except ImportError:
        raise DatasetFormatError(f"{path}: reading EXR depth needs the OpenEXR package "
                                 f"(pip install -r requirements.txt)") from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"depth file not found: {path}")
    if not os.path.isfile(path):
        raise DatasetFormatError(f"{path}: not a regular file")
    try:
        return OpenEXR.File(path, separate_channels=True, header_only=header_only)
    except Exception as e:  # noqa: BLE001 - the binding raises RuntimeError for any unreadable file
        raise DatasetFormatError(f"{path}: not a readable OpenEXR file ({type(e).__name__})") from None


def _exr_depth_channels(path: str, channels) -> Tuple[str, Tuple[str, ...]]:
    """(the channel that holds depth, the channels that must equal it) from an EXR's first part's
    channels (objects with ``name``, ``xSampling``, ``ySampling``); a DatasetFormatError otherwise."""
    by_name = {c.name: c for c in channels}
    names = list(by_name)
    found = ", ".join(names) or "none"
    colour = sorted(set(names) - {"A"})
    named = [n for n in EXR_DEPTH_NAMES if n in by_name]
    if len(named) == 1:
        pick, same = named[0], ()
    elif len(colour) == 1:   # the only channel, or the only one beside an alpha
        pick, same = colour[0], ()
    elif colour == ["B", "G", "R"]:
        pick, same = "R", ("G", "B")
    else:
        raise DatasetFormatError(f"{path}: EXR channels {found}; {EXR_EXPECTED}")
    for n in (pick,) + same:
        c = by_name[n]
        if (c.xSampling, c.ySampling) != (1, 1):
            raise DatasetFormatError(f"{path}: EXR channel {n} is subsampled ({c.xSampling}x{c.ySampling}); "
                                     f"expected depth at every pixel")
    return pick, same


def exr_depth_size(path: str) -> Tuple[int, int]:
    """(W, H) of a depth EXR from its header alone, after checking that it has a depth channel (the
    rule of :func:`read_exr_depth`); a DatasetFormatError naming the file otherwise."""
    f = _exr_file(path, header_only=True)
    header = f.header()
    _exr_depth_channels(path, header.get("channels") or [])
    lo, hi = header["dataWindow"]
    return int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1)


def read_exr_depth(path: str, scale: float = 1.0) -> np.ndarray:
    """One depth map from an OpenEXR file: float32 (H, W), the stored value x ``scale`` (metres per
    stored value; 1 for the metres Blender, the ZED SDK and most renderers write).

    The depth is the first part's channel named Z or depth, or its only channel (an alpha A aside),
    or R of an R, G, B(, A) file whose R, G and B are equal; anything else (two channels of other
    names, colour) is one DatasetFormatError line naming the file, the channels found and what was
    expected. Half and float channels are read (a half converts exactly). Non-finite values (NaN,
    inf: a renderer's background) and values <= 0 become 0, "no measurement", as every other depth
    encoding marks invalid depth (:func:`decode_depth`'s own conversion).
    """
    return _metres(_exr_depth_array(path), scale)


def _exr_depth_array(path: str) -> np.ndarray:
    """The stored half or float values of an EXR's depth channel (:func:`read_exr_depth`'s rule)."""
    f = _exr_file(path, header_only=False)
    channels = f.channels()
    pick, same = _exr_depth_channels(path, channels.values())
    raw = channels[pick].pixels
    if raw.dtype not in (np.float16, np.float32):
        raise DatasetFormatError(f"{path}: EXR channel {pick} holds {raw.dtype} values; expected half or "
                                 f"float depth")
    for n in same:
        if not np.array_equal(channels[n].pixels, raw, equal_nan=True):
            raise DatasetFormatError(f"{path}: EXR channels {', '.join(channels)} with R, G and B different "
                                     f"(colour, not depth); {EXR_EXPECTED}")
    return raw


def read_h5_pair(path: str, rgb_key: str = "rgb", depth_key: str = "depth") -> Tuple[Image.Image, np.ndarray]:
    """Sparse-to-dense NYU layout: `rgb` uint8 (3,H,W) and `depth` float32 (H,W) metres."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise FileNotFoundError(f"HDF5 file not found: {path}") from None
    except OSError as e:
        raise DatasetFormatError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if rgb_key not in f or depth_key not in f:
            raise DatasetFormatError(f"{path}: expected datasets '{rgb_key}' (3,H,W) uint8 and '{depth_key}' "
                                     f"(H,W) float metres; found {sorted(f.keys())}")
        rgb, depth = np.asarray(f[rgb_key]), np.asarray(f[depth_key])
    if rgb.ndim == 3 and rgb.shape[0] == 3:
        rgb = rgb.transpose(1, 2, 0)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or depth.ndim != 2 or depth.shape != rgb.shape[:2]:
        raise DatasetFormatError(f"{path}: expected '{rgb_key}' (3,H,W) and '{depth_key}' (H,W) of the same "
                                 f"H,W; got {rgb.shape} and {depth.shape}")
    return Image.fromarray(_as_uint8(rgb, path)), _clean_depth(depth.astype(np.float32))


def _as_uint8(a: np.ndarray, path: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating) and a.max() <= 1.0:
        return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.max() <= 255:
        return a.astype(np.uint8)
    raise DatasetFormatError(f"{path}: colour data of dtype {a.dtype} with values above 255; expected uint8")


_MAT_HANDLES: Dict[Tuple[int, str], object] = {}


def _open_mat(path: str):
    """h5py handle of a v7.3 .mat file, one per process (handles must not cross a fork)."""
    import h5py

    key = (os.getpid(), os.path.abspath(path))
    if key not in _MAT_HANDLES:
        try:
            f = h5py.File(path, "r")
        except FileNotFoundError:
            raise FileNotFoundError(f".mat file not found: {path}") from None
        except OSError as e:
            raise DatasetFormatError(f"{path}: not a MATLAB v7.3 (HDF5) file ({e}); the NYU labeled file "
                                     "nyu_depth_v2_labeled.mat is v7.3") from None
        if "images" not in f or "depths" not in f:
            raise DatasetFormatError(f"{path}: expected datasets 'images' (N,3,W,H) and 'depths' (N,W,H) as in "
                                     f"nyu_depth_v2_labeled.mat; found {sorted(f.keys())}")
        _MAT_HANDLES[key] = f
    return _MAT_HANDLES[key]


def mat_num_frames(path: str) -> int:
    """Number of frames in an NYU labeled .mat file."""
    return int(_open_mat(path)["images"].shape[0])


def read_mat_frame(path: str, index: int) -> Tuple[Image.Image, np.ndarray]:
    """Frame `index` (1-based, as in the official split) of nyu_depth_v2_labeled.mat.

    MATLAB stores column-major, so h5py sees images (N,3,W,H) and depths (N,W,H): each frame is
    transposed back to (H,W,3) / (H,W).
    """
    f = _open_mat(path)
    n = f["images"].shape[0]
    if not 1 <= index <= n:
        raise DatasetFormatError(f"{path}: frame index {index} outside 1..{n} (indices are 1-based)")
    rgb = np.asarray(f["images"][index - 1]).transpose(2, 1, 0)
    depth = np.asarray(f["depths"][index - 1]).T.astype(np.float32)
    return Image.fromarray(_as_uint8(rgb, path)), _clean_depth(np.ascontiguousarray(depth))


def read_index_list(path: str) -> List[int]:
    """1-based frame indices from a .txt (numbers separated by spaces, commas or newlines) or an
    official splits.mat (`testNdxs`; needs scipy for MATLAB v5 files, h5py for v7.3)."""
    if path.lower().endswith(".mat"):
        return _read_split_mat(path, "testNdxs")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return [int(t) for t in re.split(r"[\s,]+", text.strip()) if t]
    except ValueError:
        raise DatasetFormatError(f"{path}: expected 1-based integer frame indices") from None


def _read_split_mat(path: str, key: str) -> List[int]:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return [int(v) for v in np.asarray(f[key]).ravel()]
    except (OSError, KeyError):
        pass
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetFormatError(f"{path}: MATLAB v5 split file needs scipy (pip install scipy), or save the "
                                 f"1-based test indices as a .txt file, one per line") from None
    m = loadmat(path)
    if key not in m:
        raise DatasetFormatError(f"{path}: no '{key}' variable; found {sorted(k for k in m if not k.startswith('__'))}")
    return [int(v) for v in np.asarray(m[key]).ravel()]


# ============================================================================ transforms
def _depth_pil(depth: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32))  # mode "F"


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


class JointTransform:
    """Image+depth transform of one recipe ("nyu", "kitti", "scannet"); callable on
    (PIL RGB image, float32 depth array in metres) -> (image tensor (3,H,W), depth tensor (1,H,W)).

    Geometry follows the authors' code (resize / flip / rotation / crop), except that depth uses
    nearest neighbour everywhere (the authors rotated depth bilinearly, inventing values at edges).
    """

    def __init__(self, family: str, train: bool, crop_hw: Tuple[int, int], resize=None,
                 scale: float = 1.0, full_frame: bool = False, nyu_rotation: str = "bilinear"):
        if family not in dom.TRANSFORMS:
            raise ValueError(f"unknown transform recipe {family!r}; expected one of {dom.TRANSFORMS}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if nyu_rotation not in NYU_ROTATIONS:
            raise ValueError(f"nyu_rotation must be one of {NYU_ROTATIONS}, got {nyu_rotation!r}")
        self.nyu_rotation = nyu_rotation
        self.family, self.train, self.scale, self.full_frame = family, bool(train), float(scale), full_frame
        self.crop_w, self.crop_h = scaled(crop_hw[1], scale), scaled(crop_hw[0], scale)
        if resize is None or resize == "cover":
            self.resize = resize
        elif isinstance(resize, int):
            self.resize = scaled(resize, scale)            # short side
        else:
            self.resize = (scaled(resize[0], scale), scaled(resize[1], scale))  # (H, W)

    def __repr__(self):
        return (f"JointTransform({self.family!r}, train={self.train}, crop={self.crop_w}x{self.crop_h}, "
                f"resize={self.resize}, scale={self.scale}, full_frame={self.full_frame})")

    # ---- geometry (PIL; depth as a float "F" image)
    def _resize(self, image, depth):
        if self.resize is None:
            if self.family == "kitti" and self.full_frame and self.scale != 1.0:
                w, h = image.size   # full KITTI frames at reduced resolution
                return self._resize_to(image, depth, scaled(w, self.scale), scaled(h, self.scale))
            return image, depth
        if self.resize == "cover":
            # Smallest resize (aspect kept) covering the crop with NYU's 240/228 margin; equals
            # NYU's short-side-240 recipe on 4:3 frames, and fits any aspect ratio.
            w, h = image.size
            f = COVER_MARGIN * max(self.crop_w / w, self.crop_h / h)
            return self._resize_to(image, depth, max(self.crop_w, int(round(w * f))), max(self.crop_h, int(round(h * f))))
        if isinstance(self.resize, int):
            w, h = image.size
            s = self.resize
            if (w <= h and w == s) or (h <= w and h == s):
                return image, depth
            # Short side to s, long side truncated like the authors' Scale (640x480 -> 320x240).
            ow, oh = (s, int(s * h / w)) if w < h else (int(s * w / h), s)
            return self._resize_to(image, depth, ow, oh)
        return self._resize_to(image, depth, self.resize[1], self.resize[0])

    @staticmethod
    def _resize_to(image, depth, w, h):
        # each on its own: with scannet_resize="once" the colour image is still at its own size
        if image.size != (w, h):
            image = image.resize((w, h), Image.BILINEAR)
        if depth.size != (w, h):
            depth = depth.resize((w, h), Image.NEAREST)
        return image, depth

    @staticmethod
    def _flip(image, depth):
        if torch.rand(()).item() < 0.5:
            return image.transpose(Image.FLIP_LEFT_RIGHT), depth.transpose(Image.FLIP_LEFT_RIGHT)
        return image, depth

    def _rotate(self, image, depth):
        angle = _uniform(-ROTATE_DEG, ROTATE_DEG)
        # Same centre and angle for both; rotated-in areas are black / 0 (= no ground truth).
        # PIL and scipy.ndimage both take positive angles as counter-clockwise.
        if self.nyu_rotation == "spline":  # the authors' RandomRotate: order-2 spline on uint8 RGB
            from scipy import ndimage
            rotated = ndimage.rotate(np.asarray(image), angle, reshape=False, order=2)
            image = Image.fromarray(rotated)
        else:
            image = image.rotate(angle, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
        return image, depth.rotate(angle, resample=Image.NEAREST, fillcolor=0.0)

    def _check_fits(self, image):
        w, h = image.size
        if w < self.crop_w or h < self.crop_h:
            raise DatasetFormatError(
                f"image of {w}x{h} (WxH, after resizing) is smaller than the {self.crop_w}x{self.crop_h} crop "
                f"of the '{self.family}' recipe at scale {self.scale}; use larger images or a smaller scale")

    def _center_crop(self, image, depth):
        self._check_fits(image)
        w, h = image.size
        x, y = int(round((w - self.crop_w) / 2.0)), int(round((h - self.crop_h) / 2.0))
        box = (x, y, x + self.crop_w, y + self.crop_h)
        self.last_window = (y, x, h, w)
        return image.crop(box), depth.crop(box)

    def _bottom_crop(self, image, depth, random_x: bool):
        # KITTI: the upper part of the frame has no LiDAR ground truth, so crops keep the bottom.
        self._check_fits(image)
        w, h = image.size
        if random_x:
            x = int(torch.randint(0, w - self.crop_w + 1, ()).item())
        else:
            x = int(round((w - self.crop_w) / 2.0))
        box = (x, h - self.crop_h, x + self.crop_w, h)
        self.last_window = (h - self.crop_h, x, h, w)
        return image.crop(box), depth.crop(box)

    def _geometry(self, image, depth):
        image, depth = self._resize(image, depth)
        if self.family == "kitti":
            if self.train:
                image, depth = self._bottom_crop(image, depth, random_x=True)
                return self._flip(image, depth)
            # Note: the authors' KITTI test loader also added random PCA lighting noise to test
            # images; that is a bug (non-deterministic evaluation) which we do not reproduce.
            # Their test also used the full frame: see full_frame.
            return (image, depth) if self.full_frame else self._bottom_crop(image, depth, random_x=False)
        if self.train:
            image, depth = self._flip(image, depth)
            if self.family == "nyu":
                image, depth = self._rotate(image, depth)
        return (image, depth) if self.full_frame else self._center_crop(image, depth)

    # ---- photometric (torch, image in [0,1])
    @staticmethod
    def _lighting(img):
        alpha = torch.randn(3) * LIGHTING_STD
        rgb = (PCA_EIGVEC * alpha.view(1, 3) * PCA_EIGVAL.view(1, 3)).sum(1)
        return img + rgb.view(3, 1, 1)

    @staticmethod
    def _gray(img):
        return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).expand_as(img)

    def _jitter(self, img):
        # Brightness, contrast, saturation in random order, each a lerp with factor U(-0.4, 0.4)
        # towards black / mean grey / grayscale (the authors' ColorJitter).
        for i in torch.randperm(3).tolist():
            a = _uniform(-JITTER, JITTER)
            if i == 0:
                target = torch.zeros_like(img)
            elif i == 1:
                target = torch.full_like(img, float(self._gray(img)[0].mean()))
            else:
                target = self._gray(img)
            img = torch.lerp(img, target, a)
        return img

    def __call__(self, image: Image.Image, depth: np.ndarray):
        """(image, depth) tensors; ``last_window`` then holds (top, left, frame_h, frame_w): where the
        output sits in the resized full frame (the frame on which the Eigen/Garg crops are defined)."""
        self.last_window = None
        image, depth_img = self._geometry(image, _depth_pil(depth))
        if self.last_window is None:  # not cropped: the output is the whole (resized) frame
            self.last_window = (0, 0, image.size[1], image.size[0])
        img = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if self.train:
            img = self._jitter(self._lighting(img))
        img = normalize(img)
        d = torch.from_numpy(np.array(depth_img, dtype=np.float32))[None]
        return img, d


def _default_resize(spec: DomainSpec):
    """Resize step of a recipe when the spec leaves it null: "nyu" covers the crop with NYU's margin,
    "scannet" resizes to input_size * (240/228, 320/304) like ScanNet, "kitti" does not resize."""
    if spec.resize is not None:
        return spec.resize
    h, w = spec.input_size
    if spec.transform == "nyu":
        return "cover"
    if spec.transform == "scannet":
        return (int(round(h * 240 / 228)), int(round(w * 320 / 304)))
    return None


def build_transform(spec, train: bool, scale: float = 1.0, full_frame: bool = False,
                    nyu_rotation: str = "bilinear") -> JointTransform:
    """The joint transform of a domain (recipe, crop = input_size, resize) at `scale`.

    full_frame (evaluation only): skip the crop and keep the whole (resized) frame, e.g. to evaluate
    KITTI on full 1216x352 frames as the authors' test script did.
    nyu_rotation: "bilinear" (ours) or "spline" (the authors' scipy order-2 rotation of the image).
    """
    spec = get_domain(spec)
    if full_frame and train:
        raise ValueError("full_frame is for evaluation; training crops to the input size")
    return JointTransform(spec.transform, train, spec.input_size, _default_resize(spec), scale, full_frame,
                          nyu_rotation=nyu_rotation)


# ============================================================================ index CSVs
class Row(NamedTuple):
    """One index row: resolved paths (depth is a frame number for .mat rows) and its line."""
    image: str
    depth: object
    line: int
    image_raw: str


def _resolve(p: str, data_root: str, alt_roots: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """Absolute path of a CSV path (data_root first, then data_root/<alt>); None if nowhere."""
    if os.path.isabs(p):
        return (p if os.path.exists(p) else None), [p]
    tried = [os.path.join(data_root, p)] + [os.path.join(data_root, a, p) for a in alt_roots]
    for t in tried:
        if os.path.exists(t):
            return t, tried
    return None, tried


def _parse_row(fields: List[str], csv_path: str, line: int, raw: str):
    """(image, depth) strings of a row; depth is an int frame for .mat, None for image-only .h5."""
    f = [x.strip() for x in fields]
    while len(f) > 2 and f[-1] == "":
        f.pop()  # tolerate trailing commas
    img = f[0] if f else ""
    low = img.lower()
    if low.endswith(H5_EXT) and (len(f) == 1 or (len(f) == 2 and f[1] in ("", img))):
        return img, None
    if low.endswith(MAT_EXT) and len(f) == 2:
        if not re.fullmatch(r"\d+", f[1]) or int(f[1]) < 1:
            raise DatasetFormatError(f"{csv_path}: line {line}: a .mat row is 'file.mat,<1-based frame index>', "
                                     f"got {raw!r}")
        return img, int(f[1])
    if len(f) != 2 or not f[0] or not f[1]:
        raise DatasetFormatError(f"{csv_path}: line {line}: expected 2 comma-separated columns "
                                 f"'image_path,depth_path', got {len(f)}: {raw!r}")
    return f[0], f[1]


def read_index_csv(csv_path: str, data_root: str, alt_roots: Sequence[str] = (),
                   check_files: bool = True) -> List[Row]:
    """Rows of an index CSV.  Every referenced file is checked now, so no row is dropped silently:
    missing files raise FileNotFoundError naming the CSV, the line numbers and the paths."""
    rows, missing = [], []
    for line, fields in _csv_rows(csv_path):
        if not fields or all(not x.strip() for x in fields):
            continue  # blank line: not a row
        raw = ",".join(fields)
        img, dep = _parse_row(fields, csv_path, line, raw)
        if line == 1 and _looks_like_header(img, dep) and not os.path.exists(os.path.join(data_root, img)):
            raise DatasetFormatError(f"{csv_path}: line 1: {raw!r} looks like a header row; index "
                                     f"CSVs have none (each line is image_path,depth_path): delete it")
        img_abs = _checked(img, "image", data_root, alt_roots, check_files, line, missing)
        if isinstance(dep, str):
            dep = _checked(dep, "depth", data_root, alt_roots, check_files, line, missing)
        elif dep is None:
            dep = img_abs
        rows.append(Row(img_abs, dep, line, img))
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(f"{csv_path}: {len(missing)} file(s) listed in the index do not exist "
                                f"(paths are relative to the data root {data_root!r}):\n  {shown}{more}")
    return rows


def _csv_rows(csv_path: str):
    """(line number, fields) of a UTF-8 CSV (a byte-order mark is skipped); other encodings are
    refused with the line of the first undecodable byte."""
    with open(csv_path, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DatasetFormatError(f"{csv_path}: line {line}: byte {data[e.start]:#04x} is not UTF-8; save the "
                                 f"index as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    for fields in reader:
        yield reader.line_num, fields


def _looks_like_header(img, dep) -> bool:
    """A first row of column names (image_path,depth_path; rgb,depth) rather than file names."""
    return isinstance(dep, str) and not any("." in x or "/" in x or "\\" in x for x in (img, dep))


def _checked(p, what, data_root, alt_roots, check, line, missing) -> str:
    found, tried = _resolve(p, data_root, alt_roots) if check else (None, [os.path.join(data_root, p)])
    if found is None and check:
        missing.append(f"line {line}: {what} file {p!r} not found (looked for {', '.join(tried)})")
    return found or tried[0]


# ============================================================================ datasets
class DepthDataset(Dataset):
    """Image+depth pairs listed in an index CSV, decoded per the domain spec and transformed.

    Each row is read by extension: `.h5` rows are sparse-to-dense HDF5 files, `.mat` rows are
    `nyu_depth_v2_labeled.mat,<frame>`, anything else an image file plus a depth file decoded with
    the split's encoding.  Subclasses only set defaults for their source.
    """

    default_spec: Optional[DomainSpec] = None
    rgb_to_depth_size = False    # resize colour to depth size (ScanNet) instead of requiring equality
    line_word = "line"

    def __init__(self, csv_file: Optional[str], data_root: str = dom.DEFAULT_DATA_ROOT, spec=None, split: str = "train",
                 train: Optional[bool] = None, scale: float = 1.0, transform=None, check_files: bool = True,
                 full_frame: bool = False, rows: Optional[List[Row]] = None, scannet_resize: str = "twice",
                 nyu_rotation: str = "bilinear"):
        spec = get_domain(spec) if spec is not None else self.default_spec
        if spec is None:
            raise ValueError(f"{type(self).__name__} needs a domain spec")
        if split not in dom.SPLITS:
            raise ValueError(f"split must be one of {dom.SPLITS}, got {split!r}")
        self.spec, self.split, self.data_root, self.csv_file = spec, split, data_root, csv_file
        self.train = (split != "test") if train is None else bool(train)
        self.encoding = spec.encoding(split)
        if scannet_resize not in SCANNET_RESIZES:
            raise ValueError(f"scannet_resize must be one of {SCANNET_RESIZES}, got {scannet_resize!r}")
        self.scannet_resize = scannet_resize
        self.transform = transform or build_transform(spec, self.train, scale, full_frame, nyu_rotation)
        if rows is None:
            _require_file(csv_file, spec, split, data_root)
            rows = read_index_csv(csv_file, data_root, spec.alt_roots, check_files)
        self.rows = rows
        self._validate_rows()

    def _validate_rows(self) -> None:
        """Hook for subclasses that only accept some row kinds."""

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, row: Row) -> str:
        """'<csv>: line <n>' for messages."""
        return f"{self.csv_file}: {self.line_word} {row.line}"

    def read_pair(self, row: Row) -> Tuple[Image.Image, np.ndarray]:
        """Decoded (RGB image, depth metres) of one row, before any transform."""
        low = row.image.lower()
        if low.endswith(H5_EXT):
            return read_h5_pair(row.image, self.encoding.get("rgb_key", "rgb"), self.encoding.get("key", "depth"))
        if low.endswith(MAT_EXT):
            return read_mat_frame(row.image, int(row.depth))
        image = load_rgb(row.image)
        depth = decode_depth(row.depth, self.encoding)
        return self._align(image, depth), depth

    def _align(self, image: Image.Image, depth: np.ndarray) -> Image.Image:
        h, w = depth.shape
        if image.size == (w, h):
            return image
        if self.rgb_to_depth_size or self.spec.rgb_to_depth_size:
            if self.scannet_resize == "once" and getattr(self.transform, "resize", None) not in (None, "cover"):
                return image  # the authors' single resize: the transform takes colour straight to its size
            return image.resize((w, h), Image.BILINEAR)
        raise DatasetFormatError(f"image is {image.size[0]}x{image.size[1]} but depth is {w}x{h} (WxH); "
                                 f"domain '{self.spec.name}' expects equal sizes")

    def load(self, index: int) -> Tuple[Image.Image, np.ndarray]:
        """read_pair with the CSV, line and path named in any error."""
        row = self.rows[index]
        try:
            return self.read_pair(row)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.where(row)}: {e}") from None
        except (DatasetFormatError, OSError, ValueError, KeyError) as e:
            raise DatasetFormatError(f"{self.where(row)}: cannot load {row.image_raw!r}: {e}") from e

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        image, depth = self.load(index)
        try:
            img, d = self.transform(image, depth)
        except DatasetFormatError as e:
            hint = rendered_scale_hint(self.data_root, getattr(self.transform, "scale", 1.0))
            raise DatasetFormatError(f"{self.where(row)}: {row.image_raw!r}: {e}{hint}") from None
        item = {"image": img, "depth": d, "domain": self.spec.name, "path": row.image_raw}
        window = getattr(self.transform, "last_window", None)  # a user's own transform may not say
        if window is not None:
            item["window"] = torch.tensor(window, dtype=torch.int64)
        return item


def rendered_scale_hint(data_root: str, scale: float) -> str:
    """A hint when ``data_root`` is a synthetic set rendered smaller than the requested input scale."""
    try:
        rendered = float(read_json(os.path.join(data_root, "meta.json")).get("scale", 1.0))
    except (ValueError, TypeError, AttributeError):  # no meta.json (None), or not a synthetic set's
        return ""
    if rendered + 1e-9 >= scale:
        return ""
    return (f" ({os.path.join(data_root, 'meta.json')}: this synthetic set was rendered at scale {rendered:g}; "
            f"use --scale {rendered:g} or less, or regenerate it with `python synthetic.py --out {data_root}`)")


class NYUCSVDataset(DepthDataset):
    """NYU-v2 CSV release: train depth 8-bit PNG (value/255*10 m), test depth 16-bit mm PNG."""
    default_spec = dom.NYU


class NYUH5Dataset(DepthDataset):
    """NYU-v2 sparse-to-dense HDF5 files (`rgb` (3,480,640) uint8, `depth` float32 metres); the CSV
    lists the .h5 file in the image column, the depth column repeats it or is empty."""
    default_spec = dom.NYU

    def _validate_rows(self):
        for r in self.rows:
            if not r.image.lower().endswith(H5_EXT):
                raise DatasetFormatError(f"{self.where(r)}: expected an .h5 file in the image column, got {r.image_raw!r}")


class NYUMatDataset(DepthDataset):
    """NYU-v2 official labeled file (nyu_depth_v2_labeled.mat, MATLAB v7.3 = HDF5).

    From a CSV of rows `path/to/nyu_depth_v2_labeled.mat,<1-based frame>` (prepare_data.py nyu_mat
    writes them), or directly with `NYUMatDataset.from_mat(mat, split, split_file)`.
    """
    default_spec = dom.NYU

    def _validate_rows(self):
        counts: Dict[str, int] = {}
        for r in self.rows:
            if not r.image.lower().endswith(MAT_EXT) or not isinstance(r.depth, int):
                raise DatasetFormatError(f"{self.where(r)}: expected 'file.mat,<frame>', got {r.image_raw!r}")
            if os.path.exists(r.image):
                n = counts.setdefault(r.image, mat_num_frames(r.image))
                if r.depth > n:
                    raise DatasetFormatError(f"{self.where(r)}: frame {r.depth} outside 1..{n} of {r.image_raw!r}")

    @classmethod
    def from_mat(cls, mat_path: str, split: str = "test", split_file: Optional[str] = None, spec=None,
                 train: Optional[bool] = None, scale: float = 1.0, **kw) -> "NYUMatDataset":
        """Frames of one split.  split_file: .txt of 1-based test indices or the official splits.mat
        (testNdxs); train = all other frames.  Without a split file every frame is used."""
        if not os.path.isfile(mat_path):
            raise FileNotFoundError(f".mat file not found: {mat_path}")
        n = mat_num_frames(mat_path)
        idx = split_indices(n, split, split_file)
        rows = [Row(mat_path, i, i, os.path.basename(mat_path)) for i in idx]
        ds = cls(None, os.path.dirname(mat_path), spec, "test" if split == "test" else "train",
                 train, scale, rows=rows, **kw)
        ds.csv_file, ds.line_word = mat_path, "frame"
        return ds


def split_indices(n: int, split: str, split_file: Optional[str]) -> List[int]:
    """1-based frame indices of `split` ("train"/"test"/"all") given an optional test-index file."""
    if split_file is None or split == "all":
        return list(range(1, n + 1))
    test = sorted(set(read_index_list(split_file)))
    bad = [i for i in test if not 1 <= i <= n]
    if bad:
        raise DatasetFormatError(f"{split_file}: indices {bad[:5]} outside 1..{n} (indices are 1-based)")
    if split == "test":
        return test
    ts = set(test)
    return [i for i in range(1, n + 1) if i not in ts]


class KITTIDataset(DepthDataset):
    """KITTI depth benchmark: 16-bit PNG ground truth, metres = value/256, 0 = no LiDAR point."""
    default_spec = dom.KITTI


class ScanNetDataset(DepthDataset):
    """ScanNet exported frames: 16-bit mm depth (0 = hole); colour resized to the depth size."""
    default_spec = dom.SCANNET
    rgb_to_depth_size = True


class GenericPNGDataset(DepthDataset):
    """A custom domain: image + depth file pairs decoded with the spec's encoding."""


SOURCE_CLASSES = {
    "nyu_csv": NYUCSVDataset, "nyu_h5": NYUH5Dataset, "nyu_mat": NYUMatDataset,
    "kitti": KITTIDataset, "scannet": ScanNetDataset, "generic_png": GenericPNGDataset,
}

_PREPARE_CMD = {"nyu": "nyu", "kitti": "kitti", "scannet": "scannet"}


def _how_to_create(spec: DomainSpec, split: str, data_root: str) -> str:
    if split == "replay":
        return (f"draw it from the training index with `python prepare_data.py replay --domain {spec.letter} "
                f"--data-root {data_root}`, or generate synthetic data with `python synthetic.py --out {data_root}`")
    cmd = _PREPARE_CMD.get(spec.name, "generic")
    extra = f" --domain {spec.letter}" if cmd == "generic" else ""
    return (f"create it from the real dataset with `python prepare_data.py {cmd} --src /path/to/{spec.name}"
            f"{extra} --data-root {data_root}`, or generate synthetic stand-in data with "
            f"`python synthetic.py --out {data_root}`")


def _require_file(csv_file, spec, split, data_root) -> None:
    if csv_file is None or not os.path.isfile(csv_file):
        raise FileNotFoundError(f"index CSV {csv_file!r} ({split} split of domain {spec.letter}/{spec.name}) "
                                f"does not exist; {_how_to_create(spec, split, data_root)}")


def _require_root(data_root: str) -> None:
    if not os.path.isdir(data_root):
        raise FileNotFoundError(
            f"data root {data_root!r} does not exist; create it with `python prepare_data.py "
            f"{{nyu,kitti,scannet}} --src /path/to/dataset --data-root {data_root}` (real data) or "
            f"`python synthetic.py --out {data_root}` (synthetic stand-in data)")


def split_validation(train_set, replay_rows: set, n_val: int, seed: int):
    """Indices (train, validation) of a domain's training rows. Validation rows are drawn from the
    rows outside the replay buffer, with a fixed seed, so every stage validates on the same images
    and none of them is ever trained on: an image listed twice is one candidate, and every row of a
    held-out image leaves the training rows."""
    rows = train_set.rows
    first = {}
    for i, row in enumerate(rows):
        if row.image not in replay_rows:
            first.setdefault(row.image, i)
    candidates = sorted(first.values())
    rng = np.random.default_rng(seed)
    val = sorted(rng.permutation(candidates)[:n_val].tolist()) if n_val > 0 else []
    held = {rows[i].image for i in val}
    return [i for i in range(len(train_set)) if rows[i].image not in held], val


def get_dataset(domain, split: str, data_root: str = dom.DEFAULT_DATA_ROOT, train: Optional[bool] = None,
                scale: float = 1.0, *, full_frame: bool = False, check_files: bool = True,
                transform=None, scannet_resize: str = "twice", nyu_rotation: str = "bilinear") -> DepthDataset:
    """Dataset of one domain and split ("train" | "test" | "replay").

    train defaults to split != "test" (replay rows get the training transform).  Custom domains
    in `<data_root>/domains.json` are registered first.  full_frame: evaluate on uncropped frames.
    scannet_resize: "twice" (ours: colour to the depth size, then the recipe's resize) or "once"
    (the authors': colour straight to the recipe's size). nyu_rotation: "bilinear" or "spline".
    """
    _require_root(data_root)
    load_domains_from_root(data_root)
    spec = get_domain(domain)
    if split not in dom.SPLITS:
        raise ValueError(f"split must be one of {dom.SPLITS}, got {split!r}")
    csv_file = os.path.join(data_root, spec.csv_name(split))
    _require_file(csv_file, spec, split, data_root)
    cls = SOURCE_CLASSES[spec.source]
    return cls(csv_file, data_root, spec, split=split, train=train, scale=scale, transform=transform,
               check_files=check_files, full_frame=full_frame, scannet_resize=scannet_resize,
               nyu_rotation=nyu_rotation)


# ============================================================================ loaders
def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a worker from torch's per-worker seed (itself from the loader seed)."""
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


def get_loader(dataset, batch_size: int, shuffle: bool = False, workers: int = 0, device="cpu",
               seed: int = 0, drop_last: bool = False, sampler=None) -> DataLoader:
    """DataLoader with a seeded generator: the order (and, with workers, the augmentation) of
    every epoch is reproducible.  With a sampler (e.g. DistributedSampler) `shuffle` is ignored:
    the sampler decides the order.  pin_memory only for CUDA devices."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    pin = torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=bool(shuffle) and sampler is None,
                      sampler=sampler, num_workers=workers, pin_memory=pin, drop_last=drop_last,
                      generator=g, worker_init_fn=seed_worker if workers > 0 else None,
                      persistent_workers=workers > 0)
