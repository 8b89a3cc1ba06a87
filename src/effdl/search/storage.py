"""Where a study lives: a journal file next to its runs by default, or any database optuna supports.

- none (default): `<study dir>/study.journal`, optuna's JournalStorage over a file, safe for
  several worker processes on one machine (appends under a file lock).
- a path ending in .journal or .log: a journal file there (on a shared file system, several machines).
- a database URL (`postgresql://...`, `mysql://...`): optuna's RDBStorage, for several machines.
- `sqlite:///file.db`: accepted for one worker only; SQLite's locking is not safe for concurrent
  writers, so it is refused when more than one worker writes.

Each is checked as it opens: an unreachable URL is one clear line (EffdlError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from effdl.errors import EffdlError

JOURNAL_NAME = "study.journal"


def describe_storage(url: str | None, study_dir: Path) -> str:
    return str(study_dir / JOURNAL_NAME) if url is None else url


def open_storage(url: str | None, study_dir: Path, *, workers: int = 1) -> Any:
    """The optuna storage for `url` (module docstring); `workers` local processes will write it.

    Raises EffdlError for SQLite with several workers or a storage that cannot be opened.
    """
    import optuna

    if url is None or url.endswith((".journal", ".log")) or url.startswith("journal:"):
        path = study_dir / JOURNAL_NAME if url is None else Path(url.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise EffdlError(f"cannot open the study journal {path}: {exc.strerror or exc}") from None
    if "://" not in url:
        raise EffdlError(f"storage {url!r} is neither a journal file (.journal) nor a database URL "
                         "such as postgresql://user@host/db")
    if url.startswith("sqlite") and workers > 1:
        raise EffdlError(f"SQLite ({url}) is not safe with {workers} concurrent writers; use the default "
                         "journal file (no --storage), a .journal path, or a database server URL")
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else {})
    except ImportError as exc:
        raise EffdlError(f"storage {url}: its database driver is not installed ({exc})") from None
    except Exception as exc:  # sqlalchemy's errors (OperationalError, ArgumentError...): one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EffdlError(f"cannot reach storage {url}: {first[:200]}") from None
