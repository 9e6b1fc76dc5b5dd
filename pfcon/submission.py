"""Reading a job submission (multipart/form-data) as a stream.

POST ``/api/v1/jobs/`` carries small form fields and, in zip mode, one large
``data_file`` part, the input zip (``reference/chris.md`` §3.2). The zip is
never held in memory: when ``jid`` came before it, the part is streamed
straight to pfioh chunk by chunk; otherwise it is spooled to a temporary file
on disk and pushed once the form has been read.

In in-network mode the form carries ``input_dirs`` (repeated) and
``output_dir`` instead: storage paths CUBE and the site share. Each mode
refuses the other's fields with a 400 that names the site's mode, before any
data moves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import ClientPayloadError
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from pfcon.coordinator import Coordinator, PushedInput, SubmitOutcome
from pfcon.errors import InvalidJob, PfconError
from pfcon.formdata import FormPart, FormReader
from pfcon.schema import (
    DATA_FILE_FIELD,
    INNETWORK_FIELDS,
    INPUT_DIRS_FIELD,
    LIST_FIELDS,
    OUTPUT_DIR_FIELD,
    InNetworkDirs,
    JobDescriptor,
)

log = logging.getLogger(__name__)

#: Size of the chunks read from the request and written to pfioh or disk (bytes).
CHUNK_SIZE = 1 << 20
#: Largest accepted value of one form field (bytes); fields are small.
MAX_FIELD_BYTES = 64 * 1024
#: Most form parts accepted in one submission.
MAX_PARTS = 10_000

#: Fields the form must carry (reference §3.2 marks the limits as required too).
REQUIRED_FIELDS = (
    "jid",
    "auid",
    "number_of_workers",
    "cpu_limit",
    "memory_limit",
    "gpu_limit",
    "image",
    "entrypoint",
    "type",
)
KNOWN_FIELDS = frozenset(JobDescriptor.model_fields)


def descriptor_from_fields(fields: dict[str, list[str]]) -> JobDescriptor:
    """Validate a complete form (field name → values in order) into a :class:`JobDescriptor`.

    Raises :class:`InvalidJob` (400) naming the offending or missing field.
    """
    data = _form_data(fields)
    for name in REQUIRED_FIELDS:
        if name not in data:
            raise InvalidJob(f"{name}: field required")
    try:
        return JobDescriptor.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(_describe(exc.errors()[0])) from exc


def check_partial_fields(fields: dict[str, list[str]]) -> None:
    """Validate the fields of a form read so far; absent fields are not an error.

    Raises :class:`InvalidJob` (400) naming the first offending field.
    """
    try:
        JobDescriptor.model_validate(_form_data(fields))
    except ValidationError as exc:
        errors = [e for e in exc.errors() if e["type"] != "missing"]
        if errors:
            raise InvalidJob(_describe(errors[0])) from exc


def dirs_from_fields(fields: dict[str, list[str]]) -> InNetworkDirs:
    """Take ``input_dirs`` and ``output_dir`` out of a complete form (in-network mode).

    ``fields`` is left with the job descriptor's fields only. Raises
    :class:`InvalidJob` (400) when ``output_dir`` is missing or repeated, or
    a path is not a plain relative storage path.
    """
    input_dirs = fields.pop(INPUT_DIRS_FIELD, [])
    output = fields.pop(OUTPUT_DIR_FIELD, [])
    if not output:
        raise InvalidJob(f"{OUTPUT_DIR_FIELD}: field required (this site is in-network)")
    if len(output) > 1:
        raise InvalidJob(f"{OUTPUT_DIR_FIELD}: given {len(output)} times, expected once")
    try:
        return InNetworkDirs(input_dirs=input_dirs, output_dir=output[0])
    except ValidationError as exc:
        raise InvalidJob(_describe(exc.errors()[0])) from exc


def _form_data(fields: dict[str, list[str]]) -> dict[str, Any]:
    """Fold repeated form fields into lists; a repeated single field is a 400."""
    unknown = sorted(set(fields) - KNOWN_FIELDS)
    if unknown:
        raise InvalidJob(f"{unknown[0]}: unknown form field")
    data: dict[str, Any] = {}
    for name, values in fields.items():
        if name in LIST_FIELDS:
            data[name] = values
        elif len(values) > 1:
            raise InvalidJob(f"{name}: given {len(values)} times, expected once")
        else:
            data[name] = values[0]
    return data


def _describe(error: ErrorDetails) -> str:
    """``"<field>: <pydantic message>"``."""
    where = ".".join(str(part) for part in error["loc"]) or "form"
    return f"{where}: {error['msg']}"


async def submit_multipart(
    reader: FormReader, coordinator: Coordinator, *, spool_dir: Path | None = None
) -> SubmitOutcome:
    """Read a submission form from ``reader``, push its data and schedule the job.

    Input pushed by this call is removed again if anything after the push
    fails (a bad field, pman's refusal, a dropped connection). Raises
    :class:`InvalidJob` (400) for a malformed form or one of the other mode,
    and whatever :meth:`Coordinator.push_input` and :meth:`Coordinator.schedule`
    raise. An in-network site reads the form with :func:`_submit_innetwork`.
    """
    if coordinator.innetwork:
        return await _submit_innetwork(reader, coordinator)
    fields: dict[str, list[str]] = {}
    pushed: PushedInput | None = None
    spool: Path | None = None
    seen_data = False
    nparts = 0
    try:
        while (part := await _next_part(reader)) is not None:
            nparts += 1
            if nparts > MAX_PARTS:
                raise InvalidJob(f"too many form parts (at most {MAX_PARTS})")
            name = _part_name(part)
            if name in INNETWORK_FIELDS:
                raise InvalidJob(
                    f"{name}: this site is not in-network (storage_env zipfile); "
                    f"send the input as a zip in {DATA_FILE_FIELD}"
                )
            if name != DATA_FILE_FIELD:
                fields.setdefault(name, []).append(await _read_field(part, name))
                continue
            if seen_data:
                raise InvalidJob(f"{DATA_FILE_FIELD}: given more than once")
            seen_data = True
            if "jid" in fields:
                # Refuse what is already known to be wrong before moving any data.
                check_partial_fields(fields)
                stream = _PartStream(part)
                try:
                    pushed = await coordinator.push_input(fields["jid"][0], stream)
                except PfconError:
                    stream.raise_for_error()
                    raise
                stream.raise_for_error()
                with _malformed_as_invalid():
                    await part.release()  # what pfioh left unread (an idempotent retry)
            else:
                spool = await _spool(part, spool_dir)
        job = descriptor_from_fields(fields)
        if pushed is None:
            if spool is None:
                raise InvalidJob(f"{DATA_FILE_FIELD}: field required (the input zip)")
            pushed = await coordinator.push_input(job.jid, _iter_file(spool))
        return await coordinator.schedule(job, pushed)
    except BaseException:
        if pushed is not None and pushed.created:
            await coordinator.discard_input(pushed.jid)
        raise
    finally:
        if spool is not None:
            await asyncio.to_thread(spool.unlink, True)


async def _submit_innetwork(reader: FormReader, coordinator: Coordinator) -> SubmitOutcome:
    """Read an in-network submission (fields only) and schedule the job.

    A ``data_file`` part is refused as soon as it arrives, unread. Raises
    :class:`InvalidJob` (400) and whatever :meth:`Coordinator.submit_innetwork` raises.
    """
    fields: dict[str, list[str]] = {}
    nparts = 0
    while (part := await _next_part(reader)) is not None:
        nparts += 1
        if nparts > MAX_PARTS:
            raise InvalidJob(f"too many form parts (at most {MAX_PARTS})")
        name = _part_name(part)
        if name == DATA_FILE_FIELD:
            raise InvalidJob(
                f"{DATA_FILE_FIELD}: this site is in-network (storage_env filesystem); "
                f"send {INPUT_DIRS_FIELD} and {OUTPUT_DIR_FIELD} (storage paths), not a zip"
            )
        fields.setdefault(name, []).append(await _read_field(part, name))
    dirs = dirs_from_fields(fields)
    job = descriptor_from_fields(fields)
    return await coordinator.submit_innetwork(job, dirs)


@contextmanager
def _malformed_as_invalid() -> Iterator[None]:
    """Report a malformed or truncated multipart body as :class:`InvalidJob` (400).

    :class:`FormReader` raises :class:`MalformedForm` (a 400 already) for a
    body that breaks the format; aiohttp raises connection or payload errors
    when the upload stops short.
    """
    try:
        yield
    except (ValueError, ConnectionError, ClientPayloadError, HttpProcessingError) as exc:
        raise InvalidJob(f"malformed or incomplete multipart body: {exc}") from exc


async def _next_part(reader: FormReader) -> FormPart | None:
    with _malformed_as_invalid():
        return await reader.next_part()


def _part_name(part: FormPart) -> str:
    """The form field a part carries; a nameless or nested-multipart part is a 400."""
    if part.is_multipart:
        raise InvalidJob("nested multipart bodies are not accepted")
    if not part.name:
        raise InvalidJob("a form part has no name")
    return part.name


async def _read_chunk(part: FormPart) -> bytes | memoryview:
    with _malformed_as_invalid():
        return await part.read_chunk()


async def _read_field(part: FormPart, name: str) -> str:
    """The text of a small form field; longer than :data:`MAX_FIELD_BYTES` is a 400."""
    buf = bytearray()
    while chunk := await _read_chunk(part):
        buf += chunk
        if len(buf) > MAX_FIELD_BYTES:
            raise InvalidJob(f"{name}: longer than {MAX_FIELD_BYTES} bytes")
    try:
        return buf.decode(part.charset(default="utf-8"))
    except (UnicodeDecodeError, LookupError) as exc:
        raise InvalidJob(f"{name}: not valid text") from exc


class _PartStream:
    """The body of a form part as an async iterable of chunks.

    Records a failure to read the request (a client that went away), so it
    can be told apart from pfioh's own failures once the push returns.
    """

    def __init__(self, part: FormPart) -> None:
        self._part = part
        self._error: BaseException | None = None

    async def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        try:
            while chunk := await self._part.read_chunk():
                yield chunk
        except Exception as exc:
            self._error = exc
            raise

    def raise_for_error(self) -> None:
        """Raise :class:`InvalidJob` if reading the upload failed."""
        if self._error is not None:
            raise InvalidJob(
                f"{DATA_FILE_FIELD}: upload interrupted: {self._error}"
            ) from self._error


async def _spool(part: FormPart, spool_dir: Path | None) -> Path:
    """Write a part to a new temporary file, chunk by chunk; return its path."""
    fd, name = await asyncio.to_thread(
        tempfile.mkstemp, prefix="pfcon-upload-", suffix=".zip", dir=spool_dir
    )
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await _read_chunk(part):
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        await asyncio.to_thread(path.unlink, True)
        raise
    return path


async def _iter_file(path: Path) -> AsyncGenerator[bytes, None]:
    """Read a spooled file back in chunks, off the event loop."""
    f: BinaryIO = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK_SIZE):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)
