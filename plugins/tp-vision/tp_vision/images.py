"""Image files to RGB arrays: how tp reads every image, at preprocess time and at evaluation.

`decode` turns one file (a path or its bytes) into an (H, W, 3) uint8 RGB array whatever its mode
(greyscale, palette, alpha, CMYK, 16-bit) and EXIF orientation; `fit` makes that array the
recipe's stored square; `decode_many` does both for a stream of paths in parallel and yields
the results in order. A file that cannot be read is an `ImageError` naming the file and the fix.

Alpha: transparent pixels are composited onto white, as `transformers`' `convert_to_rgb` does
(so a decoded RGBA file equals what an HF image processor sees). A bare `convert("RGB")` (timm,
older HF) keeps the colour stored under transparent pixels instead, which is often black or junk.
"""

from __future__ import annotations

import io
import itertools
import math
import multiprocessing
import sys
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
from PIL import Image, ImageOps

from tpcli.errors import DataError

# Pillow's resampling filters by the names recipes use (HF's int codes are these enum values).
RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16- and 32-bit greyscale modes
CHUNK = 16  # files per task of decode_many: amortises the pool's per-task cost on tiny images
WINDOW = 2  # chunks in flight per worker: memory stays flat however long the corpus
OnError = Literal["raise", "skip"]


class ImageError(DataError):
    """An image file that cannot be decoded (missing, corrupt, truncated, not an image, too big)."""


def decode(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """The image in `source` (a path, or the file's bytes with `name` for messages) as an
    (H, W, 3) uint8 RGB array, EXIF orientation applied; the first frame of an animation or a
    multi-page file. Greyscale, palette, CMYK and 16-bit files become RGB (16-bit scaled by the
    file's bit depth, not clipped); alpha is composited onto white. Raises ImageError for
    anything Pillow cannot read in full: a truncated file is an error, never silently padded
    (ImageFile.LOAD_TRUNCATED_IMAGES is left alone)."""
    label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as im:
            check_pixels(im, label)
            im.load()  # the whole file now: truncation and corruption raise here
            return to_rgb(upright(im), declared_bits(im))
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"image {label} not found", hint="check the path (relative paths are "
                         "read from the current folder) and that the file exists") from e
    except (IsADirectoryError, PermissionError) as e:
        raise ImageError(f"image {label} cannot be opened: {e.strerror}",
                         hint="check the path and the file's permissions") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise bomb_error(label, str(e)) from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        kind = "not an image Pillow can read" if isinstance(e, Image.UnidentifiedImageError) \
            else f"corrupt or truncated ({e})"
        raise ImageError(f"image {label} is {kind}", hint="re-download or re-export the file, or "
                         "remove it from the corpus (preprocess can skip bad images and report "
                         "them instead of stopping)") from e


def upright(im: Image.Image) -> Image.Image:
    """The loaded image turned by its EXIF orientation. Malformed EXIF metadata leaves the image
    as stored rather than losing a good picture over its metadata."""
    try:
        ImageOps.exif_transpose(im, in_place=True)  # in place: no copy for an upright image
    except Exception:  # Pillow's EXIF parser raises many kinds on bad tags
        pass
    return im


def check_pixels(im: Image.Image, label: str) -> None:
    """ImageError when the image is over Pillow's decompression-bomb limit, checked here rather
    than through a warnings filter: `warnings.catch_warnings` is not thread-safe."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
        raise bomb_error(label, f"{im.width}x{im.height} = {im.width * im.height:,} pixels, over "
                         f"Pillow's limit of {limit:,}")


def bomb_error(label: str, detail: str) -> ImageError:
    return ImageError(f"image {label} is too large to decode safely: {detail}",
                      hint="if the file is genuine, downscale it before preprocessing, or raise "
                      "PIL.Image.MAX_IMAGE_PIXELS in a plugin (it guards against decompression "
                      "bombs, files that expand to gigabytes)")


def declared_bits(im: Image.Image) -> int | None:
    """Bits per sample the file declares for a deep greyscale image (TIFF's BitsPerSample, e.g.
    12 for a 12-bit scan stored in 16-bit words); None when the file does not say, or says 32
    (a 32-bit TIFF rarely uses its range: the data decides, see deep_to_uint8)."""
    tags = getattr(im, "tag_v2", None)
    if im.mode not in DEEP_GREY or tags is None or 258 not in tags:
        return None
    bits = tags[258]
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    return bits if 8 < bits <= 16 else None


def to_rgb(im: Image.Image, bits: int | None = None) -> np.ndarray:
    """A loaded Pillow image of any mode as an (H, W, 3) uint8 RGB array."""
    if im.mode in DEEP_GREY or im.mode == "F":
        grey = deep_to_uint8(np.asarray(im), im.mode, bits)  # (H, W)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ("RGBa", "La"):  # premultiplied alpha: undo it first
        im = im.convert(im.mode.upper())
    if "A" in im.getbands() or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return np.array(im.convert("RGB"))  # (H, W, 3), owns its memory


def deep_to_uint8(a: np.ndarray, mode: str, bits: int | None) -> np.ndarray:
    """16/32-bit integer or float greyscale to uint8 by the bit depth: the full range of the
    depth maps to 0..255 (Pillow's own conversion clips everything above 255 to white). The
    depth is the file's declared one, else 16 for 16-bit modes and for 32-bit data that fits
    in 16 bits (a 16-bit PNG read as mode I), else 31 (signed 32-bit). Float (mode F) is taken
    as 0..1 when it fits there, else 0..255."""
    if mode == "F":
        scale = 255.0 if float(a.max(initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    if bits is None:
        bits = 16 if mode != "I" or int(a.max(initial=0)) < 65536 else 31
    top = (1 << bits) - 1
    a = np.clip(a.astype(np.float64), 0, top)
    return np.rint(a * (255.0 / top)).astype(np.uint8)


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side `size` and the aspect kept, the longer side truncated the
    way torchvision's and HF's `shortest_edge` resize truncate it."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize(image: np.ndarray, size: tuple[int, int], resample: str = "bicubic") -> np.ndarray:
    """(H, W, 3) uint8 resized to size=(h, w) by Pillow (antialiased when shrinking)."""
    if image.shape[:2] == size:
        return image
    out = Image.fromarray(image).resize((size[1], size[0]), resample=RESAMPLE[resample])
    return np.array(out)  # (h, w, 3)


def centre_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre (h, w) of an (H, W, C) array; a side shorter than asked is padded with zeros
    (the image sits at offset ceil(pad / 2)), as HF's center_crop does."""
    out = image
    for axis, want in enumerate(size):
        have = out.shape[axis]
        if want <= have:
            start = (have - want) // 2
            out = out[start:start + want] if axis == 0 else out[:, start:start + want]
        else:
            before = math.ceil((want - have) / 2)
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, want - have - before)
            out = np.pad(out, pad)
    return out


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """How `tp preprocess` stores an image: the shorter side resized to `size` (bicubic,
    antialiased) then the centre (size, size) cropped. (H, W, 3) uint8 -> (size, size, 3) uint8.
    An image whose shorter side is already `size` is only cropped (no resampling)."""
    target = shorter_side_size(image.shape[0], image.shape[1], size)
    return np.ascontiguousarray(centre_crop(resize(image, target, "bicubic"), (size, size)))


def load(paths: list[str | Path], size: int | None,
         ) -> list[tuple[np.ndarray | None, tuple[str, str] | None]]:
    """decode (+ fit) a chunk of files for decode_many: per file the array, or the error's
    (message, hint) (plain strings: a TpError's hint would not survive pickling)."""
    out: list[tuple[np.ndarray | None, tuple[str, str] | None]] = []
    for path in paths:
        try:
            image = decode(path)
            out.append(((fit(image, size) if size else image), None))
        except ImageError as e:
            out.append((None, (e.message, e.hint or "")))
    return out


def decode_many(paths: Iterable[str | Path], size: int | None, workers: int,
                on_error: OnError = "raise", pool: Literal["process", "thread"] = "process",
                ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(index, array, None) for each path in order, each image decoded and `fit` to `size`
    (None keeps the decoded size). A bad file raises its ImageError (on_error="raise", at its
    turn in the order) or yields (index, None, message) (on_error="skip": the caller counts and
    reports them).

    `workers` > 1 decodes ahead in parallel, in chunks of CHUNK files, at most workers * WINDOW
    chunks in flight however long `paths` is. pool="process" (forked workers on Linux, threads
    elsewhere) is the faster on 2 cores; 2 workers, best of 7 on a shared 2-core machine: 32x32
    PNGs 8.8k images/s vs 4.8k for threads and 7.3k serial (opening a file is Python work
    under the GIL, which threads fight over); 500x500 JPEGs fit to 224, 310/s vs 276/s threads
    and 188/s serial (Pillow releases the GIL while decoding and resizing, not for the rest)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if workers <= 1:
        chunks = (load([p], size) for p in paths)
        yield from settle(enumerate(r for chunk in chunks for r in chunk), on_error)
        return
    with executor(pool, workers) as ex:
        try:
            yield from settle(enumerate(ahead(ex, paths, size, workers * WINDOW)), on_error)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)  # a stopped caller stops the decoding


def executor(pool: Literal["process", "thread"], workers: int) -> Executor:
    """A process pool of forked workers (fork starts in milliseconds; spawn re-imports torch,
    seconds), or threads where the platform has no safe fork or this process may not have
    children (a DataLoader worker is a daemon)."""
    daemon = multiprocessing.current_process().daemon
    if pool == "process" and sys.platform == "linux" and not daemon:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers, thread_name_prefix="tp-decode")


def ahead(ex: Executor, paths: Iterable[str | Path], size: int | None, window: int,
          ) -> Iterator[tuple[np.ndarray | None, tuple[str, str] | None]]:
    """load() results in order, up to `window` chunks submitted ahead of the one yielded."""
    pending: deque[Future] = deque()
    it = iter(paths)
    while chunk := list(itertools.islice(it, CHUNK)):
        pending.append(ex.submit(load, chunk, size))
        if len(pending) >= window:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


def settle(results: Iterable[tuple[int, tuple[np.ndarray | None, tuple[str, str] | None]]],
           on_error: OnError) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """The caller's triples from numbered load() results: raise or pass on each error."""
    for i, (image, error) in results:
        if error is None:
            yield i, image, None
        elif on_error == "raise":
            raise ImageError(error[0], hint=error[1] or None)
        else:
            yield i, None, error[0]
