"""The Foreman REST API (Litestar over asyncpg)."""
