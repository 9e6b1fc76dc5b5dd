"""pfcon's streaming multipart/form-data reader, against forms aiohttp writes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pfcon.formdata import MAX_HEADER_BYTES, FormReader, MalformedForm

BOUNDARY = "b0undary-7e3f"


class _Sink:
    """Collects what a MultipartWriter writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


async def form_bytes(fields: list[tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A form as aiohttp's client encodes it (what CUBE sends)."""
    writer = aiohttp.MultipartWriter("form-data", boundary=boundary)
    for name, value in fields:
        part = writer.append(value, {"Content-Type": "application/octet-stream"})
        part.set_content_disposition("form-data", name=name, filename=f"{name}.bin")
    sink = _Sink()
    await writer.write(sink)  # type: ignore[arg-type]
    return bytes(sink.data)


def reader_of(pieces: list[bytes]) -> Callable[[], Awaitable[bytes]]:
    it = iter(pieces)

    async def read() -> bytes:
        return next(it, b"")

    return read


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


async def read_form(reader: FormReader) -> list[tuple[str | None, bytes]]:
    out = []
    while (part := await reader.next_part()) is not None:
        body = bytearray()
        async for piece in part:
            body += piece
        out.append((part.name, bytes(body)))
    return out


# Values that look like the delimiter or parts of it, around chunk edges.
_tricky = st.sampled_from(
    [
        b"",
        b"\r\n",
        b"\r\n--",
        f"\r\n--{BOUNDARY[:-1]}".encode(),
        f"--{BOUNDARY}".encode(),
        f"\r\n-{BOUNDARY}".encode(),
        b"PK\x03\x04",
    ]
)
_values = st.lists(st.one_of(st.binary(max_size=300), _tricky), max_size=6).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(
    fields=st.lists(st.tuples(st.sampled_from(["jid", "image", "data_file"]), _values), max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_any_chunking_reads_every_part_back(
    fields: list[tuple[str, bytes]], cuts: list[int]
) -> None:
    # A sender picks a boundary that its data does not contain.
    assume(all(f"\r\n--{BOUNDARY}".encode() not in value for _, value in fields))

    async def round_trip() -> list[tuple[str | None, bytes]]:
        data = await form_bytes(fields)
        return await read_form(FormReader(reader_of(cut(data, cuts)), BOUNDARY))

    assert asyncio.run(round_trip()) == fields


async def test_preamble_and_epilogue_are_skipped_and_charset_read() -> None:
    body = (
        b"this is a preamble\r\n"
        b"--xyz\r\n"
        b'Content-Disposition: form-data; name="jid"\r\n'
        b"Content-Type: text/plain; charset=latin-1\r\n\r\n"
        b"caf\xe9\r\n"
        b"--xyz--\r\nthe epilogue"
    )
    reader = FormReader(reader_of([body]), "xyz")
    part = await reader.next_part()
    assert part is not None and part.name == "jid" and part.charset() == "latin-1"
    assert bytes(await part.read_chunk()) == b"caf\xe9"
    assert await reader.next_part() is None


async def test_parts_left_unread_are_skipped() -> None:
    data = await form_bytes([("a", b"x" * 5000), ("b", b"second")])
    reader = FormReader(reader_of(cut(data, list(range(0, len(data), 7)))), BOUNDARY)
    first = await reader.next_part()
    assert first is not None and first.name == "a"
    second = await reader.next_part()
    assert second is not None and second.name == "b"
    assert b"".join([bytes(p) async for p in second]) == b"second"


async def test_a_part_without_headers_has_no_name() -> None:
    reader = FormReader(reader_of([b"--xyz\r\n\r\nvalue\r\n--xyz--\r\n"]), "xyz")
    part = await reader.next_part()
    assert part is not None and part.name is None
    assert bytes(await part.read_chunk()) == b"value"


def test_boundary_comes_from_the_content_type() -> None:
    reader = FormReader.for_content_type(reader_of([]), 'multipart/form-data; boundary="a b"')
    assert reader.delimiter == b"\r\n--a b"
    with pytest.raises(MalformedForm, match="no boundary"):
        FormReader.for_content_type(reader_of([]), "multipart/form-data")
    with pytest.raises(MalformedForm, match="1 to 70"):
        FormReader(reader_of([]), "x" * 71)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"no boundary anywhere", "no boundary|ends inside"),
        (b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nvalue', "ends inside"),
        (b'--xyz\r\nContent-Disposition: form-data; name="a"', "ends inside"),
        (b"--xyz\r\n bad folded header\r\n\r\nv\r\n--xyz--", "bad part header"),
        (b"--xyz\r\nNoColonHere\r\n\r\nv\r\n--xyz--", "bad part header"),
        (b"--xyzGARBAGE\r\n\r\nv\r\n--xyz--", "after a boundary"),
        (
            b"--xyz\r\nContent-Disposition: form-data; name\r\n\r\nv\r\n--xyz--",
            "Content-Disposition",
        ),
    ],
)
async def test_malformed_bodies_are_refused(body: bytes, why: str) -> None:
    reader = FormReader(reader_of([body[:5], body[5:]]), "xyz")
    with pytest.raises(MalformedForm, match=why):
        await read_form(reader)


async def test_oversized_headers_are_refused() -> None:
    body = b"--xyz\r\nX-Long: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\nv\r\n--xyz--"
    reader = FormReader(reader_of(cut(body, list(range(0, len(body), 1000)))), "xyz")
    with pytest.raises(MalformedForm, match="headers exceed"):
        await read_form(reader)


async def test_body_data_is_handed_on_without_copies() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = await form_bytes([("data_file", payload)])
    head = data.index(payload)
    pieces = [data[:head], data[head : head + len(payload) // 2], data[head + len(payload) // 2 :]]
    reader = FormReader(reader_of(pieces), BOUNDARY)
    part = await reader.next_part()
    assert part is not None
    views = [p async for p in part]
    assert b"".join(bytes(v) for v in views) == payload
    # The big pieces are views of what arrived, not new buffers.
    assert any(isinstance(v, memoryview) and v.obj is pieces[1] for v in views)


class _ChunkedContent:
    """What ``StreamReader.readchunk`` gives for a chunked upload: pieces, and
    ``(b"", True)`` at some HTTP chunk ends; ``(b"", False)`` only at the end."""

    def __init__(self, pieces: list[tuple[bytes, bool]]) -> None:
        self._pieces = [*pieces, (b"", False)]

    async def readchunk(self) -> tuple[bytes, bool]:
        return self._pieces.pop(0)


async def test_an_empty_http_chunk_end_is_not_the_end_of_the_body() -> None:
    """The submission handler's reader: ``(b"", True)`` between pieces (which
    aiohttp returns at some chunk boundaries) must not end the body; this cut
    relayed uploads short now and then."""
    from pfcon.api import _pieces_of

    body = await form_bytes([("a", b"x" * 1000), ("data_file", b"y" * 5000)])
    cuts = [0, 7, 300, 1500, 4000, len(body)]
    pieces: list[tuple[bytes, bool]] = []
    for start, end in itertools.pairwise(cuts):
        pieces += [(body[start:end], True), (b"", True)]
    read = _pieces_of(_ChunkedContent(pieces))  # type: ignore[arg-type]
    reader = FormReader(read, BOUNDARY)
    got = {}
    while (part := await reader.next_part()) is not None:
        got[part.name] = b"".join([bytes(p) async for p in part])
    assert got == {"a": b"x" * 1000, "data_file": b"y" * 5000}
    assert await read() == b""
