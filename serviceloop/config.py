"""Configuration from environment variables (see shared/DESIGN.md, "Interfaces that are fixed")."""

from __future__ import annotations

import os
from pathlib import Path

SERVICES = ("orders", "dispatch", "callback", "settlement")
DEFAULT_AMQP_URI = "amqp://guest:guest@localhost:5672/"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    path = Path(os.environ.get("SERVICELOOP_VAR", PROJECT_ROOT / "var"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def amqp_uri(config: dict | None = None) -> str:
    if config and config.get("AMQP_URI"):
        return config["AMQP_URI"]
    return os.environ.get("AMQP_URI", DEFAULT_AMQP_URI)


def database_url(service: str, config: dict | None = None) -> str:
    """`DATABASE_URL_<SERVICE>`, else a SQLite file under `var/`."""
    key = f"DATABASE_URL_{service.upper()}"
    if config and config.get(key):
        return config[key]
    return os.environ.get(key) or f"sqlite:///{var_dir() / (service + '.db')}"


def nameko_config(service: str | None = None) -> dict:
    """The config dict handed to nameko containers and standalone proxies."""
    config = {
        "AMQP_URI": amqp_uri(),
        "max_workers": int(os.environ.get("MAX_WORKERS", "16")),
        "parent_calls_tracked": 10,
        "HEARTBEAT": int(os.environ.get("AMQP_HEARTBEAT", "30")),
        "CLOCK": os.environ.get("SERVICELOOP_CLOCK", "system"),
    }
    for name in SERVICES:
        config[f"DATABASE_URL_{name.upper()}"] = database_url(name)
    return config
