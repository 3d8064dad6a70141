"""Page-token keys are one set per database and rotate without breaking anyone's paging
(domain/page_keys.py): a token from replica A works on B, before and after a rotation; a key
rotated in is accepted at once but signs only after its grace period; the previous key's tokens
keep working; a key rotated out twice is refused with INVALID_PAGE_TOKEN."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.v1 import images_pb2

from conftest import RunningServer, ServerFactory, make_stubs
from helpers_jobs import make_image, make_ms

ENGINES = ("sqlite", "postgres")
BIN = Path(sys.executable).parent


async def run_rotate(server: RunningServer, key_file: Path, *extra: str) -> tuple[int, str, str]:
    """`contimg-server rotate-page-token-key`, as an operator runs it, on the servers' database."""
    proc = await asyncio.create_subprocess_exec(
        *(str(BIN / "contimg-server"), "rotate-page-token-key", "--database", server.config.database),
        *("--key-file", str(key_file), *extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def rotate(server: RunningServer, tmp_path: Path, key: str, *extra: str) -> str:
    key_file = tmp_path / f"key-{key[:4]}"
    key_file.write_text(key + "\n")
    code, out, err = await run_rotate(server, key_file, *extra)
    assert code == 0, err
    return out


async def reload(*servers: RunningServer) -> None:
    for s in servers:
        await s.server.housekeeping.reload_page_token_keys()


async def test_tokens_survive_rotation_across_replicas(server_factory: ServerFactory, tmp_path: Path) -> None:
    a = await server_factory()  # the two share the test's database
    b = await server_factory()
    async with grpc.aio.insecure_channel(a.target) as ch_a, grpc.aio.insecure_channel(b.target) as ch_b:
        sa, sb = make_stubs(ch_a), make_stubs(ch_b)
        ms = await make_ms(sa, "/data/ms/keys.ms", mid_mjd=60400.0)
        for n in range(6):
            await make_image(sa, ms.name, f"/data/images/keys-{n}.fits", 60400.0 + n / 100)
        first = images_pb2.ListImagesRequest(page_size=2)

        async def second_page(stub: object, token: str) -> list[str]:
            reply = await stub.images.ListImages(images_pb2.ListImagesRequest(page_size=2, page_token=token))  # type: ignore[attr-defined]
            return [i.name for i in reply.images]

        original = (await sa.images.ListImages(first)).next_page_token
        expected = await second_page(sa, original)
        assert await second_page(sb, original) == expected  # A's token works on B

        # A rotation with the default delay: the new key is accepted at once, but does not sign yet.
        printed = await rotate(a, tmp_path, "11" * 32)
        assert "signing from" in printed and "1 older key(s) still accepted" in printed
        await reload(a, b)
        assert (await sa.images.ListImages(first)).next_page_token == original

        # A rotation signing at once (--signs-after-s 0): new tokens differ, and both generations work everywhere.
        await rotate(a, tmp_path, "22" * 32, "--signs-after-s", "0")
        await reload(a, b)
        rotated = (await sa.images.ListImages(first)).next_page_token
        assert rotated != original
        for stub in (sa, sb):
            assert await second_page(stub, rotated) == expected
            assert await second_page(stub, original) == expected

        # Two rotations later the original key is gone: its tokens are refused, clearly.
        await rotate(a, tmp_path, "33" * 32, "--signs-after-s", "0")
        await reload(a, b)
        for stub in (sa, sb):
            assert await second_page(stub, rotated) == expected
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await second_page(stub, original)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "invalid page token" in (refused.value.details() or "")


async def test_a_bad_key_is_refused_and_changes_nothing(server_factory: ServerFactory, tmp_path: Path) -> None:
    a = await server_factory()
    for bad, why in (("abcd", "at least 16"), ("not hex at all", "cannot read a hex key")):
        key_file = tmp_path / "bad"
        key_file.write_text(bad)
        code, _, err = await run_rotate(a, key_file)
        assert code != 0 and why in err, err
    await rotate(a, tmp_path, "44" * 32)
    key_file = tmp_path / "again"
    key_file.write_text("44" * 32)
    code, _, err = await run_rotate(a, key_file)
    assert code != 0 and "already in the set" in err, err
    assert len(await a.server.storage.db.page_token_keys()) == 2  # the refused rotations left nothing
