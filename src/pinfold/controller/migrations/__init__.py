"""Alembic's environment for the controller's schema, run by
`pinfold.controller.database.upgrade` (no alembic.ini: the configuration is
built in code and the connection handed in)."""
