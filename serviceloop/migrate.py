"""Schema migrations (alembic, one history per service) and the broker topology.

`serviceloop migrate` upgrades every service's database to head and declares every
consumer's durable queue and binding listed in contracts/, so no event published
before its consumer first starts can be dropped by the broker.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from serviceloop.config import SERVICES, amqp_uri, database_url
from serviceloop.services import IMPLEMENTED

log = logging.getLogger(__name__)
SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"


def alembic_config(service: str, url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SERVICES_DIR / service / "migrations"))
    config.set_main_option("sqlalchemy.url", (url or database_url(service)).replace("%", "%%"))
    config.attributes["service"] = service
    return config


def upgrade(service: str, url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(service, url), revision)


def run_env(service: str) -> None:
    """The body of every service's migrations/env.py."""
    import importlib

    from alembic import context

    from serviceloop.db import make_engine

    metadata = importlib.import_module(f"services.{service}.projections").metadata
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"), pool_size=1)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    engine.dispose()


def declare_broker_topology(uri: str | None = None) -> list[str]:
    """Declare every service's event exchange and every subscribed queue with its binding."""
    import pika

    from contracts.subscriptions import SUBSCRIPTIONS
    from serviceloop.consumer import queue_arguments, queue_name
    from serviceloop.relay import event_exchange

    connection = pika.BlockingConnection(pika.URLParameters(uri or amqp_uri()))
    try:
        channel = connection.channel()
        for service in SERVICES:
            channel.exchange_declare(event_exchange(service), exchange_type="topic", durable=True)
        declared = []
        for sub in SUBSCRIPTIONS:
            name = queue_name(sub.source, sub.event_type, sub.consumer, sub.method)
            channel.queue_declare(name, durable=True, arguments=queue_arguments() or None)
            channel.queue_bind(name, event_exchange(sub.source), routing_key=sub.event_type)
            declared.append(name)
        return declared
    finally:
        connection.close()


def migrate_all(services: tuple[str, ...] = IMPLEMENTED, *, broker: bool = True) -> None:
    for service in services:
        upgrade(service)
        log.info("%s database at head", service)
    if broker:
        declare_broker_topology()
