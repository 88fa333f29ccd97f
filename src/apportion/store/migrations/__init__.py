"""Alembic migrations, applied at every server start (``store/database.py:migrate``)."""
