"""The models pages, the compare page, the experiment report and the Bayes calculator in a real browser
against the session's embedded service: what the pages show is checked against what the API answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import MNIST_EXPERIMENT, TINY_ERROR_ANALYSIS, submit, wait_finished
from conftest import drop_files
from playwright.sync_api import expect

from ml.experiment import PAPER_ACCURACY, PAPER_SECONDS


def first_of_each(pngs: list[tuple[Path, int]], labels: tuple[int, ...]) -> list[tuple[Path, int]]:
    return [next(item for item in pngs if item[1] == label) for label in labels]


def open_page(page, hash_path: str, ready: str) -> None:
    page.goto(f"/#{hash_path}")
    page.wait_for_selector(ready)


def api_predictions(client, model_id: str, paths: list[Path]) -> list[dict]:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = client.post(f"/v1/models/{model_id}/predict", files=files)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def assert_predictions_shown(page, model_id: str, client, digits: list[tuple[Path, int]]) -> None:
    """One card per image, in order: the right label, the API's probabilities, and a reconstruction."""
    cards = page.locator(".prediction")
    expect(cards).to_have_count(len(digits))
    expected = api_predictions(client, model_id, [p for p, _ in digits])
    for i, ((path, label), prediction) in enumerate(zip(digits, expected)):
        card = cards.nth(i)
        assert prediction["label"] == label, (path, prediction)
        expect(card.locator(".predicted-name")).to_have_text(str(label))
        for key, probability in prediction["probabilities"].items():
            expect(card.locator(f'.prob[data-label="{key}"] .value')).to_have_text(f"{100 * probability:.1f}%")
        expect(card.locator(".prob.predicted")).to_have_attribute("data-label", str(label))
        # With Accept: image/png the API gives the reconstruction at the input's size: MNIST's 28x28.
        image = card.locator(".reconstruction img")
        expect(image).to_be_visible()
        assert image.evaluate("img => img.complete && [img.naturalWidth, img.naturalHeight]") == [28, 28]


def test_drop_digits_on_the_vae_svm_page(page, screenshot, client, analysis_models, mnist_pngs):
    model_id = analysis_models["vae-svm"]
    open_page(page, f"/models/{model_id}", "#dropzone")
    expect(page.locator("#model-summary")).to_contain_text("vae-svm")
    digits = first_of_each(mnist_pngs, (0, 1))
    drop_files(page, "#dropzone", [p for p, _ in digits])
    assert_predictions_shown(page, model_id, client, digits)
    # The figures the API has for a VAE, and none of a CNN's.
    expect(page.locator('[data-figure="reconstructions"] img')).to_be_visible(timeout=60_000)
    expect(page.locator('[data-figure="kernels"]')).to_have_count(0)
    screenshot(page, "model-page")


def test_choose_files_on_the_model_pages(page, screenshot, client, analysis_models, mnist_pngs):
    """The hidden input of the drop zone, for people who click: several images on the VAE + SVM, and
    the feature maps of an image on a CNN (the session's VGG, on Gaussian images)."""
    model_id = analysis_models["vae-svm"]
    open_page(page, f"/models/{model_id}", "#dropzone")
    digits = first_of_each(mnist_pngs, (1, 0)) + [mnist_pngs[-1]]
    page.set_input_files("#dropzone-input", [str(p) for p, _ in digits])
    assert_predictions_shown(page, model_id, client, digits)

    open_page(page, f"/models/{analysis_models['vgg']}", "#dropzone")
    page.set_input_files("#dropzone-input", str(digits[0][0]))
    card = page.locator(".prediction")
    expect(card).to_have_count(1)
    expect(card.locator(".reconstruction")).to_have_count(0)
    card.get_by_role("button", name="Show feature maps").click()
    expect(card.locator("img.figure")).to_be_visible()
    screenshot(page, "cnn-page")


def test_model_page_reports(page, screenshot, client, analysis_models):
    """The evaluation and Wasserstein reports, computed on request, show the API's numbers."""
    model_id = analysis_models["vae-svm"]
    open_page(page, f"/models/{model_id}", "#evaluation-report-run")
    expect(page.locator("#evaluation-condition")).to_have_value("noisy")  # trained clean: the paper's brackets
    page.click("#evaluation-report-run")
    page.click("#wasserstein-report-run")
    evaluation = client.get(f"/v1/models/{model_id}/reports/evaluation", params={"condition": "noisy"}).json()
    expect(page.locator(".evaluation-accuracy")).to_have_text(f"{100 * evaluation['accuracy']:.2f}%", timeout=60_000)
    expect(page.locator("#evaluation-report table.confusion tbody td")).to_have_text(
        [str(count) for row in evaluation["confusion_matrix"] for count in row])
    wasserstein = client.get(f"/v1/models/{model_id}/reports/wasserstein").json()
    for c in wasserstein["classes"]:
        row = page.locator(f'table.wasserstein tr[data-key="{c["label"]}"] td')
        expect(row).to_have_text([f"{c['wasserstein']:.4f} ± {c['std_error']:.4f}",
                                  f"{wasserstein['published']['paper'][str(c['label'])]:.4f}",
                                  f"{wasserstein['published']['authors_code'][str(c['label'])]:.4f}"], timeout=60_000)
    screenshot(page, "reports")


def listed(client) -> list[dict]:
    return client.get("/v1/models", params={"limit": 200}).json()["items"]  # newest first, as the page gets them


def row_ids(page) -> list[str]:
    return page.locator("#models-table tbody tr").evaluate_all("rows => rows.map((r) => r.dataset.id)")


def test_models_list_filters_and_sorts(page, screenshot, client, analysis_models):
    models = listed(client)
    assert len(models) >= 3
    open_page(page, "/models", "#models-table tbody tr")
    # By default newest first, as the API lists them.
    assert row_ids(page) == [m["id"] for m in models]

    page.click('th[data-sort="accuracy"]')  # numbers sort best first
    by_accuracy = sorted(models, key=lambda m: m["final_metrics"]["val_accuracy"], reverse=True)
    assert row_ids(page) == [m["id"] for m in by_accuracy]
    page.click('th[data-sort="accuracy"]')
    by_accuracy = sorted(models, key=lambda m: m["final_metrics"]["val_accuracy"])
    assert row_ids(page) == [m["id"] for m in by_accuracy]
    expect(page.locator('th[data-sort="accuracy"]')).to_have_attribute("aria-sort", "ascending")

    page.click('th[data-sort="architecture"]')
    assert row_ids(page) == [m["id"] for m in sorted(models, key=lambda m: m["model"])]
    # The controls do the same: newest first, then oldest first.
    page.select_option("#sort-key", "date")
    assert row_ids(page) == [m["id"] for m in models]
    page.click("#sort-direction")
    assert row_ids(page) == [m["id"] for m in reversed(models)]

    page.select_option("#filter-architecture", "vae-svm")
    assert row_ids(page) == [m["id"] for m in reversed(models) if m["model"] == "vae-svm"]
    page.select_option("#filter-architecture", "")
    page.select_option("#filter-dataset", "Gaussian images")
    gaussian = [m["id"] for m in reversed(models) if m["config"]["dataset"]["name"] == "gaussian"]
    assert analysis_models["vgg"] in gaussian and analysis_models["vae-kmeans"] in gaussian
    assert row_ids(page) == gaussian
    page.select_option("#filter-condition", "vanilla")
    vanilla = [i for i in gaussian if next(m for m in models if m["id"] == i)["config"]["dataset"]["condition"] == "vanilla"]
    assert row_ids(page) == vanilla
    expect(page.locator("#models-table tbody td[data-column=dataset]")).to_have_text(["Gaussian images"] * len(vanilla))
    # The view is in the URL, to be shared.
    assert "dataset=Gaussian+images" in page.evaluate("location.hash")
    screenshot(page, "models-list")


def test_compare_two_models(page, screenshot, analysis_models):
    vgg, vae = analysis_models["vgg"], analysis_models["vae-svm"]
    open_page(page, "/models", "#models-table tbody tr")
    for model_id in (vgg, vae):
        page.check(f'#models-table tr[data-id="{model_id}"] input.select-model')
    page.click("#compare-selected")
    page.wait_for_selector("#compare-charts")
    assert page.evaluate("location.hash") == f"#/compare?ids={vgg},{vae}"

    # One chart per metric, one named series per model (the VAE + SVM's head phase has the accuracies).
    accuracy = page.locator('#compare-charts [data-metric="val_accuracy"]')
    names = accuracy.locator("polyline").evaluate_all("lines => lines.map((l) => l.dataset.series)")
    assert len(names) == 2
    assert names[0].startswith("vgg · Gaussian images") and names[0].endswith(vgg[:6])
    assert names[1].startswith("vae-svm · MNIST 0 vs 1") and names[1].endswith(vae[:6])
    expect(accuracy.locator(".legend")).to_contain_text(names[0])
    expect(accuracy.locator(".legend")).to_contain_text(names[1])
    expect(page.locator("#compare-table thead th[data-id]")).to_have_count(2)
    expect(page.locator('#compare-table tr[data-metric="val_accuracy"] td')).to_have_count(2)
    screenshot(page, "compare")

    page.click(f'#compare-table .remove-model[data-id="{vgg}"]')
    expect(page.locator("#compare-table thead th[data-id]")).to_have_count(1)
    page.select_option("#add-model", vgg)
    page.click("#add-model-button")
    expect(page.locator("#compare-table thead th[data-id]")).to_have_count(2)
    assert page.evaluate("location.hash") == f"#/compare?ids={vae},{vgg}"


def test_experiment_report_shows_both_tables_beside_the_papers(page, screenshot, client):
    job = wait_finished(client, submit(client, MNIST_EXPERIMENT)["id"], timeout=300)
    assert job["status"] == "succeeded", job
    rows = {(r["model"], r["condition"]): r for r in client.get(f"/v1/jobs/{job['id']}/report").json()["rows"]}
    open_page(page, f"/jobs/{job['id']}/report", "#table-1")

    def cell(table: str, model: str, condition: str, which: str):
        return page.locator(f'#{table} td[data-model="{model}"][data-condition="{condition}"][data-which="{which}"]')

    for model in MNIST_EXPERIMENT["models"]:
        for condition in MNIST_EXPERIMENT["conditions"]:
            row = rows[(model, condition)]
            ours = f"{100 * row['val_accuracy']:.2f}"
            if condition == "noisy":  # Table 1's brackets: the vanilla model tested on noisy images
                ours += f" ({100 * rows[(model, 'vanilla')]['noisy_val_accuracy']:.2f})"
            expect(cell("table-1", model, condition, "ours")).to_have_text(ours)
            expect(cell("table-1", model, condition, "paper")).to_have_text(f"{PAPER_ACCURACY[model][condition]:.2f}")
            expect(cell("table-2", model, condition, "ours")).to_have_text(f"{row['train_seconds']:.1f}")
            expect(cell("table-2", model, condition, "paper")).to_have_text(f"{PAPER_SECONDS[model][condition]:.1f}")
            # Our value links to the cell's model.
            expect(cell("table-1", model, condition, "ours").locator("a")).to_have_attribute(
                "href", f"#/models/{row['model_id']}")
    expect(page.locator("#table-1 thead")).to_contain_text("No noise")
    expect(page.locator("#table-1 tbody th")).to_have_text(["Resnet", "Unet Pretrained"])
    # The cells' figures: training curves of all four models.
    expect(page.locator("#report-figures img")).to_have_count(4, timeout=60_000)
    screenshot(page, "experiment-report")


def test_error_analysis_report_shows_the_plot_and_the_decomposition(page, screenshot, client):
    job = wait_finished(client, submit(client, TINY_ERROR_ANALYSIS)["id"], timeout=300)
    assert job["status"] == "succeeded", job
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    open_page(page, f"/jobs/{job['id']}/report", "#error-analysis-table")
    rows = page.locator("#error-analysis-table tbody tr")
    by_size = sorted(report["models"], key=lambda m: m["parameter_count"])
    expect(rows).to_have_count(len(by_size))
    for row, model in zip(rows.all(), by_size):
        assert row.get_attribute("data-model") == model["model"]
        expect(row.locator("td").nth(1)).to_have_text(f"{model['ee_mean']:.4f} ± {model['ee_std']:.4f}")
        expect(row.locator("td").nth(2)).to_have_text(f"{model['ae_mean']:.4f} ± {model['ae_std']:.4f}")
    expect(page.locator("#bayes-line")).to_contain_text(f"{report['bayes']['risk']:.6g}"[:6])
    plot = page.locator("img[alt^='estimation and approximation error']")
    expect(plot).to_be_visible(timeout=60_000)
    assert plot.evaluate("img => img.naturalWidth") > 0  # a decoded PNG, not a broken image
    screenshot(page, "error-analysis-report")


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        # Typed in: equal variances, so the closed form Phi(-Delta/2) = Phi(-1).
        ({"#bayes-mean0": "0", "#bayes-mean1": "2", "#bayes-cov0": "1", "#bayes-cov1": "1", "#bayes-dim": "1"},
         {"mean0": 0, "mean1": 2, "cov0": 1, "cov1": 1, "dim": 1}),
        # The page's third example: different covariances, so Monte Carlo with seed 0.
        ('[data-preset="2"]', {"mean0": [0, 0], "mean1": [1, 1], "cov0": [[1, 0.5], [0.5, 1]], "cov1": [2, 0.5],
                               "prior1": 0.3}),
    ],
    ids=["closed-form", "monte-carlo"],
)
def test_bayes_calculator_gives_the_apis_risk(page, screenshot, client, fields, body):
    expected = client.post("/v1/reports/bayes-risk", json={**body, "seed": 0}).json()
    open_page(page, "/bayes", "#bayes-form")
    if isinstance(fields, str):
        page.click(fields)
    else:
        for selector, value in fields.items():
            page.fill(selector, value)
    page.click("#bayes-submit")
    risk = page.locator("#bayes-risk")
    expect(risk).to_be_visible()
    assert float(risk.get_attribute("data-value")) == expected["risk"]
    assert float(risk.inner_text()) == pytest.approx(expected["risk"], rel=1e-5)
    expect(page.locator("#bayes-method")).to_contain_text(expected["method"].replace("_", " "))
    expect(page.locator("#bayes-rule")).to_contain_text(expected["rule"]["predict_1_if"])
    screenshot(page, "bayes")
