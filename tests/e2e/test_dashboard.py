"""The web dashboard, end to end, in headless Chromium against the real API, worker and Redis.

Flow, against an API with API_KEYS set: the page asks for the key on the first 401 (once), keeps it, and
every later request carries it, the job's event stream included. Upload a dataset archive through the file
input, see its classes and the counts chart, start a small job from the form (VGG16 on random weights, a
warmup that learns the colours), watch it reach 100% without a page reload, see both training curves and
the confusion matrix, then predict a red and a blue image on the model page: each gets its own label; and build an export.
Every page is also checked at phone width and in the dark colour scheme. A short second test opens the
dashboard on the open API (no keys): no dialog, no key sent. Screenshots go to artifacts/screenshots/
(git-ignored).

The browser is `chromium` on PATH: the name is the Makefile's CHROMIUM, which `make install` installs when
`command -v` does not find it; a missing browser is an error, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import make_dataset_zip, make_image_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def chromium_name() -> str:
    """The Makefile's CHROMIUM (exported to `make test`; read from the Makefile when pytest runs alone)."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    found = re.search(r"^CHROMIUM\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "the Makefile names no CHROMIUM"
    return found.group(1)


API_KEY = "e2e-dashboard-key-5f1c0a7d"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
JOB_TIMEOUT_MS = 600_000  # a hang guard: a 10+1 epoch VGG16 on 32 px images, on CPU, with the worker's TF start-up
WARMUP_EPOCHS = 10
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    name = chromium_name()
    executable = shutil.which(name)
    assert executable, f"no {name!r} on PATH: the e2e test drives it (`make install` installs Debian's {name})"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def keyed_url(live_service, tmp_path_factory):
    """A second API on the live service's Redis, worker and stores, with API_KEYS set."""
    with live_service.extra_api(tmp_path_factory.mktemp("keyed-api"), API_KEYS=API_KEY) as client:
        yield f"http://127.0.0.1:{client.port}"


# Counts the times the page opens the API-key dialog.
COUNT_KEY_DIALOGS = """
    window.__keyDialogs = 0;
    const showModal = HTMLDialogElement.prototype.showModal;
    HTMLDialogElement.prototype.showModal = function () {
        if (this.id === "api-key-dialog") window.__keyDialogs += 1;
        return showModal.call(this);
    };
"""


class ApiTraffic:
    """Every request the page makes with fetch or XMLHttpRequest (the API calls), and its answer."""

    def __init__(self, page):
        self.requests: list = []
        self.statuses: dict[int, int] = {}
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request) -> None:
        if request.resource_type in ("fetch", "xhr"):
            self.requests.append(request)

    def _response(self, response) -> None:
        if response.request.resource_type in ("fetch", "xhr"):
            self.statuses[id(response.request)] = response.status

    def rows(self) -> list[tuple[str, str, str | None, int | None]]:
        """(method, url, Authorization header, status) per request, in the order sent."""
        return [
            (r.method, r.url, r.all_headers().get("authorization"), self.statuses.get(id(r))) for r in self.requests
        ]


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def wait_ready(page, route: str) -> None:
    """The router marks <main data-ready="/path"> once a page has drawn."""
    page.wait_for_selector(f'main[data-ready="{route}"]')


def go(page, hash_route: str, ready: str) -> None:
    """Navigate inside the single page (a hash change, never a document load)."""
    page.evaluate("(h) => { location.hash = h; }", hash_route)
    wait_ready(page, ready)


def enter_key_if_asked(page, api_key: str | None) -> None:
    if not api_key:
        return
    dialog = page.get_by_test_id("api-key-dialog")
    dialog.wait_for(state="visible")
    page.fill("#api-key-input", api_key)
    page.click("#api-key-save")


def assert_fits_phone(page, name: str) -> None:
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"{name}: the page is {overflow}px wider than a phone screen"


NESTED = object()  # stands for a nested object of the spec: its checkbox (augmentation, finetune) is on


def spec_leaves(value, path: str = ""):
    """(dotted path, value) for each leaf of a job spec dict, and (path, NESTED) for each nested object."""
    if isinstance(value, dict):
        if path:
            yield path, NESTED
        for key, inner in value.items():
            yield from spec_leaves(inner, f"{path}.{key}" if path else key)
    else:
        yield path, value


def assert_form_shows_spec_defaults(page) -> None:
    """Each field of the job form starts at the API's own default (the form reads them from /openapi.json)."""
    from app.schemas import JobCreate

    defaults = JobCreate(dataset_id="x").model_dump(mode="json", exclude={"dataset_id"})
    shown = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#job-form [data-path]')]
                    .map((el) => [el.dataset.path, el.type === 'checkbox' ? el.checked : el.value]))"""
    )
    compared, wrong = [], {}
    for path, default in spec_leaves(defaults):
        if default is None or path not in shown:  # null (alpha, unfreeze_from): the backbone's own choice
            continue
        value = shown[path]
        if default is NESTED or isinstance(default, bool):
            ok = value is (True if default is NESTED else default)
        elif isinstance(default, (int, float)):
            ok = float(value) == default
        else:
            ok = value == default
        compared.append(path)
        if not ok:
            wrong[path] = (value, default)
    assert not wrong, f"form value != API default: {wrong}"
    assert len(compared) >= 20, compared  # every field of the spec but dataset_id, alpha and unfreeze_from
    assert shown.get("alpha") == "", "alpha starts unset"


def test_dashboard_end_to_end_with_an_api_key(keyed_url, browser, tmp_path):
    from playwright.sync_api import expect

    base = keyed_url.rstrip("/")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    context.add_init_script(COUNT_KEY_DIALOGS)
    page = context.new_page()
    traffic = ApiTraffic(page)
    page.set_default_timeout(120_000)  # a hang guard for every wait below
    page_errors: list[str] = []
    console_errors: list[str] = []
    loads: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    # the browser logs each refused request; a 401 answered by the key dialog is expected when keys are on
    page.on(
        "console",
        lambda msg: (
            console_errors.append(msg.text) if msg.type == "error" and "status of 401" not in msg.text else None
        ),
    )
    page.on("load", lambda p: loads.append(p.url))

    try:
        # ------------------------------------------------------------ datasets: upload an archive
        page.goto(f"{base}/")
        enter_key_if_asked(page, API_KEY)
        expect(page).to_have_url(re.compile(r"#/datasets$"))
        wait_ready(page, "/datasets")
        expect(page.get_by_test_id("datasets-title")).to_be_visible()

        archive = make_dataset_zip(tmp_path / "colours.zip", classes=("red", "blue"), per_class=8, size=40)
        page.set_input_files("#dataset-file", str(archive))
        expect(page.get_by_test_id("dataset-chosen")).to_contain_text("colours.zip")
        page.fill("#dataset-name", "colours")
        page.click("#dataset-upload")
        expect(page).to_have_url(re.compile(r"#/datasets/[^/?]+$"), timeout=120_000)
        dataset_id = page.url.rsplit("/", 1)[1]
        wait_ready(page, f"/datasets/{dataset_id}")

        # ------------------------------------------------------------ the dataset page
        classes = page.get_by_test_id("dataset-classes")
        expect(classes).to_contain_text("red")
        expect(classes).to_contain_text("blue")
        expect(page.get_by_test_id("dataset-num-images")).to_have_text("16")
        chart = page.locator('[data-testid="counts-chart"]')
        expect(chart).to_be_visible()
        bars = page.evaluate(
            """() => {
                const chart = window.Chart.getChart(document.querySelector('[data-testid="counts-chart"]'));
                return {labels: chart.data.labels, values: chart.data.datasets[0].data};
            }"""
        )
        assert sorted(bars["labels"]) == ["blue", "red"] and bars["values"] == [8, 8], bars
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="thumb-img"]')]
                      .filter((img) => img.complete && img.naturalWidth > 0).length >= 8"""
        )
        expect(page.get_by_test_id("thumb-error")).to_have_count(0)
        expect(page.get_by_test_id("skipped-none")).to_be_visible()
        shot(page, "02-dataset")

        go(page, "#/datasets", "/datasets")
        expect(page.locator(f'[data-testid="dataset-row"][data-id="{dataset_id}"]')).to_contain_text("colours")
        shot(page, "01-datasets")

        # ------------------------------------------------------------ new job: the form
        go(page, f"#/datasets/{dataset_id}", f"/datasets/{dataset_id}")
        page.get_by_test_id("train-link").click()
        wait_ready(page, "/jobs/new")
        form = page.get_by_test_id("job-form")
        expect(form).to_have_attribute("data-ready", "true")
        expect(page.locator("#job-dataset-id")).to_have_value(dataset_id)
        # the seed's defaults are filled in
        expect(page.locator("#job-backbone")).to_have_value("vgg16")
        expect(page.locator("#job-image-size")).to_have_value("224")
        expect(page.locator("#job-warmup-epochs")).to_have_value("25")
        expect(page.locator("#job-finetune-epochs")).to_have_value("100")
        expect(page.locator("#job-alpha")).to_be_hidden()
        assert_form_shows_spec_defaults(page)

        page.select_option("#job-backbone", "mobilenet")
        expect(page.locator("#job-alpha")).to_be_visible()
        page.wait_for_selector('#job-finetune-unfreeze-from[data-loaded="mobilenet:"]')
        page.select_option("#job-alpha", "0.25")
        page.wait_for_selector('#job-finetune-unfreeze-from[data-loaded="mobilenet:0.25"]')
        assert page.locator("#job-finetune-unfreeze-from option").count() > 10
        # VGG16 on random weights: its features tell the colours apart (MobileNet's do not), see LEARNABLE_SPEC
        page.select_option("#job-backbone", "vgg16")
        expect(page.locator("#job-alpha")).to_be_hidden()
        page.wait_for_selector('#job-finetune-unfreeze-from[data-loaded="vgg16:"]')
        page.select_option("#job-weights", "none")
        page.fill("#job-batch-size", "4")
        page.fill("#job-head-units", "8")
        page.fill("#job-head-dropout", "0")
        page.uncheck("#job-augmentation")
        expect(page.locator("#job-augmentation-rotation")).to_be_disabled()
        page.fill("#job-warmup-epochs", str(WARMUP_EPOCHS))
        page.select_option("#job-warmup-optimizer", "adam")
        page.fill("#job-warmup-learning-rate", "0.01")
        page.fill("#job-finetune-epochs", "1")

        # client-side validation: refused in the page, shown next to the field, nothing sent
        page.fill("#job-image-size", "8")
        page.fill("#job-validation-split", "1.5")
        page.click("#job-submit")
        expect(page.get_by_test_id("error-image_size")).to_contain_text("at least")
        expect(page.get_by_test_id("error-validation_split")).to_be_visible()
        expect(page.get_by_test_id("form-errors")).to_be_visible()
        expect(page).to_have_url(re.compile(r"#/jobs/new"))
        page.fill("#job-image-size", "32")
        page.fill("#job-validation-split", "0.25")
        shot(page, "03-new-job")

        page.click("#job-submit")
        expect(page).to_have_url(re.compile(r"#/jobs/(?!new)[^/?]+$"), timeout=120_000)
        job_id = page.url.rsplit("/", 1)[1]
        wait_ready(page, f"/jobs/{job_id}")

        # ------------------------------------------------------------ the job, live, without a reload
        loads_before = len(loads)
        page.evaluate("() => { window.__e2eMarker = 'same-document'; }")
        page.evaluate(
            """() => {
                window.__seen = {status: [], progress: []};
                const note = () => {
                    const badge = document.querySelector('[data-testid="job-status"] .badge');
                    const text = document.querySelector('[data-testid="job-progress-text"]');
                    if (badge && !window.__seen.status.includes(badge.dataset.status)) window.__seen.status.push(badge.dataset.status);
                    if (text && !window.__seen.progress.includes(text.textContent)) window.__seen.progress.push(text.textContent);
                };
                note();
                new MutationObserver(note).observe(document.getElementById('main'), {subtree: true, childList: true, characterData: true, attributes: true});
            }"""
        )
        page.wait_for_function(
            """(finals) => finals.includes(
                document.querySelector('[data-testid="job-status"] .badge')?.dataset.status)""",
            arg=list(FINAL),
            timeout=JOB_TIMEOUT_MS,
        )
        status = page.locator('[data-testid="job-status"] .badge').get_attribute("data-status")
        if status != "succeeded":
            shot(page, "04-job-not-succeeded")
            detail = page.get_by_test_id("job-error").all_inner_texts() if status == "failed" else []
            pytest.fail(f"job {job_id} ended {status}: {detail}")
        expect(page.get_by_test_id("job-progress-text")).to_have_text("100%")
        assert page.get_by_test_id("job-progress").get_attribute("data-value") == "1"
        seen = page.evaluate("() => window.__seen")
        assert "succeeded" in seen["status"] and len(seen["progress"]) >= 2, seen
        assert page.evaluate("() => window.__e2eMarker") == "same-document", "the page was reloaded"
        assert len(loads) == loads_before, f"document loads while the job ran: {loads[loads_before:]}"

        # both curves, with one point per epoch and the marker where warmup turns into finetune
        for testid in ("loss-chart", "accuracy-chart"):
            canvas = page.get_by_test_id(testid)
            expect(canvas).to_have_attribute("data-points", str(WARMUP_EPOCHS + 1))
            expect(canvas).to_have_attribute("data-phase-switch", str(WARMUP_EPOCHS))
            counts = page.evaluate(
                """(id) => window.Chart.getChart(document.querySelector(`[data-testid="${id}"]`))
                             .data.datasets.map((d) => d.data.filter((v) => v !== null).length)""",
                testid,
            )
            assert counts[0] == WARMUP_EPOCHS + 1, (testid, counts)
        shot(page, "04-job")

        # ------------------------------------------------------------ the jobs list
        page.get_by_test_id("nav-jobs").click()
        wait_ready(page, "/jobs")
        row = page.locator(f'[data-testid="job-row"][data-id="{job_id}"]')
        expect(row).to_have_attribute("data-status", "succeeded")
        expect(row.get_by_test_id("job-row-progress-text")).to_have_text("100%")
        shot(page, "05-jobs")

        # ------------------------------------------------------------ the model
        row.get_by_test_id("job-link").click()
        wait_ready(page, f"/jobs/{job_id}")
        page.get_by_test_id("job-model-link").click()
        expect(page).to_have_url(re.compile(r"#/models/[^/?]+$"))
        model_id = page.url.rsplit("/", 1)[1]
        wait_ready(page, f"/models/{model_id}")
        matrix = page.get_by_test_id("confusion-matrix")
        expect(matrix).to_be_visible()
        expect(matrix.get_by_test_id("matrix-cell")).to_have_count(4)
        cells = [int(t) for t in matrix.get_by_test_id("matrix-cell").all_inner_texts()]
        assert sum(cells) > 0, cells
        expect(page.get_by_test_id("report")).to_contain_text("macro avg")
        expect(page.get_by_test_id("warmup-report")).to_be_visible()
        expect(page.get_by_test_id("model-loss-chart")).to_have_attribute("data-points", str(WARMUP_EPOCHS + 1))

        # try it: a red and a blue image (not from the training set), each gets its own label
        page.set_input_files(
            "#predict-files",
            files=[
                {"name": "a-red.png", "mimeType": "image/png", "buffer": make_image_bytes("red", seed=99)},
                {"name": "a-blue.png", "mimeType": "image/png", "buffer": make_image_bytes("blue", seed=99)},
            ],
        )
        results = page.get_by_test_id("prediction-result")
        expect(results).to_have_count(2, timeout=120_000)
        labels = page.get_by_test_id("prediction-top-label").all_inner_texts()
        assert labels == ["red", "blue"], labels
        expect(results.first.get_by_test_id("prediction-bar")).to_have_count(2)
        shot(page, "06-model")

        # exports (issue 13): a row per format; build the LiteRT one and see its parity and download
        exports = page.get_by_test_id("model-exports")
        expect(exports.get_by_test_id("export-row")).to_have_count(4)
        exports.get_by_test_id("export-build-litert").click()
        expect(exports.get_by_test_id("export-agreement-litert")).to_contain_text("%", timeout=JOB_TIMEOUT_MS)
        expect(exports.get_by_test_id("export-download-litert")).to_be_visible()
        expect(exports.get_by_test_id("export-build-litert")).to_have_text("Rebuild")
        shot(page, "06b-model-exports")

        # ------------------------------------------------------------ the models list, reached with the keyboard
        page.get_by_test_id("nav-models").focus()
        page.keyboard.press("Enter")
        wait_ready(page, "/models")
        expect(page.locator(f'[data-testid="model-row"][data-id="{model_id}"]')).to_be_visible()
        shot(page, "07-models")

        # ------------------------------------------------------------ phone width, then the dark scheme
        page.set_viewport_size({"width": 390, "height": 844})
        phone_pages = [
            ("datasets", "#/datasets", "/datasets"),
            ("dataset", f"#/datasets/{dataset_id}", f"/datasets/{dataset_id}"),
            ("new-job", f"#/jobs/new?dataset={dataset_id}", "/jobs/new"),
            ("job", f"#/jobs/{job_id}", f"/jobs/{job_id}"),
            ("jobs", "#/jobs", "/jobs"),
            ("model", f"#/models/{model_id}", f"/models/{model_id}"),
        ]
        for name, route, ready in phone_pages:
            go(page, route, ready)
            assert_fits_phone(page, name)
            shot(page, f"phone-{name}")
        page.emulate_media(color_scheme="dark")
        page.set_viewport_size({"width": 1280, "height": 900})
        go(page, f"#/jobs/{job_id}", f"/jobs/{job_id}")
        go(page, f"#/models/{model_id}", f"/models/{model_id}")
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert background != "rgb(244, 246, 249)", "the dark scheme did not apply"
        shot(page, "dark-model")

        assert len(loads) == 1, f"expected one document load for the whole session, got {loads}"
        assert not page_errors, page_errors
        assert not console_errors, console_errors

        # ------------------------------------------------------------ the key: asked once, kept, always sent
        assert page.evaluate("() => window.__keyDialogs") == 1
        rows = traffic.rows()
        first_keyed = next(i for i, row in enumerate(rows) if row[2] is not None)
        before, after = rows[:first_keyed], rows[first_keyed:]
        assert before and all(auth is None and status == 401 for _, _, auth, status in before), before
        assert len(after) > 20, after
        refused = [row for row in after if row[2] != f"Bearer {API_KEY}" or row[3] == 401]
        assert not refused, refused
        streams = [row for row in after if row[1].endswith(f"/jobs/{job_id}/events")]
        assert streams and all(status == 200 for *_, status in streams), streams
        assert [row for row in after if row[0] == "POST" and row[1].endswith("/datasets")], "no upload seen"
        assert [row for row in after if row[0] == "POST" and row[1].endswith("/predict")], "no prediction seen"
    finally:
        context.close()


def test_the_dashboard_on_an_open_api_never_asks_for_a_key(live_service, browser):
    """The shared live service runs without API_KEYS: no dialog, no key sent, every call answered."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(COUNT_KEY_DIALOGS)
    page = context.new_page()
    traffic = ApiTraffic(page)
    page.set_default_timeout(120_000)  # a hang guard for every wait below
    try:
        page.goto(f"{live_service.url.rstrip('/')}/")
        wait_ready(page, "/datasets")
        go(page, "#/jobs", "/jobs")
        go(page, "#/models", "/models")
        assert page.evaluate("() => window.__keyDialogs") == 0
        rows = traffic.rows()
        assert len(rows) >= 3, rows
        assert all(auth is None and status == 200 for _, _, auth, status in rows), rows
    finally:
        context.close()


def test_a_confusion_matrix_cell_opens_its_images_and_their_heatmaps(live_service, browser):
    """Evaluation you can act on: a model's page shows the PR curve with its threshold readout; clicking a
    confusion-matrix cell lists exactly that cell's held-out images; "Where it looked" swaps in the heatmap."""
    import httpx
    from playwright.sync_api import expect

    from tests.helpers import make_dataset_zip
    from tests.integration.reliability_support import submit_job, tiny_spec, wait_for_job

    archive = make_dataset_zip(SCREENSHOTS.parent / "e2e-eval.zip", per_class=12)
    with httpx.Client(base_url=live_service.url, timeout=120) as client:
        upload = client.post("/datasets", files={"file": ("eval.zip", archive.read_bytes(), "application/zip")})
        assert upload.status_code == 201, upload.text
        job = wait_for_job(client, submit_job(client, tiny_spec(upload.json()["id"]))["id"])
        assert job["status"] == "succeeded", job
        model = client.get(f"/models/{job['model_id']}").json()
    matrix, classes = model["metrics"]["confusion_matrix"], model["classes"]
    i, j = next((i, j) for i, row in enumerate(matrix) for j, v in enumerate(row) if v)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)  # a hang guard for every wait below
    try:
        page.goto(f"{live_service.url.rstrip('/')}/#/models/{model['id']}")
        wait_ready(page, f"/models/{model['id']}")
        expect(page.get_by_test_id("pr-readout")).to_contain_text("abstains on", timeout=120_000)
        page.get_by_test_id("pr-threshold").fill("0.99")
        expect(page.get_by_test_id("pr-readout")).to_contain_text("At 0.99")
        cell = page.locator(
            f'[data-testid="matrix-cell"][data-true="{classes[i]}"][data-predicted="{classes[j]}"]'
        ).first
        cell.get_by_test_id("matrix-cell-button").click()
        samples = page.get_by_test_id("cell-images").get_by_test_id("sample")
        expect(samples).to_have_count(matrix[i][j], timeout=120_000)
        first = samples.first
        image = first.get_by_test_id("sample-image")
        expect(image).to_have_attribute("src", re.compile(r"^blob:"))
        before = image.get_attribute("src")
        first.get_by_test_id("heatmap-toggle").click()
        expect(image).to_have_attribute("data-heatmap", "on", timeout=120_000)  # the first explain traces Grad-CAM
        assert image.get_attribute("src") != before
        shot(page, "09-cell-images-heatmap")
    finally:
        context.close()
