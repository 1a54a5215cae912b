"""Bad input over real HTTP against the real API (and a second API process with tight limits):
hostile and broken archives, broken and unusual images at upload and at /predict, oversized and
malformed requests, unknown ids, and a job on a dataset being deleted.

Every refused upload must leave nothing behind, under DATA_DIR or anywhere else in the service's
folders; every test ends by checking that the dataset and model made first are untouched.
"""

from __future__ import annotations

import io
import select
import socket
import stat
import tarfile
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import make_dataset_zip, make_image, make_image_bytes
from tests.integration.reliability_support import (
    assert_baseline_intact,
    snapshot,
    tiny_spec,
    tree_diff,
    upload_archive,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIGHT = {"MAX_UPLOAD_MB": "1", "MAX_IMAGE_PIXELS": "1000000", "ARCHIVE_MAX_FILES": "20", "MAX_PREDICT_FILES": "4"}


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tight_api(live_service, tmp_path_factory):
    """A second API on the same stores and Redis, with small limits (1 MB bodies, 1 MP images, 20 files)."""
    with live_service.extra_api(tmp_path_factory.mktemp("tight-api"), **TIGHT) as http:
        yield http


@pytest.fixture
def untouched(client, baseline, live_service):
    """Checks after the test that nothing was added or changed in the service's folders and that the
    baseline still lists and predicts the same."""
    root = live_service.data_dir.parent
    before = snapshot(root)
    yield root
    after = snapshot(root)
    assert after == before, tree_diff(before, after)
    assert_baseline_intact(client, baseline)


# --- builders -----------------------------------------------------------------------------------


def png(colour="red", size=40, seed=0) -> bytes:
    return make_image_bytes(colour, size, seed=seed)


def jpeg(colour="red", size=40) -> bytes:
    return make_image_bytes(colour, size, fmt="JPEG")


def good_files() -> dict[str, bytes]:
    return {f"{colour}/{colour}_{n}.png": png(colour, seed=n) for colour in ("red", "blue") for n in range(3)}


def zip_of(files: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_with_symlink() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in good_files().items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("red/escape.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def tar_of(files: dict[str, bytes], *, extra: list[tarfile.TarInfo] = (), mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return buffer.getvalue()


def tar_member(name: str, kind: bytes, **attributes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attributes.items():
        setattr(info, key, value)
    return info


def zip_bomb() -> bytes:
    """50 MB of zeros deflated to ~50 KB: a ratio of about 1000."""
    return zip_of({**good_files(), "red/zeros.png": bytes(50 * 1024 * 1024)})


def tar_gz_bomb() -> bytes:
    return tar_of({**good_files(), "red/zeros.png": bytes(50 * 1024 * 1024)}, mode="w:gz")


def forged_png(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims `width` x `height`: a decompression bomb by its header."""
    import struct
    import zlib

    data = bytearray(png())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (40, 40), (0, 200, 200, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 65535, 40 * 40).astype(np.uint16).reshape(40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def animated_gif(colour="blue") -> bytes:
    frames = [make_image(colour, 40, seed=n) for n in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg(colour="red") -> bytes:
    image = Image.new("RGB", (60, 40), colour)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def large_jpeg(colour="blue") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 2000), colour).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


CORRUPT_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
TEXT_AS_JPG = b"this is a shopping list, not a photo\n" * 20


def truncated_png() -> bytes:
    data = png(size=64)
    return data[: len(data) // 2]


# --- archives that are refused ------------------------------------------------------------------


def refused_archives() -> list[tuple[str, str, bytes, int, str]]:
    """(case id, file name, bytes, expected status, text the detail must contain)."""
    absolute_target = f"/tmp/escaped-{uuid.uuid4().hex}.png"
    return [
        ("zip-dotdot", "a.zip", zip_of({**good_files(), "red/../../escaped.png": png()}), 400, "outside"),
        ("zip-dotdot-top", "a.zip", zip_of({**good_files(), "../escaped.png": png()}), 400, "outside"),
        ("zip-absolute", "a.zip", zip_of({**good_files(), absolute_target: png()}), 400, "absolute"),
        ("zip-backslash-drive", "a.zip", zip_of({**good_files(), "C:\\temp\\escaped.png": png()}), 400, "absolute"),
        ("zip-symlink", "a.zip", zip_with_symlink(), 400, "symbolic link"),
        ("tar-dotdot", "a.tar", tar_of({**good_files(), "red/../../escaped.png": png()}), 400, "outside"),
        ("tar-absolute", "a.tar", tar_of({**good_files(), absolute_target: png()}), 400, "absolute"),
        (
            "tar-symlink",
            "a.tar",
            tar_of(good_files(), extra=[tar_member("red/link.png", tarfile.SYMTYPE, linkname="/etc/passwd")]),
            400,
            "symbolic link",
        ),
        (
            "tar-hardlink",
            "a.tar",
            tar_of(good_files(), extra=[tar_member("red/hard.png", tarfile.LNKTYPE, linkname="red/red_0.png")]),
            400,
            "hard link",
        ),
        (
            "tar-chardev",
            "a.tar",
            tar_of(good_files(), extra=[tar_member("red/null.png", tarfile.CHRTYPE, devmajor=1, devminor=3)]),
            400,
            "device",
        ),
        (
            "tar-blockdev",
            "a.tar",
            tar_of(good_files(), extra=[tar_member("red/disk.png", tarfile.BLKTYPE, devmajor=8, devminor=0)]),
            400,
            "device",
        ),
        ("tar-fifo", "a.tar", tar_of(good_files(), extra=[tar_member("red/pipe.png", tarfile.FIFOTYPE)]), 400, "fifo"),
        (
            "tgz-symlink",
            "a.tar.gz",
            tar_of(
                good_files(),
                extra=[tar_member("blue/link.png", tarfile.SYMTYPE, linkname="../../../etc/shadow")],
                mode="w:gz",
            ),
            400,
            "symbolic link",
        ),
        ("zip-bomb", "bomb.zip", zip_bomb(), 413, "compression bomb"),
        ("tgz-bomb", "bomb.tar.gz", tar_gz_bomb(), 413, "bytes"),
        ("png-named-zip", "photos.zip", png(), 400, "not a .zip"),
        ("text-named-zip", "photos.zip", b"PK? no, just text\n" * 10, 400, "not a .zip"),
        ("gzip-not-tar", "photos.tar.gz", __import__("gzip").compress(b"hello" * 100), 400, "not a .zip"),
        ("zero-bytes", "empty.zip", b"", 400, "not a .zip"),
        ("empty-zip", "empty.zip", zip_of({}), 400, "empty"),
        ("empty-tar", "empty.tar", tar_of({}), 400, "empty"),
        (
            "only-nested-archives",
            "n.zip",
            zip_of({"red/inner.zip": zip_of(good_files()), "blue/inner.tar": tar_of(good_files())}),
            400,
            "empty",
        ),
        ("top-level-images", "flat.zip", zip_of({"a.png": png(), "b.png": png("blue")}), 400, "top level"),
        (
            "too-deep",
            "deep.zip",
            zip_of(
                {f"2025/{k}": v for k, v in good_files().items()} | {f"2026/{k}": v for k, v in good_files().items()}
            ),
            400,
            "too deep",
        ),
        (
            "split-classes-differ",
            "splits.zip",
            zip_of(
                {f"train/{k}": v for k, v in good_files().items()}
                | {f"val/{k}": v for k, v in good_files().items() if k.startswith("red/")}
            ),
            400,
            "validation/ lacks blue",
        ),
        ("one-class", "one.zip", zip_of({f"red/{n}.png": png(seed=n) for n in range(4)}), 400, "2 classes"),
        ("truncated-zip", "cut.zip", zip_of(good_files())[:-200], 400, "corrupt"),
        ("duplicate-entry", "dup.zip", _duplicate_zip(), 400, "more than once"),
    ]


def _duplicate_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in good_files().items():
            archive.writestr(name, data)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            archive.writestr("red/red_0.png", png(seed=7))
    return buffer.getvalue()


REFUSED = refused_archives()


@pytest.mark.parametrize("case", REFUSED, ids=[case[0] for case in REFUSED])
def test_a_refused_archive_leaves_nothing_behind(client, live_service, untouched, case):
    _id, name, data, expected, needle = case
    datasets_before = sorted(p.name for p in live_service.data_dir.iterdir())
    response = upload_archive(client, name, data)
    assert response.status_code == expected, response.text
    detail = response.json()["detail"]
    assert needle.lower() in detail.lower(), detail
    assert sorted(p.name for p in live_service.data_dir.iterdir()) == datasets_before
    assert not list(Path("/tmp").glob("escaped-*.png"))
    assert not (untouched / "escaped.png").exists() and not (untouched.parent / "escaped.png").exists()


def test_too_many_files_is_refused_with_413(tight_api, live_service, untouched):
    files = {f"{colour}/{n}.png": png(colour, seed=n) for colour in ("red", "blue") for n in range(15)}
    before = sorted(p.name for p in live_service.data_dir.iterdir())
    response = upload_archive(tight_api, "many.zip", zip_of(files))
    assert response.status_code == 413, response.text
    assert "30 files" in response.json()["detail"] and "20" in response.json()["detail"]
    assert sorted(p.name for p in live_service.data_dir.iterdir()) == before


# --- archives that are accepted, with some files ignored or skipped -----------------------------


def test_mac_and_windows_litter_is_ignored_and_nested_archives_are_left_out(client, live_service, untouched):
    files = {
        **good_files(),
        "__MACOSX/red/._red_0.png": b"\x00\x05\x16\x07 resource fork",
        "__MACOSX/._red": b"\x00\x05\x16\x07",
        "red/.DS_Store": b"\x00\x00\x00\x01Bud1",
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "blue/Thumbs.db": b"\xd0\xcf\x11\xe0 thumbnails",
        "blue/desktop.ini": b"[.ShellClassInfo]",
        "red/nested.zip": zip_of(good_files()),
        "blue/sneaky.png": tar_of(good_files()),  # an archive by its magic bytes, named like an image
    }
    response = upload_archive(client, "litter.zip", zip_of(files))
    assert response.status_code == 201, response.text
    dataset = response.json()
    try:
        assert dataset["classes"] == ["blue", "red"]
        assert dataset["counts"] == {"blue": 3, "red": 3}
        assert dataset["skipped"] == []
        on_disk = sorted(
            p.relative_to(live_service.data_dir / dataset["id"]).as_posix()
            for p in (live_service.data_dir / dataset["id"]).rglob("*")
        )
        assert on_disk == sorted(
            ["dataset.json", "images", "images/blue", "images/red", *(f"images/{name}" for name in good_files())]
        )
    finally:
        assert client.delete(f"/datasets/{dataset['id']}").status_code == 204


def upload_with_bad_images(http: httpx.Client) -> httpx.Response:
    files = {
        **good_files(),
        "red/corrupt.jpg": CORRUPT_JPEG,
        "red/truncated.png": truncated_png(),
        "red/empty.jpg": b"",
        "red/list.jpg": TEXT_AS_JPG,
        "red/bomb.png": forged_png(30000, 30000),
        "red/dot.png": png(size=1),
        "red/notes.txt": b"not an image",
        "blue/tiny.png": png("blue", size=2),
        "blue/animated.gif": animated_gif(),
        "blue/deep.png": sixteen_bit_png(),
        "blue/cmyk.jpg": cmyk_jpeg(),
        "red/rotated.jpg": exif_rotated_jpeg(),
        "blue/large.jpg": large_jpeg(),
    }
    return upload_archive(http, "mixed.zip", zip_of(files))


BAD_AT_UPLOAD = {
    "red/corrupt.jpg": "corrupt",
    "red/truncated.png": "truncated",
    "red/empty.jpg": "empty",
    "red/list.jpg": "not an image",
    "red/bomb.png": "pixels",
    "red/dot.png": "smaller than",
    "red/notes.txt": "not an image file",
}


def test_bad_images_in_an_upload_are_skipped_with_a_reason(client, live_service, untouched):
    response = upload_with_bad_images(client)
    assert response.status_code == 201, response.text
    dataset = response.json()
    try:
        skipped = {item["path"]: item["reason"] for item in dataset["skipped"]}
        assert set(skipped) == set(BAD_AT_UPLOAD), skipped
        for path, needle in BAD_AT_UPLOAD.items():
            assert needle in skipped[path].lower(), (path, skipped[path])
        # tiny-but-legal, animated GIF, 16-bit PNG, CMYK JPEG, EXIF-rotated and 6 MP images are accepted
        assert dataset["counts"] == {"blue": 3 + 5, "red": 3 + 1}
        assert dataset["num_images"] == 12
    finally:
        assert client.delete(f"/datasets/{dataset['id']}").status_code == 204


def test_an_image_over_max_image_pixels_is_skipped_at_upload(tight_api, untouched):
    response = upload_with_bad_images(tight_api)
    assert response.status_code == 201, response.text
    dataset = response.json()
    try:
        skipped = {item["path"]: item["reason"] for item in dataset["skipped"]}
        assert "blue/large.jpg" in skipped and "1000000" in skipped["blue/large.jpg"], skipped
        assert dataset["counts"] == {"blue": 3 + 4, "red": 3 + 1}
    finally:
        assert tight_api.delete(f"/datasets/{dataset['id']}").status_code == 204


# --- /predict -----------------------------------------------------------------------------------


PREDICT_BAD = [
    ("corrupt.jpg", CORRUPT_JPEG, 400),
    ("truncated.png", truncated_png(), 400),
    ("empty.jpg", b"", 400),
    ("shopping.jpg", TEXT_AS_JPG, 415),
    ("bomb.png", forged_png(30000, 30000), 400),
    ("dot.png", png(size=1), 400),
    ("archive.png", zip_of(good_files()), 415),
]


@pytest.mark.parametrize("name,data,expected", PREDICT_BAD, ids=[case[0] for case in PREDICT_BAD])
def test_predict_refuses_a_bad_image_naming_it(client, baseline, untouched, name, data, expected):
    files = [("file", ("fine.png", png(), "image/png")), ("file", (name, data, "image/jpeg"))]
    response = client.post("/predict", data={"model_id": baseline.model["id"]}, files=files)
    assert response.status_code == expected, response.text
    assert name in response.json()["detail"]


UNUSUAL_BUT_FINE = [
    ("animated.gif", animated_gif()),
    ("deep.png", sixteen_bit_png()),
    ("cmyk.jpg", cmyk_jpeg()),
    ("rotated.jpg", exif_rotated_jpeg()),
    ("tiny.png", png(size=2)),
    ("large.jpg", large_jpeg()),
]


def test_predict_accepts_unusual_but_valid_images(client, baseline, untouched):
    files = [("file", (name, data, "application/octet-stream")) for name, data in UNUSUAL_BUT_FINE]
    response = client.post("/predict", data={"model_id": baseline.model["id"]}, files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [name for name, _ in UNUSUAL_BUT_FINE]
    assert all(len(r["predictions"]) == 2 for r in results)


def test_predict_refuses_an_image_over_max_image_pixels(tight_api, baseline, untouched):
    response = tight_api.post(
        "/predict", data={"model_id": baseline.model["id"]}, files=[("file", ("large.jpg", large_jpeg(), "image/jpeg"))]
    )
    assert response.status_code == 400, response.text
    assert "large.jpg" in response.json()["detail"] and "1000000" in response.json()["detail"]


def test_predict_refuses_too_many_files_and_bad_fields(client, tight_api, baseline, untouched):
    model = {"model_id": baseline.model["id"]}
    many = [("file", (f"{n}.png", png(seed=n), "image/png")) for n in range(33)]
    response = client.post("/predict", data=model, files=many)
    assert response.status_code == 413 and "33 files" in response.json()["detail"], response.text
    response = tight_api.post("/predict", data=model, files=many[:5])
    assert response.status_code == 413 and "limit is 4" in response.json()["detail"], response.text
    response = client.post("/predict", data=model)
    assert response.status_code == 422 and "file" in response.text
    for top_k in ("0", "-3", "1001", "many"):
        response = client.post("/predict", data={**model, "top_k": top_k}, files=many[:1])
        assert response.status_code == 422, response.text
        assert any(error["loc"][-1] == "top_k" for error in response.json()["detail"]), response.text
    response = client.post("/predict", data={"model_id": "no-such-model"}, files=many[:1])
    assert response.status_code == 404 and "no-such-model" in response.json()["detail"]


# --- request size -------------------------------------------------------------------------------


def raw_exchange(port: int, head: str, chunks, *, timeout: float = 120.0) -> tuple[bytes, int]:
    """Send `head` then the byte chunks, stopping early as soon as the server answers. Returns the
    start of the answer and how many body bytes had been sent when it came. `timeout` only guards
    against a hang (sending stops, and the answer is waited for, at most that long)."""
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        deadline = time.monotonic() + timeout
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if time.monotonic() > deadline:
                break
        sock.settimeout(timeout)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, sent


def multipart_head(path: str, port: int, *, length: int | None) -> tuple[str, bytes]:
    boundary = "reliability-boundary"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
        f"Content-Type: application/zip\r\n\r\n"
    ).encode()
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n"
    )
    return head, preamble


@pytest.mark.parametrize("path", ["/datasets", "/predict"])
def test_a_declared_length_over_the_limit_gets_413_before_the_body_is_read(live_service, untouched, path):
    """MAX_UPLOAD_MB is 1024 here: a 2 GiB Content-Length is refused after 1 KB has been sent (so any
    answer at all came before the body was read)."""
    port = int(live_service.url.rsplit(":", 1)[1])
    head, preamble = multipart_head(path, port, length=2 * 1024**3)
    answer, sent = raw_exchange(port, head, [preamble, b"x" * 1024])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


def test_a_chunked_body_over_the_limit_gets_413_while_it_streams(tight_api, live_service, untouched):
    """No Content-Length: the API counts the bytes and answers 413 soon after 1 MB, not at the end."""
    head, preamble = multipart_head("/datasets", tight_api.port, length=None)
    chunk = b"z" * 65536
    framed = [f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n"]
    framed += [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * (512 * 16)  # up to 512 MB
    uploads = Path(live_service.env["CACHE_DIR"]) / "uploads"
    answer, sent = raw_exchange(tight_api.port, head, framed)
    print(f"chunked upload: 413 after {sent} bytes sent")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    # a byte count, not a time: refused while streaming, long before the 512 MB end (64x the 1 MB limit)
    assert sent < 64 * 1024 * 1024, f"the server let {sent} bytes in before answering"
    assert not list(uploads.glob(".upload-*"))


def test_a_real_body_over_the_limit_is_refused(tight_api, live_service, untouched):
    data = zip_of(
        {**good_files(), "red/noise.png": np.random.default_rng(0).bytes(2 * 1024 * 1024)},
        compression=zipfile.ZIP_STORED,
    )
    response = upload_archive(tight_api, "big.zip", data)
    assert response.status_code == 413, response.text
    assert "1 MB" in response.json()["detail"]


# --- job specs, ids, conflicts ------------------------------------------------------------------


def error_locations(response: httpx.Response) -> list[str]:
    return [".".join(str(part) for part in error["loc"]) for error in response.json()["detail"]]


SPEC_ERRORS = [
    ({"bogus": 1}, "body.bogus"),
    ({"warmup": {"epochs": 1, "bogus": 2}}, "body.warmup.bogus"),
    ({"head": {"units": 8, "colour": "red"}}, "body.head.colour"),
    ({"batch_size": "many"}, "body.batch_size"),
    ({"image_size": [224]}, "body.image_size"),
    ({"augmentation": {"horizontal_flip": "sometimes"}}, "body.augmentation.horizontal_flip"),
    ({"warmup": {"epochs": "one"}}, "body.warmup.epochs"),
    ({"batch_size": 0}, "body.batch_size"),
    ({"batch_size": 100000}, "body.batch_size"),
    ({"validation_split": 1.5}, "body.validation_split"),
    ({"validation_split": 0}, "body.validation_split"),
    ({"warmup": {"epochs": -1}}, "body.warmup.epochs"),
    ({"finetune": {"epochs": 1, "learning_rate": 0}}, "body.finetune.learning_rate"),
    ({"head": {"dropout": 1.0}}, "body.head.dropout"),
    ({"image_size": 8}, "body.image_size"),
    ({"image_size": 100000}, "body.image_size"),
    ({"backbone": "alexnet"}, "body.backbone"),
    ({"weights": "random"}, "body.weights"),
    ({"warmup": {"optimizer": "adagrad"}}, "body.warmup.optimizer"),
    ({"backbone": "vgg16", "alpha": 0.5}, "body.alpha"),
    ({"backbone": "mobilenet", "weights": "imagenet", "alpha": 0.3}, "body.alpha"),
    ({"finetune": {"epochs": 1, "unfreeze_from": "no_such_layer"}}, "body.finetune"),
    ({"dataset_id": "../../etc"}, "body.dataset_id"),
    ({"dataset_id": ""}, "body.dataset_id"),
]


@pytest.mark.parametrize("patch,location", SPEC_ERRORS, ids=[loc for _, loc in SPEC_ERRORS])
def test_a_bad_job_spec_gets_422_naming_the_field(client, baseline, untouched, patch, location):
    spec = {**tiny_spec(baseline.dataset["id"]), **patch}
    jobs_before = client.get("/jobs").json()["count"]
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    assert any(loc.startswith(location) for loc in error_locations(response)), (location, response.text)
    assert client.get("/jobs").json()["count"] == jobs_before


def test_a_malformed_job_request_gets_422(client, untouched):
    assert client.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    assert client.post("/jobs", json=[1, 2, 3]).status_code == 422
    response = client.post("/jobs", json={})
    assert response.status_code == 422 and "body.dataset_id" in error_locations(response)


UNKNOWN = [
    ("GET", "/datasets/0123456789abcdef"),
    ("DELETE", "/datasets/0123456789abcdef"),
    ("GET", "/datasets/0123456789abcdef/samples"),
    ("GET", "/datasets/0123456789abcdef/files/red/x.png"),
    ("GET", "/jobs/0123456789abcdef"),
    ("POST", "/jobs/0123456789abcdef/cancel"),
    ("GET", "/jobs/0123456789abcdef/events"),
    ("GET", "/models/0123456789abcdef"),
    ("GET", "/models/0123456789abcdef/download"),
    ("DELETE", "/models/0123456789abcdef"),
    ("GET", "/backbones/alexnet/layers"),
    ("GET", "/jobs/..%2F..%2Fetc"),
    ("GET", "/models/.tmp-x"),
]


@pytest.mark.parametrize("method,path", UNKNOWN, ids=[f"{m} {p}" for m, p in UNKNOWN])
def test_unknown_ids_get_404(client, untouched, method, path):
    response = client.request(method, path)
    assert response.status_code == 404, response.text


def test_unknown_ids_in_bodies_get_404(client, baseline, untouched):
    response = client.post("/jobs", json=tiny_spec("0123456789abcdef"))
    assert response.status_code == 404 and "0123456789abcdef" in response.json()["detail"]
    response = client.post(
        "/predict", data={"model_id": "0123456789abcdef"}, files=[("file", ("a.png", png(), "image/png"))]
    )
    assert response.status_code == 404


def test_a_file_outside_the_dataset_cannot_be_read(client, baseline, untouched):
    for path in ("..%2F..%2Fdataset.json", "red%2F..%2F..%2Fdataset.json", "red/.hidden", "%2Fetc%2Fpasswd"):
        response = client.get(f"/datasets/{baseline.dataset['id']}/files/{path}")
        assert response.status_code == 404, (path, response.status_code, response.text[:200])


def test_a_job_on_a_dataset_being_deleted_gets_409(client, live_service, baseline, tmp_path):
    """The store marks a dataset `.deleting` before removing it; a job posted in between is refused."""
    archive = make_dataset_zip(tmp_path / "doomed.zip", per_class=3)
    response = upload_archive(client, "doomed.zip", archive.read_bytes())
    assert response.status_code == 201, response.text
    doomed = response.json()
    marker = live_service.data_dir / doomed["id"] / ".deleting"
    marker.touch()
    try:
        jobs_before = client.get("/jobs").json()["count"]
        response = client.post("/jobs", json=tiny_spec(doomed["id"]))
        assert response.status_code == 409, response.text
        assert "being deleted" in response.json()["detail"]
        assert client.get("/jobs").json()["count"] == jobs_before
        assert client.get(f"/datasets/{doomed['id']}").status_code == 409
        assert doomed["id"] not in [d["id"] for d in client.get("/datasets").json()["data"]]
    finally:
        marker.unlink()
    assert client.get(f"/datasets/{doomed['id']}").json() == doomed
    assert client.delete(f"/datasets/{doomed['id']}").status_code == 204
    assert not (live_service.data_dir / doomed["id"]).exists()
    assert_baseline_intact(client, baseline)
