"""Alembic migrations of the availability database (run with `presence-ha db upgrade`).

Rules: one file per revision in `versions/` named `<rev>_<slug>.py`, each with a
docstring saying why; `env.py` migrates with one transaction per migration under a
lock (PostgreSQL advisory lock, SQLite lock file) so two nodes may upgrade at once.
Files are located relative to this package, so it works when installed.
"""
