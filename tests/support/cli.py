"""The ``sgb`` command line run as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path


async def sgb(*args: str, home: Path, url: str | None = None, timeout: float = 60,
              env: dict[str, str] | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {"SGB_HOME": str(home)} | (env or {})
    if url:
        env["SGB_NATS_URL"] = url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def serving(home: Path, *args: str, log: str = "serve.log",
                  env: dict[str, str] | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """``sgb serve ARGS`` in its own session, as an operator or systemd runs it, its log in ``home``;
    killed on the way out if the test has not stopped it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {"SGB_HOME": str(home)} | (env or {})
    with (home / log).open("ab") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker.cli", "serve", *args, env=env,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=out,
                                                    start_new_session=True)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
