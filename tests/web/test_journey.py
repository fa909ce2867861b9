"""The issue's path through the dashboard, as one person takes it: submit a tiny MNIST training job from
the form, under a name of its own, watch its progress bar reach 100% without reloading, open the model, drop PNG digits on it and
read the right labels. Then the same dashboard behind tokens: it asks for one, and shows the data once given."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Service, drop_files, fill_form, service_env, start_service, write_pngs
from playwright.sync_api import expect

TRAINING = 180_000  # ms: one epoch over MNIST 0 vs 1, and the worker may first finish another test's job


def test_submit_watch_open_the_model_and_drop_digits(page, screenshot, data_dir, tmp_path):
    page.goto("/#/submit")
    fill_form(page, {"#submit-kind": "train", "#f-model": "vgg", "#f-dataset-name": "mnist",
                     "#f-dataset-classes": "0, 1", "#f-dataset-image_size": "32", "#f-training-epochs": "1",
                     "#f-training-batch_size": "128", "#f-training-width": "0.125", "#f-name": "journey-vgg"})
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    page.click("#submit-button")

    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    expect(page.locator("#job-progress [role=progressbar]")).to_have_attribute("aria-valuenow", "100", timeout=TRAINING)
    expect(page.locator("h1 .status")).to_have_text("succeeded")
    assert page.evaluate("window.sameDocument") is True, "the page was reloaded"
    screenshot(page, "trained")

    # The name typed in the form is the model's registered name; its version is the next of that name.
    expect(page.locator("#job-models a.model-link")).to_have_text(re.compile(r"^journey-vgg/\d+$"))
    page.click("#job-models a.model-link")
    page.wait_for_url(re.compile(r"#/models/[0-9a-f]{32}$"))
    expect(page.locator("#dropzone")).to_be_visible()
    digits = write_pngs(data_dir, tmp_path, (0, 1), 6)
    drop_files(page, "#dropzone", [path for path, _ in digits])
    for path, label in digits:
        card = page.locator(f'.prediction[data-file="{path.name}"]')
        expect(card.locator(".predicted-name")).to_have_text(str(label))
    assert page.evaluate("window.sameDocument") is True
    screenshot(page, "predicted")


READ_TOKEN = "dashboard-reader-token-0123456789"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("dashboard-secured")
    env = service_env(home, data_dir, api_tokens=f"reader:read:{READ_TOKEN}")
    url, process = start_service(["serve", "--no-worker"], env, home, "serve-dashboard-with-tokens", probe="/healthz")
    yield Service(url, env)
    process.stop()


def test_behind_tokens_the_dashboard_asks_for_one_and_then_shows_the_data(browser, secured, screenshot):
    context = browser.new_context(base_url=secured.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto("/#/jobs")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()  # the API said 401: the page asks instead of showing an error alone
        expect(page.locator("#jobs-table")).to_have_count(0)
        screenshot(page, "asked")

        page.fill("#token-input", READ_TOKEN)
        page.click("#token-save")
        expect(dialog).to_be_hidden()
        expect(page.locator("#jobs-table")).to_be_visible()
        page.goto("/#/models")  # the token is kept for the tab: other pages read with it too
        expect(page.get_by_text("No models yet")).to_be_visible()  # the API's answer: an empty registry
        expect(dialog).to_be_hidden()
        screenshot(page, "signed-in")
    finally:
        context.close()
