"""Registered names, versions and aliases on the embedded service (real worker, real HTTP): every model
route takes a ref; an alias moves atomically under concurrent predictions; /v1/models filters, sorts
and pages as Python sorting the whole listing does."""

from __future__ import annotations

import threading
import uuid

import pytest
from api_helpers import TINY_GAUSSIAN, assert_error, submit, wait_finished

# One pixel array at the models' own size: the answer of each version to it is told apart by model_id.
IMAGE = {"pixels": [[[((r * 7 + c * 3) % 11) / 10 for c in range(32)] for r in range(32)]]}


def tiny_job(name: str | None, seed: int, model: str = "vgg") -> dict:
    body = {"kind": "train", "model": model, "dataset": TINY_GAUSSIAN,
            "training": {"epochs": 1, "width": 0.0625, "seed": seed}}
    return body if name is None else {**body, "name": name}


def train(client, body: dict) -> dict:
    job = wait_finished(client, submit(client, body)["id"])
    assert job["status"] == "succeeded", job
    model = client.get(f"/v1/models/{job['model_ids'][0]}").json()
    assert job["model_refs"] == [f"{model['name']}/{model['version']}"]
    return model


@pytest.fixture(scope="module")
def versions(client) -> list[dict]:
    """Two versions of a name of this module's own, trained with different seeds."""
    name = f"names-test-{uuid.uuid4().hex[:8]}"
    return [train(client, tiny_job(name, seed)) for seed in (0, 1)]


def test_a_job_without_a_name_gets_the_derived_one_and_the_next_version(client):
    before = client.get("/v1/models", params={"name": "vgg-gaussian-0v1-vanilla", "limit": 200}).json()
    model = train(client, tiny_job(None, seed=2))
    assert model["name"] == "vgg-gaussian-0v1-vanilla" and model["model"] == "vgg"
    assert model["version"] == max([m["version"] for m in before["items"]], default=0) + 1


def test_versions_count_up_and_every_ref_names_the_same_model(client, versions):
    first, second = versions
    name = first["name"]
    assert (first["version"], second["version"]) == (1, 2) and second["name"] == name
    refs = {first["id"]: [first["id"], f"{name}/1"], second["id"]: [second["id"], f"{name}/2", name, f"{name}@latest"]}
    for model_id, names in refs.items():
        for ref in names:
            response = client.get(f"/v1/models/{ref}")
            assert response.status_code == 200 and response.json()["id"] == model_id, (ref, response.text)
    assert client.get(f"/v1/registered-models/{name}").json() == {
        "name": name, "created_at": client.get(f"/v1/registered-models/{name}").json()["created_at"],
        "versions": [1, 2], "latest_version": 2, "aliases": {}}


def test_every_model_route_takes_name_slash_version(client, versions):
    model = versions[0]
    ref = f"{model['name']}/1"
    by_id = client.post(f"/v1/models/{model['id']}/predict", json=IMAGE).json()
    assert client.post(f"/v1/models/{ref}/predict", json=IMAGE).json() == by_id
    assert client.get(f"/v1/models/{ref}/metrics").json() == client.get(f"/v1/models/{model['id']}/metrics").json()
    assert client.get(f"/v1/models/{ref}/weights").content == client.get(f"/v1/models/{model['id']}/weights").content
    figure = client.get(f"/v1/models/{ref}/figures/training-curves.png")
    assert figure.status_code == 200 and figure.content.startswith(b"\x89PNG")
    onnx = client.get(f"/v1/models/{ref}/export.onnx")
    assert onnx.status_code == 200
    assert onnx.headers["content-disposition"] == f'attachment; filename="{model["name"]}-1.onnx"'
    evaluation = client.get(f"/v1/models/{ref}/reports/evaluation", params={"condition": "noisy"})
    assert evaluation.status_code == 200 and evaluation.json()["model_id"] == model["id"]


def test_unknown_refs_are_404(client, versions):
    name = versions[0]["name"]
    for ref in (f"{name}/9", f"{name}@nobody", "no-such-name", "a" * 32):
        assert_error(client.get(f"/v1/models/{ref}"), 404, "model_not_found", repr(ref))
        assert_error(client.post(f"/v1/models/{ref}/predict", json=IMAGE), 404, "model_not_found")
    # Not a ref at all (a version is a number; one at most): no route, and no model is looked up.
    for path in (f"{name}/x", f"{name}/1/2"):
        assert_error(client.get(f"/v1/models/{path}"), 404, "not_found", "no route")
    # A GET of an action is the action's 405, not a lookup of the model "ref/predict".
    assert_error(client.get(f"/v1/models/{name}/predict"), 405, "method_not_allowed", "POST")


def predict(client, ref: str) -> dict:
    response = client.post(f"/v1/models/{ref}/predict", json=IMAGE)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_alias_move_changes_what_predicts_atomically(client, versions, embedded_service):
    first, second = versions
    name, alias = first["name"], f"{first['name']}@champion"
    answers = {m["id"]: predict(client, m["id"])["predictions"] for m in versions}
    assert answers[first["id"]] != answers[second["id"]], "the two versions must answer differently"
    assert client.put(f"/v1/registered-models/{name}/aliases/champion", json={"version": 1}).status_code == 200

    seen, failures, stop = [], [], threading.Event()

    def hammer() -> None:
        with embedded_service.client() as own:
            while not stop.is_set():
                response = own.post(f"/v1/models/{alias}/predict", json=IMAGE)
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                body = response.json()
                # Whichever version served it, the answer is wholly that version's.
                if body["predictions"] != answers.get(body["model_id"]):
                    failures.append(body)
                seen.append(body["model_id"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for move in range(6):
            target = versions[(move + 1) % 2]
            moved = client.put(f"/v1/registered-models/{name}/aliases/champion", json={"version": target["version"]})
            assert moved.status_code == 200 and moved.json()["aliases"] == {"champion": target["version"]}
            # Once the move has answered, every request is served by the version it points at.
            for _ in range(3):
                assert predict(client, alias)["model_id"] == target["id"]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:3]
    assert set(seen) == {first["id"], second["id"]}, "the concurrent requests saw both versions"
    assert client.get(f"/v1/models/{alias}").json()["aliases"] == ["champion"]


def test_alias_errors_change_nothing(client, versions):
    name = versions[0]["name"]
    assert client.put(f"/v1/registered-models/{name}/aliases/staging", json={"version": 2}).status_code == 200
    assert_error(client.put(f"/v1/registered-models/{name}/aliases/staging", json={"version": 7}),
                 404, "version_not_found", "no version 7")
    assert_error(client.put("/v1/registered-models/no-such-name/aliases/staging", json={"version": 1}),
                 404, "name_not_found")
    assert_error(client.put(f"/v1/registered-models/{name}/aliases/latest", json={"version": 1}),
                 422, "invalid_request", "reserved")
    assert_error(client.put(f"/v1/registered-models/{name}/aliases/bad@alias", json={"version": 1}),
                 422, "invalid_request")
    assert_error(client.put(f"/v1/registered-models/{name}/aliases/staging", json={"version": 0}),
                 422, "invalid_request")
    assert client.get(f"/v1/models/{name}@staging").json()["version"] == 2
    assert_error(client.delete(f"/v1/registered-models/{name}/aliases/nobody"), 404, "alias_not_found")
    assert client.delete(f"/v1/registered-models/{name}/aliases/staging").status_code == 204
    assert_error(client.get(f"/v1/models/{name}@staging"), 404, "model_not_found")


def test_deleting_a_version_removes_its_aliases_and_never_reuses_its_number(client):
    name = f"names-delete-{uuid.uuid4().hex[:8]}"
    first, second = (train(client, tiny_job(name, seed)) for seed in (0, 1))
    assert client.put(f"/v1/registered-models/{name}/aliases/prod", json={"version": 2}).status_code == 200
    assert client.delete(f"/v1/models/{name}/2").status_code == 204
    assert_error(client.get(f"/v1/models/{name}@prod"), 404, "model_not_found")
    assert client.get(f"/v1/models/{name}").json()["id"] == first["id"]
    third = train(client, tiny_job(name, seed=3))
    assert third["version"] == 3
    assert client.get(f"/v1/registered-models/{name}").json()["versions"] == [1, 3]


@pytest.mark.parametrize("name", ["has/slash", "has@at", "0123456789abcdef0123456789abcdef", "", "-leading", "x" * 101])
def test_a_job_name_that_would_make_refs_ambiguous_is_refused(client, name):
    before = client.get("/v1/jobs", params={"limit": 1}).json()["total"]
    assert_error(client.post("/v1/jobs", json=tiny_job(name, seed=0)), 422, "invalid_request", "name")
    assert client.get("/v1/jobs", params={"limit": 1}).json()["total"] == before


def test_init_from_takes_a_ref_and_the_job_keeps_the_id(client):
    name = f"names-resnet-{uuid.uuid4().hex[:8]}"
    resnet = train(client, tiny_job(name, seed=0, model="resnet"))
    assert client.put(f"/v1/registered-models/{name}/aliases/base", json={"version": 1}).status_code == 200
    body = {**tiny_job(None, seed=0, model="unet-pretrained"), "init_from": f"{name}@base"}
    job = submit(client, body)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert job["request"]["init_from"] == resnet["id"]
    vgg = versions_of(client, "vgg-gaussian-0v1-vanilla")[0]
    assert_error(client.post("/v1/jobs", json={**body, "init_from": f"vgg-gaussian-0v1-vanilla/{vgg}"}),
                 422, "invalid_request", "names no registered resnet")


def versions_of(client, name: str) -> list[int]:
    return client.get(f"/v1/registered-models/{name}").json()["versions"]


def test_listing_filters_sorts_and_pages_as_sorting_everything_would(client, versions, analysis_models):
    everything = client.get("/v1/models", params={"limit": 200}).json()
    assert everything["total"] == len(everything["items"]) >= 3
    by_date = [m["id"] for m in everything["items"]]
    assert by_date == [m["id"] for m in sorted(everything["items"], key=lambda m: m["created_at"], reverse=True)]

    mine = client.get("/v1/models", params={"name": versions[0]["name"], "sort": "name"}).json()
    assert sorted(m["id"] for m in mine["items"]) == sorted(m["id"] for m in versions) and mine["total"] == 2

    keys = {"accuracy": lambda m: m["final_metrics"].get("val_accuracy"), "name": lambda m: m["name"],
            "architecture": lambda m: m["model"], "dataset": lambda m: m["config"]["dataset"]["name"]}
    for sort, key in keys.items():
        for descending in (False, True):
            got = client.get("/v1/models", params={"sort": f"-{sort}" if descending else sort, "limit": 200}).json()
            assert [m["id"] for m in got["items"]] == stable_sorted(everything["items"], key, descending), sort

    gaussian_vgg = client.get("/v1/models", params={"architecture": "vgg", "dataset": "gaussian",
                                                    "condition": "vanilla", "limit": 200}).json()
    assert {m["id"] for m in gaussian_vgg["items"]} == {
        m["id"] for m in everything["items"] if m["model"] == "vgg" and m["config"]["dataset"]["name"] == "gaussian"
        and m["config"]["dataset"]["condition"] == "vanilla"}

    pages = [client.get("/v1/models", params={"limit": 2, "offset": offset}).json() for offset in range(0, everything["total"], 2)]
    assert [m["id"] for page in pages for m in page["items"]] == by_date
    assert {page["total"] for page in pages} == {everything["total"]}
    assert_error(client.get("/v1/models", params={"sort": "size"}), 422, "invalid_request", "sort")


def stable_sorted(items: list[dict], key, descending: bool) -> list[str]:
    """The ids in the API's order: by key (models without one last), ties as given (newest first)."""
    present = [m for m in items if key(m) is not None]
    absent = [m for m in items if key(m) is None]
    if descending:
        # sorted(reverse=True) keeps ties in their given order too.
        return [m["id"] for m in sorted(present, key=key, reverse=True)] + [m["id"] for m in absent]
    return [m["id"] for m in sorted(present, key=key)] + [m["id"] for m in absent]
