import psycopg

from sql.migrate import apply_migrations, migration_files


def test_migrations_apply_once_and_create_tables(pg_dsn: str) -> None:
    # pg_dsn already applied everything; a second run must be a no-op.
    assert apply_migrations(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert versions == [p.stem for p in migration_files()]
    assert {"requests", "request_attempts", "cost_rates", "model_eval"} <= tables
