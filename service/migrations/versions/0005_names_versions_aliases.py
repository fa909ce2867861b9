"""names, versions, aliases: every model is a version of a registered name, which aliases can point into

`models.name` held the architecture; it becomes `architecture`, and `name` the registered name.
Existing models get the name a job without one derives, numbered in the order they were created.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _derived_name(run: dict) -> str:
    # Frozen at this revision on purpose (service.registry.derived_name may change): a migration
    # must name the same rows the same way whenever it runs.
    dataset = run.get("dataset", {})
    classes = dataset.get("classes") or dataset.get("digits") or [0, 1]
    span = f"{classes[0]}to{classes[-1]}" if len(classes) > 2 and classes == list(range(classes[0], classes[-1] + 1)) \
        else "v".join(map(str, classes))
    return f"{run['model']}-{dataset.get('name', 'mnist')}-{span}-{dataset.get('condition', 'vanilla')}"


def upgrade() -> None:
    op.create_table(
        "registered_models",
        sa.Column("name", sa.String(100), primary_key=True),
        # Versions are never reused, even after the newest is deleted (as in MLflow).
        sa.Column("last_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("models") as batch:
        batch.alter_column("name", new_column_name="architecture", existing_type=sa.String(32))
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("name", sa.String(100), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer, nullable=True))

    conn = op.get_bind()
    models = sa.table("models", sa.column("id", sa.String), sa.column("name", sa.String), sa.column("version", sa.Integer),
                      sa.column("config", sa.JSON), sa.column("created_at", sa.DateTime(timezone=True)))
    registered = sa.table("registered_models", sa.column("name", sa.String), sa.column("last_version", sa.Integer),
                          sa.column("created_at", sa.DateTime(timezone=True)))
    versions: dict[str, int] = {}
    first_seen = {}
    for model_id, config, created_at in conn.execute(
            sa.select(models.c.id, models.c.config, models.c.created_at).order_by(models.c.created_at, models.c.id)):
        name = _derived_name(config)
        versions[name] = versions.get(name, 0) + 1
        first_seen.setdefault(name, created_at)
        conn.execute(models.update().where(models.c.id == model_id).values(name=name, version=versions[name]))
    if versions:
        conn.execute(registered.insert(), [{"name": name, "last_version": last, "created_at": first_seen[name]}
                                           for name, last in versions.items()])

    with op.batch_alter_table("models") as batch:
        batch.alter_column("name", existing_type=sa.String(100), nullable=False)
        batch.alter_column("version", existing_type=sa.Integer, nullable=False)
        batch.create_foreign_key("fk_models_name", "registered_models", ["name"], ["name"])
        batch.create_unique_constraint("uq_models_name_version", ["name", "version"])

    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(100), sa.ForeignKey("registered_models.name"), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_aliases")
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("uq_models_name_version", type_="unique")
        batch.drop_constraint("fk_models_name", type_="foreignkey")
        batch.drop_column("version")
        batch.drop_column("name")
    with op.batch_alter_table("models") as batch:
        batch.alter_column("architecture", new_column_name="name", existing_type=sa.String(32))
    op.drop_table("registered_models")
