"""Alembic environment for the registry.

Services upgrade through service.registry.migrate, which hands over its connection (already
holding the migration lock); the alembic command line (see alembic.ini here) connects to
CLASSCOMP_DATABASE_URL itself.
"""

from alembic import context
from sqlalchemy.types import TypeDecorator

from service.registry import Base, engine


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Revisions must not import application types: write a decorated type as the type it stores.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with engine().begin() as conn:
        run(conn)
