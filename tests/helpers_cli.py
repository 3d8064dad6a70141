"""The `contimg` command run as users run it: a subprocess, its output and exit status."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def json(self) -> Any:
        return json.loads(self.out)


async def contimg(*args: str, env: dict[str, str] | None = None, stdin: str | None = None, prelude: str = "") -> Result:
    """`contimg ARGS` with no CONTIMG_* variables but `env`'s; `prelude` is Python run first (to hide
    modules)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")} | (env or {})
    command = [sys.executable, "-m", "dsa110.contimg.contimg_cli"]  # what the `contimg` command runs
    if prelude:
        command = [
            sys.executable,
            "-c",
            f"{prelude}\nfrom dsa110.contimg.contimg_cli import main\nraise SystemExit(main())",
        ]
    process = await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())
