"""The jobs pages in a real browser against the embedded service: submit a job from the form and watch it
train live on its page, see the API's refusal of a bad body, cancel a running job from its page."""

from __future__ import annotations

import json
import re

from conftest import fill_form
from playwright.sync_api import expect

# Tiny synthetic images and an eighth of the paper's width: a few tenths of a second per epoch on a CPU.
TINY_GAUSSIAN = {"name": "gaussian", "image_size": 32, "n_train": 64, "n_val": 32}
TRAINING = 120_000  # ms: the worker may still be busy with another test's job
# Enough epochs of tiny images (a tenth of a second each on a fast CPU) for the page to open before the last.
EPOCHS = 25

# Every progress value the job page's bar shows, from now on: proof that it moved while we watched.
WATCH_PROGRESS = """() => {
  window.progressSeen = [];
  const box = document.querySelector("#job-progress");
  const note = () => {
    const bar = box.querySelector("[role=progressbar]");
    if (bar) window.progressSeen.push(Number(bar.getAttribute("aria-valuenow")));
  };
  note();
  new MutationObserver(note).observe(box, { childList: true, subtree: true });
}"""


def job_count(service) -> int:
    with service.client() as client:
        return client.get("/v1/jobs", params={"limit": 1}).json()["total"]


def test_submit_a_train_job_and_watch_it_train(page, screenshot):
    page.goto("/#/submit")
    fill_form(page, {"#submit-kind": "train", "#f-model": "vgg", "#f-dataset-name": "gaussian",
                     "#f-dataset-image_size": "32", "#f-dataset-n_train": "64", "#f-dataset-n_val": "32",
                     "#f-training-epochs": str(EPOCHS), "#f-training-width": "0.125"})
    expect(page.locator("#f-dataset-classes")).to_be_hidden()  # the Gaussian images have no digits to pick

    body = json.loads(page.input_value("#submit-json"))  # what the form will send
    assert body["kind"] == "train" and body["model"] == "vgg"
    assert TINY_GAUSSIAN.items() <= body["dataset"].items()
    assert body["training"] == {"epochs": EPOCHS, "width": 0.125}
    screenshot(page, "submit")

    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#job-progress")
    page.evaluate(WATCH_PROGRESS)

    bar = page.locator("#job-progress [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=TRAINING)
    expect(page.locator("h1 .status")).to_have_text("succeeded")
    expect(page.locator("#job-models a.model-link")).to_have_count(1)
    for chart, series in (("loss", "train loss"), ("accuracy", "validation accuracy")):
        line = page.locator(f'[data-chart="{chart}"] polyline[data-series="{series}"]')
        assert len(line.get_attribute("points").split()) == EPOCHS, f"{chart}: {series}"
    seen = page.evaluate("window.progressSeen")
    assert seen[0] < 100 and seen[-1] == 100 and seen == sorted(seen), seen  # it grew on this page, in order
    assert page.evaluate("window.sameDocument") is True, "the page was reloaded"
    screenshot(page, "job")

    page.click("header nav a[href='#/jobs']")
    row = page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')
    expect(row.locator(".status")).to_have_text("succeeded")
    expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    assert page.evaluate("window.sameDocument") is True
    screenshot(page, "list")


def test_an_invalid_submission_shows_the_api_message_and_creates_no_job(page, screenshot, embedded_service):
    before = job_count(embedded_service)
    page.goto("/#/submit")
    page.select_option("#f-model", "vgg")
    page.fill("#f-dataset-image_size", "31")
    page.click("#submit-button")
    expect(page.locator("#submit-error [role=alert]")).to_contain_text(
        "422 invalid_request: image_size must be a multiple of 32 for vgg")
    screenshot(page, "refused")

    # A body that is not JSON is stopped here, with the parser's words.
    page.fill("#submit-json", '{"kind": "train",')
    expect(page.locator("#submit-json-note")).to_contain_text("Not JSON yet")
    page.click("#submit-button")
    expect(page.locator("#submit-error [role=alert]")).to_contain_text("does not parse")

    assert page.url.endswith("#/submit")
    assert job_count(embedded_service) == before


def test_cancel_a_running_job_from_its_page(page, screenshot, embedded_service):
    body = {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 1000, "width": 0.125}}
    with embedded_service.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        try:
            # The list follows the running job by itself: its bar's label moves on, with an ETA.
            page.goto("/#/jobs")
            row = page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')
            expect(row.locator(".status")).to_have_text("running", timeout=TRAINING)
            label = row.locator(".progress .label")
            expect(label).to_contain_text("ETA", timeout=TRAINING)
            expect(label).not_to_have_text(label.text_content(), timeout=10_000)

            row.locator("a.job-id").click()
            expect(page.locator('[data-chart="accuracy"] polyline').first).to_be_visible(timeout=TRAINING)
            screenshot(page, "running")

            page.click("#job-cancel")
            expect(page.locator("h1 .status")).to_have_text("cancelled", timeout=60_000)
            expect(page.locator("#job-cancel")).to_have_count(0)
            expect(page.locator("#job-problem")).to_be_empty()
            screenshot(page, "cancelled")
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        finally:  # never leave a thousand epochs to the next test's worker
            client.post(f"/v1/jobs/{job_id}/cancel")


def test_an_experiment_from_the_form_shows_its_cells(page, screenshot):
    page.goto("/#/submit")
    page.select_option("#submit-kind", "experiment")
    for box in page.locator("#f-models input").all():
        box.set_checked(box.get_attribute("value") == "vgg")
    for box in page.locator("#f-conditions input").all():
        box.set_checked(box.get_attribute("value") in ("vanilla", "imbalance"))
    page.select_option("#f-dataset-name", "gaussian")
    page.fill("#f-dataset-n_train", "64")
    page.fill("#f-dataset-n_val", "32")
    page.fill("#f-training-epochs", "2")
    body = json.loads(page.input_value("#submit-json"))
    assert (body["kind"], body["models"], body["conditions"]) == ("experiment", ["vgg"], ["vanilla", "imbalance"])
    page.click("#submit-button")

    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    expect(page.locator("h1 .status")).to_have_text("succeeded", timeout=TRAINING)
    cells = page.locator("#job-cells tbody tr")
    expect(cells).to_have_count(2)
    expect(cells.locator(".status")).to_have_text(["succeeded", "succeeded"])
    expect(cells.locator("a[href^='#/models/']")).to_have_count(2)
    accuracy = page.locator('[data-chart="accuracy"] polyline')  # one line per cell
    expect(accuracy).to_have_count(2)
    assert [a.get_attribute("data-series") for a in accuracy.all()] == ["vgg · vanilla", "vgg · imbalance"]
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-report-link")).to_have_attribute("href", f"#/jobs/{job_id}/report")
    screenshot(page, "job")


def test_the_form_and_the_json_body_edit_each_other(page):
    page.goto("/#/submit?kind=experiment")
    body = json.loads(page.input_value("#submit-json"))  # the kind's first preset among the API's examples
    assert body["kind"] == "experiment"
    for model in body["models"]:
        expect(page.locator(f"#f-models-{model}")).to_be_checked()

    # The body -> the form, a change of kind included.
    body = {"kind": "train", "model": "unet-pretrained", "init_from": "abc", "training": {"epochs": 7}}
    page.fill("#submit-json", json.dumps(body))
    expect(page.locator("#submit-kind")).to_have_value("train")
    expect(page.locator("#f-training-epochs")).to_have_value("7")
    expect(page.locator("#f-init_from")).to_have_value("abc")

    # The form -> the body; a field the change makes meaningless leaves it.
    page.select_option("#f-model", "resnet")
    expect(page.locator("#f-init_from")).to_be_hidden()
    page.fill("#f-dataset-classes", "3, 8")
    page.fill("#f-training-epochs", "")  # empty: the preset's
    assert json.loads(page.input_value("#submit-json")) == {
        "kind": "train", "model": "resnet", "training": {}, "dataset": {"classes": [3, 8]}}
