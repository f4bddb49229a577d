"""Creating API keys and tenant policies in a test database, as ``python -m ingest.keys`` does."""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg import AsyncConnection

from sql.keys import ApiKey, create_key, update_tenant


async def new_key(dsn: str, tenant: str, pepper: str = "", **options: Any) -> tuple[str, ApiKey]:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await create_key(conn, pepper, tenant, **options)


async def set_tenant(dsn: str, tenant: str, **changes: Any) -> None:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        await update_tenant(conn, tenant, **changes)


def new_key_sync(dsn: str, tenant: str, pepper: str = "", **options: Any) -> str:
    return asyncio.run(new_key(dsn, tenant, pepper, **options))[0]
