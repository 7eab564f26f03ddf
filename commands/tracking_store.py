"""Opening the MLflow tracking store: every command opens it with :func:`open_store` first (a run's
logger, :func:`commands.runner.new_logger`; a sweep; ``retention bench``, ``evaluate``, ``compare``).

MLflow creates a fresh SQLite database's schema the first time a process opens it, and does not
guard against a second process doing the same: two ``retention train`` started at once in a new
directory (a grid) raced there, and one died with ``sqlite3.OperationalError: table experiments
already exists`` (or ``duplicate column name``, mid-migration). Two runs creating the same new
experiment race the same way (a unique-name violation). :func:`open_store` therefore opens a SQLite
store, and creates the experiment it is given, while holding a file lock beside the database
(``<database>.lock``, a ``filelock.FileLock``); once the schema exists, MLflow's later opens only
read it. Other stores are opened without a lock: a tracking server creates its store once, when
it starts, and a lock file on this machine would not reach the other clients of a shared database
(PostgreSQL).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from filelock import FileLock
from mlflow.tracking import MlflowClient

__all__ = ["open_store", "store_lock"]


def store_lock(uri: str) -> contextlib.AbstractContextManager:
    """A ``FileLock`` on ``<database>.lock`` for a ``sqlite:///`` file store; a no-op context for any
    other URI (an in-memory SQLite database is private to its process)."""
    if not uri.startswith("sqlite:///"):  # sqlite:// alone is an in-memory database
        return contextlib.nullcontext()
    database = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if database in ("", ":memory:"):
        return contextlib.nullcontext()
    return FileLock(f"{Path(database).expanduser()}.lock")


def open_store(uri: str, experiment: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` whose store exists: its schema created, and the experiment named
    ``experiment`` (when given and not there yet) created too, under :func:`store_lock` (see the module
    docstring). Clients and loggers built afterwards (Lightning's ``MLFlowLogger``, ``mlflow.*``) find
    both in place."""
    with store_lock(uri):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # the store is open (schema, default experiment) by now
        if experiment and client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment)
    return client
