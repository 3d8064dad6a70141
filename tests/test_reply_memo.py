"""ReplyMemo (servicers/memo.py): a kept reply is reused only for the very result it was built from,
and the memo stays within its bounds."""

from __future__ import annotations

import gc

from dsa110.contimg.server.servicers.memo import ReplyMemo


class Result:
    """A repository result; equal contents, distinct objects."""

    def __init__(self, value: str):
        self.value = value


async def ask(memo: ReplyMemo, name: str, result: Result, built: list[str]) -> bytes:
    key = ("List", name.encode())

    def plan() -> str:
        return name.upper()

    async def fetch(planned: str) -> Result:
        assert planned == name.upper()
        return result

    async def build(planned: str, found: Result) -> bytes:
        built.append(found.value)
        return (planned + ":" + found.value).encode()

    return await memo.reply(key, plan, fetch, build, len)


async def test_reused_for_the_same_result_object_only() -> None:
    memo = ReplyMemo()
    built: list[str] = []
    first = Result("a")
    assert await ask(memo, "k", first, built) == b"K:a"
    assert await ask(memo, "k", first, built) == b"K:a"
    assert built == ["a"] and memo.hits == 1
    # Equal contents but another object (the repository read again): built again, never the old reply.
    assert await ask(memo, "k", Result("a"), built) == b"K:a"
    assert await ask(memo, "k", Result("b"), built) == b"K:b"
    assert built == ["a", "a", "b"] and memo.hits == 1 and memo.misses == 3


async def test_parsing_is_skipped_on_a_repeat() -> None:
    memo = ReplyMemo()
    parsed: list[int] = []

    def plan() -> int:
        parsed.append(1)
        return 7

    async def fetch(planned: int) -> Result:
        return result

    async def build(planned: int, found: Result) -> bytes:
        return b"x" * planned

    result = Result("r")
    for _ in range(3):
        assert await memo.reply(("List", b"k"), plan, fetch, build, len) == b"xxxxxxx"
    assert parsed == [1]
    result = Result("s")  # a new result: rebuilt from the kept plan, still not parsed again
    assert await memo.reply(("List", b"k"), plan, fetch, build, len) == b"xxxxxxx"
    assert parsed == [1] and memo.misses == 2


async def test_failed_plans_keep_nothing() -> None:
    memo = ReplyMemo()

    def plan() -> int:
        raise ValueError("bad request")

    async def fetch(planned: int) -> Result:
        raise AssertionError("not reached")

    async def build(planned: int, found: Result) -> bytes:
        raise AssertionError("not reached")

    for _ in range(2):
        try:
            await memo.reply(("List", b"bad"), plan, fetch, build, len)
        except ValueError:
            pass
        else:
            raise AssertionError("the failure was swallowed")
    assert len(memo) == 0


async def test_bounded_by_entries_and_bytes() -> None:
    memo = ReplyMemo(max_entries=3, max_bytes=100, max_entry_bytes=60)
    built: list[str] = []
    results = {k: Result(k * 20) for k in "abcdef"}
    for k in "abcd":
        await ask(memo, k, results[k], built)  # 22 reply bytes + 1 key byte: the entry bound (3) evicts "a"
    assert [k for _, k in memo._entries] == [b"b", b"c", b"d"] and memo.size == 69
    await ask(memo, "b", results["b"], built)  # a hit makes "b" the most recent
    await ask(memo, "e", Result("e" * 50), built)  # 53 bytes: 122 > 100, the oldest ("c") goes
    assert [k for _, k in memo._entries] == [b"d", b"b", b"e"] and memo.size == 99
    await ask(memo, "f", Result("f" * 70), built)  # larger than one entry may be: answered, not kept
    assert [k for _, k in memo._entries] == [b"d", b"b", b"e"] and memo.size == 99
    assert memo.size == sum(e.size for e in memo._entries.values())


async def test_large_requests_are_answered_but_not_kept() -> None:
    """Unknown fields can pad a request up to the message size limit: such keys are not held."""
    memo = ReplyMemo(max_key_bytes=64)
    result = Result("r")

    async def fetch(planned: int) -> Result:
        return result

    async def build(planned: int, found: Result) -> bytes:
        return b"reply"

    assert await memo.reply(("List", b"x" * 65), lambda: 1, fetch, build, len) == b"reply"
    assert len(memo) == 0
    assert await memo.reply(("List", b"x" * 64), lambda: 1, fetch, build, len) == b"reply"
    assert len(memo) == 1 and memo.size == len(b"reply") + 64


async def test_kept_replies_do_not_keep_results_alive() -> None:
    memo = ReplyMemo()
    built: list[str] = []
    result = Result("a")
    await ask(memo, "k", result, built)
    [entry] = memo._entries.values()
    assert entry.result() is result
    del result
    gc.collect()
    assert entry.result() is None  # a dead reference matches no later object
    await ask(memo, "k", Result("a"), built)
    assert built == ["a", "a"] and memo.hits == 0
