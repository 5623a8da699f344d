"""tp_vision.images: decoding real files of every mode to RGB, the errors, fit, decode_many."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers.image_transforms import convert_to_rgb

from tp_vision.images import ImageError, decode, decode_many, fit
from tpcli.errors import DataError

RNG = np.random.default_rng(0)


def rgb(h: int = 24, w: int = 36) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgba_png_composites_alpha_onto_white_as_hf_does(tmp_path: Path) -> None:
    pixels = np.concatenate([rgb(), RNG.integers(0, 256, (24, 36, 1), dtype=np.uint8)], axis=2)
    pixels[0, :, 3] = 0  # a fully transparent row
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, "RGBA").save(path)
    out = decode(path)
    assert out.shape == (24, 36, 3) and out.dtype == np.uint8
    assert (out[0] == 255).all()  # transparent -> white, whatever colour was stored there
    a = pixels[..., 3:].astype(np.float64) / 255
    expected = a * pixels[..., :3] + (1 - a) * 255
    assert np.abs(out - expected).max() <= 1  # alpha blending, up to Pillow's rounding
    np.testing.assert_array_equal(out, convert_to_rgb(Image.open(path), return_numpy=True))


def test_palette_with_transparency(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    index = RNG.integers(0, 3, (10, 12), dtype=np.uint8)
    im = Image.fromarray(index, "L").convert("P")
    im.putdata(index.ravel().tolist())
    im.putpalette(palette)
    path = tmp_path / "p.png"
    im.save(path, transparency=2)  # blue is transparent
    out = decode(path)
    colours = np.array(palette[:9], np.uint8).reshape(3, 3)
    expected = colours[index]
    expected[index == 2] = 255
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_greyscale_becomes_three_equal_channels(tmp_path: Path, mode: str) -> None:
    grey = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    im = Image.fromarray(grey, "L").convert(mode)
    path = tmp_path / f"g_{mode}.png"
    im.save(path)
    out = decode(path)
    assert out.shape == (20, 30, 3)
    reference = np.array(im.convert("L"))  # LA here is fully opaque
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], reference)


def test_16_bit_png_is_scaled_by_its_depth_not_clipped(tmp_path: Path) -> None:
    deep = np.linspace(0, 65535, 20 * 30).round().astype(np.uint16).reshape(20, 30)
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    assert Image.open(path).mode == "I;16"
    out = decode(path)
    expected = np.rint(deep / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out[..., 0].max() == 255 and out[0, 0, 0] == 0
    assert (out[..., 0] < 255).mean() > 0.9  # Pillow's own convert("RGB") clips >255 to white


def test_32_bit_and_float_tiffs(tmp_path: Path) -> None:
    deep = np.linspace(0, 65535, 20 * 30).round().astype(np.int32).reshape(20, 30)
    Image.fromarray(deep).save(tmp_path / "i.tif")  # mode I: 16-bit data in 32-bit words
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(decode(tmp_path / "i.tif")[..., 1],
                                  np.rint(deep / 65535 * 255).astype(np.uint8))
    unit = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    Image.fromarray(unit).save(tmp_path / "f.tif")  # mode F in [0, 1]
    np.testing.assert_array_equal(decode(tmp_path / "f.tif")[..., 2],
                                  np.rint(unit * 255).astype(np.uint8))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    smooth = np.kron(rgb(6, 8), np.ones((8, 8, 1), np.uint8))  # blocks: little JPEG loss
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(smooth).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    out = decode(path)
    assert out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth).mean() < 4


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    im = Image.fromarray(rgb(40, 60))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif, quality=95)
    stored = np.array(Image.open(path))  # the pixels as stored, (40, 60, 3)
    out = decode(path)
    assert out.shape == (60, 40, 3)
    np.testing.assert_array_equal(out, np.rot90(stored, k=-1))


def test_bytes_with_a_name(tmp_path: Path) -> None:
    buf = io.BytesIO()
    pixels = rgb()
    Image.fromarray(pixels).save(buf, format="PNG")
    np.testing.assert_array_equal(decode(buf.getvalue(), name="x.png"), pixels)
    with pytest.raises(ImageError, match="shard-3/cat.png"):
        decode(buf.getvalue()[:50], name="shard-3/cat.png")


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.fromarray(rgb(64, 64)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageError, match="cut.jpg is corrupt or truncated") as e:
        decode(path)
    assert isinstance(e.value, DataError) and "remove it from the corpus" in (e.value.hint or "")


def test_text_named_jpg_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image at all")
    with pytest.raises(ImageError, match="notes.jpg is not an image Pillow can read"):
        decode(path)
    with pytest.raises(ImageError, match="gone.png not found"):
        decode(tmp_path / "gone.png")


@pytest.mark.parametrize("limit", [300, 100])  # 400 pixels: Pillow warns (over 1x), refuses (2x)
def test_decompression_bomb_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        limit: int) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(rgb(20, 20)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings(), pytest.raises(ImageError, match="big.png is too large") as e:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        decode(path)
    assert "MAX_IMAGE_PIXELS" in (e.value.hint or "")


def test_fit_resizes_the_shorter_side_then_crops_the_centre() -> None:
    # A 40x80 image: left quarter red, centre half green, right quarter blue.
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :20, 0], image[:, 20:60, 1], image[:, 60:, 2] = 255, 255, 255
    out = fit(image, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    # Halved to 20x40, the centre 20 columns are the green half: away from the edges, pure green.
    np.testing.assert_array_equal(out[:, 2:-2], np.broadcast_to([0, 255, 0], (20, 16, 3)))
    tall = fit(np.ascontiguousarray(image.transpose(1, 0, 2)), 20)
    np.testing.assert_array_equal(tall[2:-2], np.broadcast_to([0, 255, 0], (16, 20, 3)))
    assert fit(rgb(10, 16), 32).shape == (32, 32, 3)  # small images are enlarged


def test_fit_does_not_resample_an_image_of_the_right_size() -> None:
    square = rgb(32, 32)
    assert fit(square, 32) is square or np.array_equal(fit(square, 32), square)
    wide = rgb(32, 50)
    np.testing.assert_array_equal(fit(wide, 32), wide[:, 9:41])  # shorter side already 32: crop


def write_corpus(tmp_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    paths, images = [], []
    for i in range(40):
        image = rgb(16 + i % 5, 20)
        path = tmp_path / f"{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
        images.append(image)
    paths[7].write_text("broken")
    paths[30].write_bytes(paths[30].read_bytes()[:60])
    return paths, images


@pytest.mark.parametrize("workers,pool", [(1, "process"), (2, "thread"), (2, "process")])
def test_decode_many_in_order_skipping_bad_files(tmp_path: Path, workers: int, pool: str) -> None:
    paths, images = write_corpus(tmp_path)
    got = list(decode_many(iter(paths), 16, workers, on_error="skip", pool=pool))
    assert [i for i, _, _ in got] == list(range(40))
    for i, image, error in got:
        if i in (7, 30):
            assert image is None and f"{i}.png" in error
        else:
            assert error is None
            np.testing.assert_array_equal(image, fit(images[i], 16))


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_decode_many_raises_at_the_first_bad_file(tmp_path: Path, pool: str) -> None:
    paths, _ = write_corpus(tmp_path)
    seen = []
    with pytest.raises(ImageError, match="7.png is not an image") as e:
        for i, image, _ in decode_many(paths, None, 2, pool=pool):
            seen.append(i)
    assert seen == list(range(7)) and e.value.hint
    assert list(decode_many([], 16, 2)) == []


def test_decode_many_inside_a_daemon_process_uses_threads(tmp_path: Path) -> None:
    import multiprocessing

    paths, _ = write_corpus(tmp_path)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:  # pool workers are daemons: they may not fork their own
        counts = pool.apply(count_decoded, (paths,))
    assert counts == (38, 2)


def count_decoded(paths: list[Path]) -> tuple[int, int]:
    got = list(decode_many(paths, 16, 2, on_error="skip"))
    return sum(e is None for _, _, e in got), sum(e is not None for _, _, e in got)
