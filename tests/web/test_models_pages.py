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


def api_page(client, **params) -> dict:
    """GET /v1/models with the page's query: the independent source of what the list must show."""
    response = client.get("/v1/models", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def expect_list(page, client, **params) -> dict:
    """The list shows the API's page for `params`, in its order: name/version linking to each model, and
    the API's count."""
    expected = api_page(client, **params)
    items = expected["items"]
    links = page.locator("#models-table tbody td[data-column=name] a")
    expect(links).to_have_text([f"{m['name']}/{m['version']}" for m in items])
    assert links.evaluate_all("links => links.map((a) => a.getAttribute('href'))") == [f"#/models/{m['id']}" for m in items]
    first = expected["offset"] + 1
    count = f"{first}-{first + len(items) - 1} of {expected['total']} models" if items else f"0 of {expected['total']} models"
    expect(page.locator("#models-count")).to_have_text(count)
    return expected


def test_models_list_filters_sorts_and_pages_on_the_server(page, screenshot, client, analysis_models):
    doc = client.get("/openapi.json").json()
    sort_keys = next(p for p in doc["paths"]["/v1/models"]["get"]["parameters"] if p["name"] == "sort")["schema"]["enum"]
    total = api_page(client)["total"]
    assert total >= 3
    open_page(page, "/models", "#models-table tbody tr")
    # By default newest first: the API's default order.
    expect_list(page, client)
    expect(page.locator("#page-previous")).to_be_disabled()
    expect(page.locator("#page-next")).to_be_disabled()

    # The sort keys are the API's; the columns it cannot sort by only show.
    options = page.locator("#sort-key option").evaluate_all("options => options.map((o) => o.value)")
    assert sorted(options) == sorted(key for key in sort_keys if not key.startswith("-"))
    for column in ("size", "parameters", "time"):
        expect(page.locator(f'th[data-column="{column}"]')).not_to_have_attribute("data-sort", column)

    page.click('th[data-sort="accuracy"]')  # numbers sort best first
    expect_list(page, client, sort="-accuracy")
    page.click('th[data-sort="accuracy"]')
    expect_list(page, client, sort="accuracy")
    expect(page.locator('th[data-sort="accuracy"]')).to_have_attribute("aria-sort", "ascending")
    page.click('th[data-sort="name"]')  # text sorts A to Z first
    expect_list(page, client, sort="name")
    page.click('th[data-sort="architecture"]')
    expect_list(page, client, sort="architecture")
    # The controls do the same: newest first, then oldest first.
    page.select_option("#sort-key", "date")
    expect_list(page, client, sort="-date")
    page.click("#sort-direction")
    expect_list(page, client, sort="date")

    # The filters' choices are the train job's enums in the API's schema, and the registered names.
    schemas = doc["components"]["schemas"]
    for key, values in [("architecture", schemas["TrainJob"]["properties"]["model"]["enum"]),
                        ("dataset", schemas["DatasetConfig"]["properties"]["name"]["enum"]),
                        ("condition", schemas["DatasetConfig"]["properties"]["condition"]["enum"])]:
        assert page.locator(f"#filter-{key} option").evaluate_all("options => options.map((o) => o.value)") == ["", *values]
    names = [n["name"] for n in client.get("/v1/registered-models", params={"limit": 200}).json()["items"]]
    assert page.locator("#filter-name option").evaluate_all("options => options.map((o) => o.value)") == ["", *names]

    page.select_option("#filter-architecture", "vae-svm")
    assert expect_list(page, client, architecture="vae-svm", sort="date")["total"] >= 1
    page.select_option("#filter-architecture", "")
    page.select_option("#filter-dataset", "gaussian")
    gaussian = expect_list(page, client, dataset="gaussian", sort="date")
    assert {analysis_models["vgg"], analysis_models["vae-kmeans"]} <= {m["id"] for m in gaussian["items"]}
    page.select_option("#filter-condition", "vanilla")
    vanilla = expect_list(page, client, dataset="gaussian", condition="vanilla", sort="date")
    expect(page.locator("#models-table tbody td[data-column=dataset]")).to_have_text(["Gaussian images"] * len(vanilla["items"]))
    # The view is in the URL, to be shared.
    assert "dataset=gaussian" in page.evaluate("location.hash")
    screenshot(page, "models-list")
    page.select_option("#filter-dataset", "")
    page.select_option("#filter-condition", "")
    vgg_name = client.get(f"/v1/models/{analysis_models['vgg']}").json()["name"]
    page.select_option("#filter-name", vgg_name)
    expect_list(page, client, name=vgg_name, sort="date")

    # A shared view opens as it was left, and pages: two models a page.
    open_page(page, "/models?sort=accuracy&dir=desc&limit=2", "#models-table tbody tr")
    expect_list(page, client, sort="-accuracy", limit=2)
    expect(page.locator("#page-previous")).to_be_disabled()
    for offset in range(2, total, 2):
        page.click("#page-next")
        expect_list(page, client, sort="-accuracy", limit=2, offset=offset)
        assert f"offset={offset}" in page.evaluate("location.hash")
    expect(page.locator("#page-next")).to_be_disabled()
    page.click("#page-previous")
    expect_list(page, client, sort="-accuracy", limit=2, offset=offset - 2)
    # Another order starts again from the first page.
    page.click('th[data-sort="condition"]')
    expect_list(page, client, sort="condition", limit=2)
    screenshot(page, "models-list-paged")


def test_set_and_remove_an_alias_on_the_model_page(page, screenshot, client, analysis_models):
    model = client.get(f"/v1/models/{analysis_models['vgg']}").json()
    name, alias = model["name"], "web-champion"
    open_page(page, f"/models/{model['id']}", "#alias-form")
    expect(page.locator('#model-summary dt:text-is("name") + dd')).to_have_text(name)
    expect(page.locator('#model-summary dt:text-is("version") + dd')).to_have_text(str(model["version"]))

    page.fill("#alias-input", alias)
    page.click("#alias-set")
    badge = page.locator(f'#model-aliases .badge[data-alias="{alias}"]')
    expect(badge).to_be_visible()
    expect(page.locator("#alias-input")).to_have_value("")
    resolved = client.get(f"/v1/models/{name}@{alias}")
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["id"] == model["id"]
    # The API's refusal shows as its message: `latest` is reserved.
    page.fill("#alias-input", "latest")
    page.click("#alias-set")
    expect(page.locator("#model-summary .error")).to_contain_text("422 invalid_request")
    expect(page.locator("#model-summary .error")).to_contain_text("reserved")
    screenshot(page, "alias-set")

    # The list shows the alias beside the name/version.
    open_page(page, "/models", "#models-table tbody tr")
    expect(page.locator(f'#models-table tr[data-id="{model["id"]}"] td[data-column=name] .badge')).to_contain_text([alias])

    open_page(page, f"/models/{model['id']}", "#alias-form")
    page.click(f'#model-aliases .badge[data-alias="{alias}"] .remove-alias')
    expect(badge).to_have_count(0)
    expect(page.locator("#model-summary .error")).to_have_count(0)
    assert client.get(f"/v1/models/{name}@{alias}").status_code == 404


def test_compare_two_models(page, screenshot, client, analysis_models):
    vgg, vae = analysis_models["vgg"], analysis_models["vae-svm"]
    versions = {i: "{name}/{version}".format(**client.get(f"/v1/models/{i}").json()) for i in (vgg, vae)}
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
    # Each legend ends with the model's registered name/version.
    assert names[0].startswith("vgg · Gaussian images") and names[0].endswith(f" · {versions[vgg]}")
    assert names[1].startswith("vae-svm · MNIST 0 vs 1") and names[1].endswith(f" · {versions[vae]}")
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
