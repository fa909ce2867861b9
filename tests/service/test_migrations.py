"""Migration 0005 on a registry with models in it, on SQLite and on PostgreSQL: the architecture column
keeps its values, each model gets the derived name and a version in the order it was registered, the
names' counters continue from there, and downgrading gives the old table back."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from conftest import POSTGRES_URL, _reachable

from service import migrations


def run_config(model: str, classes: list[int], condition: str = "vanilla") -> dict:
    return {"model": model, "dataset": {"name": "mnist", "classes": classes, "condition": condition},
            "training": {}, "init_from": None}


# (id, architecture, config, minutes after the first) as revision 0004 stored them; not in created order.
ROWS = [
    ("c" * 32, "vgg", run_config("vgg", [0, 1]), 2),
    ("a" * 32, "vgg", run_config("vgg", [0, 1]), 0),
    ("b" * 32, "resnet", run_config("resnet", list(range(10)), "noisy"), 1),
    ("d" * 32, "vgg", run_config("vgg", [3, 5, 8]), 3),
]
EXPECTED = {"a" * 32: ("vgg-mnist-0v1-vanilla", 1), "c" * 32: ("vgg-mnist-0v1-vanilla", 2),
            "b" * 32: ("resnet-mnist-0to9-noisy", 1), "d" * 32: ("vgg-mnist-3v5v8-vanilla", 1)}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not _reachable(POSTGRES_URL):
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is unreachable at {POSTGRES_URL}")
        pytest.skip(f"PostgreSQL is unreachable at {POSTGRES_URL}")
    name = f"classcomp_migration_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(POSTGRES_URL)._replace(scheme="postgresql+psycopg", path=f"/{name}").geturl()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(engine: sa.Engine, revision: str, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


def test_existing_models_get_derived_names_and_versions_in_registration_order(database):
    engine = sa.create_engine(database)
    migrate(engine, "0004")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    models = sa.Table("models", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(models.insert(), [
            {"id": model_id, "job_id": None, "name": arch, "config": config, "classes": config["dataset"]["classes"],
             "parameter_count": 1, "train_seconds": 1.0, "final_metrics": {}, "history": [],
             "created_at": start + timedelta(minutes=minutes), "weights_sha256": None}
            for model_id, arch, config, minutes in ROWS])

    migrate(engine, "head")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, name, version, architecture FROM models")).all()
        counters = dict(conn.execute(sa.text("SELECT name, last_version FROM registered_models")).all())
    assert {r.id: (r.name, r.version) for r in rows} == EXPECTED
    assert {r.id: r.architecture for r in rows} == {model_id: arch for model_id, arch, _, _ in ROWS}
    assert counters == {"vgg-mnist-0v1-vanilla": 2, "resnet-mnist-0to9-noisy": 1, "vgg-mnist-3v5v8-vanilla": 1}
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE models SET version = 1 WHERE id = :id"), {"id": "c" * 32})

    migrate(engine, "0004", down=True)
    with engine.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT id, name FROM models")).all()) == {
            model_id: arch for model_id, arch, _, _ in ROWS}
    engine.dispose()
