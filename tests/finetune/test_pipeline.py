"""The input pipeline: decoding once, gathering batches, augmentation and preprocessing."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from finetune.ml.backbones import BACKBONES, get_backbone
from finetune.ml.pipeline import RandomAffine, bilinear_resample, decode_dataset, make_dataset
from finetune.ml.scan import scan_dataset
from finetune.ml.spec import AugmentationSpec
from tests.helpers import make_image

MAX_PIXELS = 50_000_000
RED, BLUE = np.array([255, 0, 0]), np.array([0, 0, 255])
NO_AUGMENTATION = dict(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0, horizontal_flip=False)


def identity(images):
    return images


def gradient_images(batch: int, height: int = 12, width: int = 16) -> np.ndarray:
    """Images whose pixels differ along x (so a mirror is visible) and from image to image."""
    x = np.arange(width, dtype=np.float32)[None, None, :, None]
    y = np.arange(height, dtype=np.float32)[None, :, None, None]
    n = np.arange(batch, dtype=np.float32)[:, None, None, None]
    channels = np.array([1.0, 2.0, 3.0], dtype=np.float32)[None, None, None, :]
    return (x * 10 + y + n * 3) * channels + np.zeros((batch, height, width, 3), np.float32)


# --- decode_dataset ------------------------------------------------------------------------


def test_decode_dataset_gives_uint8_arrays_of_the_asked_size(make_dataset_dir, tmp_path):
    scan = scan_dataset(make_dataset_dir(tmp_path / "d", per_class=3, size=40))
    decoded = decode_dataset(scan, size=32, max_pixels=MAX_PIXELS, workers=2)
    assert decoded.pixels.shape == (6, 32, 32, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.labels.dtype == np.int64
    assert decoded.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert decoded.scan is scan
    # blue images first (classes sorted), then red: colours follow the labels
    means = decoded.pixels.reshape(6, -1, 3).mean(axis=1)
    assert all(means[i, 2] > 200 and means[i, 0] < 60 for i in range(3))
    assert all(means[i, 0] > 200 and means[i, 2] < 60 for i in range(3, 6))


def test_a_corrupt_file_found_at_decode_time_moves_to_skipped(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=3)
    (root / "blue" / "blue_001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    scan = scan_dataset(root, probe=False)
    assert "blue/blue_001.png" in scan.files
    decoded = decode_dataset(scan, size=32, max_pixels=MAX_PIXELS)
    assert decoded.pixels.shape == (5, 32, 32, 3)
    assert decoded.labels.tolist() == [0, 0, 1, 1, 1]
    assert "blue/blue_001.png" not in decoded.scan.files
    assert [item.path for item in decoded.scan.skipped] == ["blue/blue_001.png"]
    assert "blue_001.png" in decoded.scan.skipped[0].reason
    # the surviving blue images are still blue: pixels and labels stay aligned
    means = decoded.pixels.reshape(5, -1, 3).mean(axis=1)
    assert (means[:2, 2] > 200).all() and (means[2:, 0] > 200).all()


def test_an_image_over_the_pixel_limit_found_at_decode_time_is_skipped(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=3, size=20)
    make_image("red", 60).save(root / "red" / "huge.png")
    scan = scan_dataset(root, probe=False)
    decoded = decode_dataset(scan, size=16, max_pixels=1000)
    assert [item.path for item in decoded.scan.skipped] == ["red/huge.png"]
    assert len(decoded.pixels) == len(decoded.labels) == 6


def test_decode_dataset_resizes_aspect_aware_by_centre_crop(tmp_path):
    # a wide image: red | green | blue thirds. A stretch would keep red and blue at the edges,
    # the aspect-aware resize crops the centre square, which is all green.
    root = tmp_path / "d"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for n in range(2):
            pixels = np.zeros((40, 120, 3), np.uint8)
            pixels[:, :40] = (255, 0, 0)
            pixels[:, 40:80] = (0, 255, 0)
            pixels[:, 80:] = (0, 0, 255)
            Image.fromarray(pixels).save(root / name / f"{n}.png")
    decoded = decode_dataset(scan_dataset(root), size=32, max_pixels=MAX_PIXELS)
    assert decoded.pixels.shape == (4, 32, 32, 3)
    pixels = decoded.pixels.astype(int)
    # only the outermost columns blend a little with the neighbouring thirds (bilinear filter)
    assert (pixels[..., 1] >= 200).all()
    assert (pixels[..., 0] <= 40).all() and (pixels[..., 2] <= 40).all()
    assert (pixels[:, :, 2:-2, 1] == 255).all()


def test_decode_dataset_uses_a_memory_map_over_the_limit(make_dataset_dir, tmp_path):
    scan = scan_dataset(make_dataset_dir(tmp_path / "d", per_class=2))
    decoded = decode_dataset(scan, size=16, max_pixels=MAX_PIXELS, cache_dir=tmp_path / "cache", in_memory_limit=0)
    assert isinstance(decoded.pixels, np.memmap)
    assert (tmp_path / "cache" / "decoded-16.npy").exists()
    in_memory = decode_dataset(scan, size=16, max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(np.asarray(decoded.pixels), in_memory.pixels)


# --- make_dataset ---------------------------------------------------------------------------


def coloured_set(count: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Image i is red when its label is 0, blue when 1, with its index written into pixel (0, 0, 1)."""
    labels = np.array([i % 3 % 2 for i in range(count)], dtype=np.int64)
    pixels = np.zeros((count, size, size, 3), np.uint8)
    pixels[labels == 0] = RED
    pixels[labels == 1] = BLUE
    pixels[:, 0, 0, 1] = np.arange(count)
    return pixels, labels


@pytest.mark.parametrize("memmap", [False, True])
def test_make_dataset_batches_keep_images_and_labels_together(tmp_path, memmap):
    pixels, labels = coloured_set(11)
    if memmap:
        mapped = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.uint8, shape=pixels.shape)
        mapped[:] = pixels
        pixels = mapped
    data = make_dataset(pixels, labels, batch_size=4, preprocess=identity, shuffle_seed=3)
    batches = list(data.as_numpy_iterator())
    assert [len(images) for images, _ in batches] == [4, 4, 3]
    seen = []
    for images, batch_labels in batches:
        assert images.dtype == np.float32 and images.shape[1:] == (8, 8, 3)
        assert batch_labels.dtype == np.int64
        for image, label in zip(images, batch_labels):
            index = int(image[0, 0, 1])
            seen.append(index)
            assert label == labels[index]
            expected = RED if label == 0 else BLUE
            np.testing.assert_array_equal(image[1, 1], expected)
    assert sorted(seen) == list(range(11))


def test_make_dataset_without_shuffle_keeps_the_order():
    pixels, labels = coloured_set(7)
    data = make_dataset(pixels, labels, batch_size=3, preprocess=identity)
    order = [int(image[0, 0, 1]) for images, _ in data.as_numpy_iterator() for image in images]
    assert order == list(range(7))


def test_make_dataset_shuffles_with_the_seed():
    pixels, labels = coloured_set(32)

    def order(seed):
        data = make_dataset(pixels, labels, batch_size=8, preprocess=identity, shuffle_seed=seed)
        return [int(image[0, 0, 1]) for images, _ in data.as_numpy_iterator() for image in images]

    assert order(1) == order(1)
    assert order(1) != list(range(32))
    assert sorted(order(1)) == list(range(32))


def test_make_dataset_applies_vgg_caffe_preprocessing():
    pixels = np.zeros((2, 4, 4, 3), np.uint8)
    pixels[0] = (255, 0, 0)
    pixels[1] = (10, 20, 30)
    preprocess = keras.applications.vgg16.preprocess_input
    images, _ = next(make_dataset(pixels, np.array([0, 1]), batch_size=2, preprocess=preprocess).as_numpy_iterator())
    mean_bgr = np.array([103.939, 116.779, 123.68], dtype=np.float32)
    np.testing.assert_allclose(images[0, 0, 0], np.array([0, 0, 255]) - mean_bgr, atol=1e-3)
    np.testing.assert_allclose(images[1, 2, 3], np.array([30, 20, 10]) - mean_bgr, atol=1e-3)


def test_make_dataset_applies_mobilenet_preprocessing():
    pixels = np.full((1, 4, 4, 3), 255, np.uint8)
    pixels[0, 0, 0] = 0
    preprocess = keras.applications.mobilenet.preprocess_input
    images, _ = next(make_dataset(pixels, np.array([0]), batch_size=1, preprocess=preprocess).as_numpy_iterator())
    np.testing.assert_allclose(images[0, 0, 0], [-1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(images[0, 1, 1], [1, 1, 1], atol=1e-6)


def test_make_dataset_with_augmentation_keeps_shapes_and_labels():
    pixels, labels = coloured_set(6, size=16)
    tf.random.set_seed(0)
    data = make_dataset(
        pixels, labels, batch_size=4, preprocess=identity, augmentation=AugmentationSpec(), shuffle_seed=0
    )
    for images, batch_labels in data.as_numpy_iterator():
        assert images.shape[1:] == (16, 16, 3)
        for image, label in zip(images, batch_labels):
            # nearest fill: no black borders, the colour of the label everywhere
            colour = RED if label == 0 else BLUE
            assert np.abs(image[4:12, 4:12] - colour).max() < 1e-3


# --- RandomAffine --------------------------------------------------------------------------


def test_random_affine_with_nothing_to_do_is_the_identity():
    images = gradient_images(4)
    out = RandomAffine(AugmentationSpec(**NO_AUGMENTATION))(tf.constant(images), training=True)
    np.testing.assert_allclose(out.numpy(), images, atol=1e-4)


def test_random_affine_flip_only_gives_the_image_or_its_mirror():
    tf.random.set_seed(1)
    images = gradient_images(24)
    layer = RandomAffine(AugmentationSpec(**{**NO_AUGMENTATION, "horizontal_flip": True}))
    out = layer(tf.constant(images), training=True).numpy()
    flipped = 0
    for original, result in zip(images, out):
        if np.allclose(result, original, atol=1e-4):
            continue
        np.testing.assert_allclose(result, original[:, ::-1], atol=1e-4)
        flipped += 1
    assert 0 < flipped < len(images)


@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (2, 20, 36, 3), (1, 17, 9, 3)])
def test_random_affine_keeps_the_shape(shape):
    images = tf.random.uniform(shape, 0, 255)
    out = RandomAffine(AugmentationSpec())(images, training=True)
    assert tuple(out.shape) == shape
    assert out.dtype == tf.float32


def test_random_affine_changes_images_when_training():
    tf.random.set_seed(2)
    images = gradient_images(4, 24, 24)
    out = RandomAffine(AugmentationSpec())(tf.constant(images), training=True).numpy()
    assert not np.allclose(out, images, atol=1e-2)


def test_random_affine_fills_with_the_nearest_pixel_not_black():
    # rotations, shifts, shears and zooms of a constant image are that constant everywhere
    images = np.full((8, 20, 20, 3), 77.0, np.float32)
    spec = AugmentationSpec(rotation=45, width_shift=0.4, height_shift=0.4, shear=30, zoom=0.5)
    out = RandomAffine(spec)(tf.constant(images), training=True).numpy()
    np.testing.assert_allclose(out, images, atol=1e-3)


def test_random_affine_passes_through_when_not_training():
    images = tf.constant(gradient_images(3))
    out = RandomAffine(AugmentationSpec())(images, training=False)
    np.testing.assert_array_equal(out.numpy(), images.numpy())


def test_random_affine_config_round_trips():
    spec = AugmentationSpec(rotation=10, zoom=0.3, horizontal_flip=False)
    layer = RandomAffine(spec, name="augment")
    clone = RandomAffine.from_config(layer.get_config())
    assert clone.spec == spec
    assert clone.name == "augment"


@pytest.mark.parametrize("shape", [(6, 32, 32, 3), (3, 20, 36, 3), (2, 17, 9, 1)])
def test_bilinear_resample_matches_tensorflows_projective_transform(shape):
    """The compiled resampling computes what ImageProjectiveTransformV3 (bilinear, nearest fill) does,
    for the transforms the augmentation draws, flips included, and for any projective rows."""
    tf.random.set_seed(3)
    images = tf.random.uniform(shape, 0, 255)
    spec = AugmentationSpec(rotation=40, width_shift=0.3, height_shift=0.3, shear=25, zoom=0.4)
    drawn = RandomAffine(spec).transforms(shape[0], float(shape[1]), float(shape[2]))
    projective = tf.concat([drawn[:, :6], tf.random.uniform([shape[0], 2], -0.01, 0.01)], axis=1)
    compiled = tf.function(bilinear_resample, jit_compile=True)
    for transforms in (drawn, projective):
        expected = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=shape[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="NEAREST",
        )
        np.testing.assert_allclose(compiled(images, transforms).numpy(), expected.numpy(), atol=0.01)


def test_random_affine_takes_uint8_and_applies_then_in_the_same_function():
    images = gradient_images(4).astype(np.uint8)
    layer = RandomAffine(AugmentationSpec(**NO_AUGMENTATION), then=lambda x: x / 127.5 - 1.0)
    out = layer(tf.constant(images), training=True).numpy()
    np.testing.assert_allclose(out, images / 127.5 - 1.0, atol=1e-4)
    np.testing.assert_allclose(layer(tf.constant(images), training=False).numpy(), images / 127.5 - 1.0, atol=1e-6)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbones_preprocessing_compiles_with_the_augmentation(backbone):
    images = tf.constant(gradient_images(2).astype(np.uint8))
    preprocess = get_backbone(backbone).preprocess()
    out = RandomAffine(AugmentationSpec(**NO_AUGMENTATION), then=preprocess)(images, training=True).numpy()
    np.testing.assert_allclose(out, preprocess(images.numpy().astype(np.float32)), atol=1e-3)


def test_the_training_stream_runs_without_tf_datas_autotuning_thread():
    """Its iterator's destructor waited up to a minute for that thread at the end of long phases."""
    pixels, labels = np.zeros((6, 8, 8, 3), np.uint8), np.array([0, 1] * 3)
    for augmentation in (None, AugmentationSpec()):
        data = make_dataset(pixels, labels, batch_size=4, preprocess=identity, augmentation=augmentation, epochs=3)
        assert data.options().autotune.enabled is False
        assert sum(len(batch_labels) for _, batch_labels in data.as_numpy_iterator()) == 18


# --- input_scaling: what reaches the backbone, per backbone and option --------------------------


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_unit_input_scaling_is_pixels_over_255_for_every_backbone(backbone):
    pixels = np.clip(gradient_images(2), 0, 255).astype(np.float32)
    out = np.asarray(get_backbone(backbone).preprocess("unit")(tf.constant(pixels)))
    np.testing.assert_allclose(out, pixels / 255.0, rtol=1e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_backbone_input_scaling_is_the_backbones_own_preprocess_input(backbone):
    module = get_backbone(backbone).module
    assert get_backbone(backbone).preprocess("backbone") is getattr(keras.applications, module).preprocess_input
    assert get_backbone(backbone).preprocess() is get_backbone(backbone).preprocess("backbone")


@pytest.mark.parametrize(
    ("backbone", "low", "high"),
    [("mobilenet", -1.0, 1.0), ("mobilenet_v2", -1.0, 1.0), ("efficientnet_b0", 0.0, 255.0)],
)
def test_backbone_input_scaling_ranges(backbone, low, high):
    pixels = np.array([[[[0, 0, 0], [255, 255, 255]]]], np.float32)
    out = np.asarray(get_backbone(backbone).preprocess("backbone")(tf.constant(pixels)))
    np.testing.assert_allclose([out.min(), out.max()], [low, high], atol=1e-5)


def test_vgg_backbone_input_scaling_is_caffe_mean_subtraction_not_a_rescaling():
    pixels = np.full((1, 1, 1, 3), 255.0, np.float32)
    out = np.asarray(get_backbone("vgg16").preprocess("backbone")(tf.constant(pixels)))
    np.testing.assert_allclose(out[0, 0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68], atol=1e-3)


def test_an_unknown_input_scaling_is_refused():
    with pytest.raises(ValueError, match="input_scaling"):
        get_backbone("mobilenet").preprocess("imagenet")


@pytest.mark.parametrize("scaling", ["backbone", "unit"])
def test_the_augmented_stream_applies_the_chosen_scaling(scaling):
    preprocess = get_backbone("mobilenet").preprocess(scaling)
    pixels = np.clip(gradient_images(2), 0, 255).astype(np.uint8)
    data = make_dataset(pixels, np.array([0, 1]), batch_size=2, preprocess=preprocess)
    images, _ = next(data.as_numpy_iterator())
    np.testing.assert_allclose(images, np.asarray(preprocess(pixels.astype(np.float32))), atol=1e-5)
    out = RandomAffine(AugmentationSpec(**NO_AUGMENTATION), then=preprocess)(tf.constant(pixels), training=True)
    np.testing.assert_allclose(out.numpy(), np.asarray(preprocess(pixels.astype(np.float32))), atol=1e-3)


# --- augmentation semantics: draw for draw, the seed's ImageDataGenerator -----------------------


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(
    "draw",
    [
        dict(theta=17.0, tx=4.0, ty=-3.0, shear=9.0, zx=0.85, zy=1.15),
        dict(theta=-28.0, tx=-3.5, ty=2.0, shear=-0.2, zx=1.2, zy=0.8),
        dict(theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0),
    ],
)
def test_the_projective_transform_is_keras_2s_apply_transform_for_the_same_draw(draw, flip):
    """The same random parameters give the image Keras 2's ImageDataGenerator gives (bilinear, nearest
    fill, about the centre, flip after), up to float rounding: the augmentation is not where the
    recipes differ (issue 18)."""
    import math

    import tf_keras

    from finetune.ml.pipeline import affine_transforms

    size = 40
    image = np.zeros((size, size, 3), np.float32)
    image[5:20, 8:30, 0] = 255
    image[22:35, 3:12, 1] = 200
    image[..., 2] = np.linspace(0, 255, size)[None, :]
    generator = tf_keras.preprocessing.image.ImageDataGenerator(fill_mode="nearest")
    expected = generator.apply_transform(image, {**draw, "flip_horizontal": flip})
    transforms = affine_transforms(
        theta=[math.radians(draw["theta"])],
        shift_x=[draw["tx"]],
        shift_y=[draw["ty"]],
        shear=[math.radians(draw["shear"])],
        zoom_x=[draw["zx"]],
        zoom_y=[draw["zy"]],
        flip=[float(flip)],
        height=size,
        width=size,
    )
    got = bilinear_resample(tf.constant(image[None]), transforms).numpy()[0]
    np.testing.assert_allclose(got, expected, atol=0.01)
