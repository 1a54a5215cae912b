import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from finetune.errors import BadImage, NotAnImage
from finetune.ml.images import (
    IMAGE_EXTENSIONS,
    aspect_aware_resize,
    decode_image,
    load_image,
    probe_image,
)

MAX_PIXELS = 50_000_000
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "photo.jpg") -> np.ndarray:
    return decode_image(data, name=name, max_pixels=max_pixels)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` but whose pixel data is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def assert_close(pixel, expected, tolerance=6):
    difference = np.abs(np.asarray(pixel, dtype=int) - np.asarray(expected, dtype=int))
    assert np.all(difference <= tolerance), (pixel, expected)


def test_image_extensions_are_lowercase_suffixes():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} == IMAGE_EXTENSIONS


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_decodes_each_format_to_rgb_uint8(fmt):
    array = decode(encode(Image.new("RGB", (30, 20), RED), fmt))
    assert array.shape == (20, 30, 3)
    assert array.dtype == np.uint8
    assert_close(array[10, 15], RED, tolerance=10)


def test_decodes_from_a_path(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (8, 6), RED).save(path)
    assert decode_image(path, name="red.png", max_pixels=MAX_PIXELS).shape == (6, 8, 3)
    assert decode_image(str(path), name="red.png", max_pixels=MAX_PIXELS).shape == (6, 8, 3)


def test_missing_path_raises_os_error_not_a_domain_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "nope.png", name="nope.png", max_pixels=MAX_PIXELS)


# --- conversions ------------------------------------------------------------------------


def test_greyscale_becomes_three_equal_channels():
    array = decode(encode(Image.new("L", (4, 4), 77), "PNG"))
    assert array.shape == (4, 4, 3)
    assert (array == 77).all()


def test_greyscale_with_alpha_is_composited_on_white():
    image = Image.new("LA", (4, 4), (0, 0))
    image.putpixel((1, 1), (0, 255))
    array = decode(encode(image, "PNG"))
    assert tuple(array[0, 0]) == WHITE
    assert tuple(array[1, 1]) == (0, 0, 0)


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((1, 1), (255, 0, 0, 255))
    image.putpixel((2, 2), (0, 0, 0, 128))
    array = decode(encode(image, "PNG"))
    assert tuple(array[0, 0]) == WHITE
    assert tuple(array[1, 1]) == RED
    assert_close(array[2, 2], (127, 127, 127), tolerance=2)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 1), 1)
    array = decode(encode(image, "PNG", transparency=0))
    assert tuple(array[0, 0]) == WHITE
    assert tuple(array[1, 1]) == BLUE


def test_palette_without_transparency_uses_palette_colours():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    assert tuple(decode(encode(image, "PNG"))[0, 0]) == GREEN


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    array = decode(data)
    assert array.shape == (16, 16, 3)
    assert_close(array[8, 8], RED, tolerance=10)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 1000], [32896, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    array = decode(data)
    assert array[:, :, 0].tolist() == [[0, 4], [128, 255]]
    assert (array[:, :, 0] == array[:, :, 2]).all()


def test_thirty_two_bit_tiff_within_sixteen_bit_range_is_scaled_the_same_way():
    values = np.array([[0, 1000], [32896, 65535]], dtype=np.int32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert decode(data)[:, :, 0].tolist() == [[0, 4], [128, 255]]


def test_thirty_two_bit_values_beyond_sixteen_bit_are_stretched():
    values = np.array([[-1000, 0], [100_000, 200_000]], dtype=np.int32)
    array = decode(encode(Image.fromarray(values), "TIFF"))[:, :, 0]
    assert array[0, 0] == 0
    assert array[1, 1] == 255
    assert 0 < array[0, 1] < array[1, 0] < 255


def test_float_image_in_unit_range_is_scaled():
    values = np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32)
    assert decode(encode(Image.fromarray(values), "TIFF"))[:, :, 0].tolist() == [[0, 128], [64, 255]]


def test_exif_orientation_six_rotates_the_image():
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    array = decode(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert array.shape == (40, 20, 3)
    assert_close(array[5, 10], BLUE, tolerance=12)
    assert_close(array[35, 10], RED, tolerance=12)


def test_animated_gif_yields_its_first_frame():
    frames = [Image.new("RGB", (10, 10), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    array = decode(data, name="anim.gif")
    assert array.shape == (10, 10, 3)
    assert tuple(array[5, 5]) == RED


def test_animated_webp_yields_its_first_frame():
    frames = [Image.new("RGB", (10, 10), colour) for colour in (GREEN, RED)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert tuple(decode(data, name="anim.webp")[5, 5]) == GREEN


def test_very_large_image_decodes_when_within_the_pixel_limit():
    array = decode(encode(Image.new("RGB", (4000, 3000), GREEN), "PNG"), max_pixels=12_000_000)
    assert array.shape == (3000, 4000, 3)


def test_two_by_two_is_the_smallest_accepted_image():
    assert decode(encode(Image.new("RGB", (2, 2), RED), "PNG")).shape == (2, 2, 3)


# --- refusals -----------------------------------------------------------------------------


def test_zero_bytes_is_a_bad_image(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImage, match="empty.jpg"):
        decode_image(path, name="empty.jpg", max_pixels=MAX_PIXELS)
    with pytest.raises(BadImage, match="empty.jpg"):
        decode(b"", name="empty.jpg")


@pytest.mark.parametrize(
    "data",
    [b"hello, this is a text file and not a photo\n" * 20, b"{}", b"\x00" * 300, b"%!PS"[:1] + b"x" * 100],
    ids=["text", "short-json", "zeros", "junk"],
)
def test_bytes_no_format_recognises_are_not_an_image(data):
    with pytest.raises(NotAnImage, match="notes.jpg") as caught:
        decode(data, name="notes.jpg")
    assert caught.value.status_code == 415


def test_truncated_jpeg_is_a_bad_image():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(BadImage, match="cut.jpg") as caught:
        decode(data[: len(data) // 2], name="cut.jpg")
    assert caught.value.status_code == 400


def test_truncated_png_is_a_bad_image():
    data = encode(Image.new("RGB", (64, 64), RED), "PNG")
    with pytest.raises(BadImage, match="cut.png"):
        decode(data[: len(data) - 30], name="cut.png")


def test_jpeg_with_a_valid_signature_but_garbage_header_is_a_bad_image():
    with pytest.raises(BadImage, match="garbage.jpg"):
        decode(b"\xff\xd8\xff" + b"\x13\x37" * 200, name="garbage.jpg")


def test_png_with_corrupt_pixel_data_is_a_bad_image():
    data = bytearray(encode(Image.new("RGB", (32, 32), RED), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 8] = b"\xde\xad\xbe\xef" * 2
    with pytest.raises(BadImage, match="broken.png"):
        decode(bytes(data), name="broken.png")


def test_image_over_the_pixel_limit_is_refused_from_its_header():
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    with pytest.raises(BadImage, match=r"big.png.*100x100.*5000"):
        decode(data, max_pixels=5000, name="big.png")


def test_header_claiming_huge_size_is_refused_before_decoding():
    data = png_header_only(8000, 8000)
    with pytest.raises(BadImage, match=r"bomb.png.*8000x8000"):
        decode(data, max_pixels=MAX_PIXELS, name="bomb.png")


def test_pillows_own_decompression_bomb_error_becomes_a_bad_image():
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadImage, match="bomb.png"):
        decode(png_header_only(100_000, 100_000), max_pixels=10**12, name="bomb.png")
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


@pytest.mark.parametrize("size", [(1, 1), (1, 50), (50, 1)])
def test_images_smaller_than_two_by_two_are_refused(size):
    with pytest.raises(BadImage, match=r"tiny.png.*smaller than 2x2"):
        decode(encode(Image.new("RGB", size, RED), "PNG"), name="tiny.png")


def test_pillow_global_pixel_limit_is_left_alone():
    before = Image.MAX_IMAGE_PIXELS
    decode(encode(Image.new("RGB", (10, 10), RED), "PNG"), max_pixels=100)
    with pytest.raises(BadImage):
        decode(encode(Image.new("RGB", (10, 10), RED), "PNG"), max_pixels=99)
    assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_bytes_only_ever_raise_domain_errors(data):
    fmt = data.draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]))
    original = encode(Image.new("RGB", (12, 9), BLUE), fmt)
    damaged = bytearray(original[: data.draw(st.integers(0, len(original)))])
    for _ in range(data.draw(st.integers(0, 6))):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    try:
        array = decode(bytes(damaged), name="fuzz.img")
    except (BadImage, NotAnImage) as error:
        assert "fuzz.img" in error.message
    else:
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3


# --- resize, load and probe ---------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, size",
    [(50, 100, 32), (100, 50, 32), (64, 64, 64), (10, 20, 64), (3000, 4000, 224), (224, 225, 224)],
)
def test_aspect_aware_resize_returns_a_square_of_the_requested_size(height, width, size):
    image = np.zeros((height, width, 3), dtype=np.uint8)
    out = aspect_aware_resize(image, size)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8


def three_bands(horizontal: bool) -> np.ndarray:
    """A 100x300 (or 300x100) image: red, green, blue bands along the long side."""
    bands = np.zeros((100, 300, 3), dtype=np.uint8)
    bands[:, :100] = RED
    bands[:, 100:200] = GREEN
    bands[:, 200:] = BLUE
    return bands if horizontal else np.ascontiguousarray(bands.transpose(1, 0, 2))


@pytest.mark.parametrize("horizontal", [True, False])
def test_aspect_aware_resize_keeps_the_centre_of_the_long_side(horizontal):
    out = aspect_aware_resize(three_bands(horizontal), 50)
    assert out.shape == (50, 50, 3)
    assert (out[5:-5, 5:-5] == GREEN).all()


def test_aspect_aware_resize_scales_the_short_side_without_stretching():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, 50:150] = WHITE
    out = aspect_aware_resize(image, 50)
    assert (out[:, 2:-2] == WHITE).all()


@pytest.mark.parametrize("size", [32, 224])
def test_an_image_already_at_size_keeps_the_pixels_pillows_resize_gives(size):
    """Skipping the resize of an image already `size` x `size` changes no pixel of what training saw."""
    image = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    through_pillow = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    out = aspect_aware_resize(image, size)
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, through_pillow)
    assert np.array_equal(out, image)


def test_load_image_decodes_and_resizes(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(three_bands(True)).save(path)
    out = load_image(path, name="wide.png", size=32, max_pixels=MAX_PIXELS)
    assert out.shape == (32, 32, 3)
    assert_close(out[16, 16], GREEN, tolerance=0)


def test_probe_image_answers_none_for_a_good_file(tmp_path):
    path = tmp_path / "good.jpg"
    Image.new("RGB", (20, 20), RED).save(path)
    assert probe_image(path, max_pixels=MAX_PIXELS) is None


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"just some text" * 10, "not an image"),
        (encode(Image.new("RGB", (1, 1), RED), "PNG"), "smaller than 2x2"),
        (png_header_only(8000, 8000), "more than the limit"),
    ],
)
def test_probe_image_names_the_file_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "cats" / "bad.jpg"
    path.parent.mkdir()
    path.write_bytes(content)
    answer = probe_image(path, max_pixels=MAX_PIXELS)
    assert "bad.jpg" in answer
    assert reason in answer


def test_probe_image_reports_an_unreadable_path(tmp_path):
    answer = probe_image(tmp_path / "gone.jpg", max_pixels=MAX_PIXELS)
    assert answer is not None and "gone.jpg" in answer
