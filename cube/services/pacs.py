"""PACS data: services, queries, series and files, and the bulk registration of files.

The DICOM bridge stores received files under ``SERVICES/PACS/<pacs>/...`` in
CUBE's storage and registers them in one request (ChRIS #546: one POST per
DICOM instance was the bottleneck), which inserts every file row at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import PacsFile, PacsSeries, PacsService, StoredFile, User, utcnow
from cube.errors import BadRequest, PermissionDenied
from cube.schema import PacsFileIn, PacsFilesIn
from cube.services import groups
from cube.services.files import PACS_GROUP, PACS_ROOT
from cube.storage import Storage, check_storage_path

#: Largest number of files one registration may carry.
MAX_FILES_PER_REGISTRATION = 100_000
#: Paths per ``IN (...)`` query: under SQLite's limit of bound variables.
CHUNK = 500


async def require_pacs_reader(session: AsyncSession, user: User) -> None:
    """Allow staff and members of ``pacs_users`` (ChRIS's rule).

    Raises:
        PermissionDenied: anyone else.
    """
    if not user.is_staff and not await groups.is_member(session, user, PACS_GROUP):
        raise PermissionDenied(f"PACS data is for members of the {PACS_GROUP!r} group")


async def pacs_service(session: AsyncSession, identifier: str) -> PacsService:
    """The PACS named ``identifier``, created on first registration (as ChRIS).

    Raises:
        BadRequest: an empty or overlong name, or one with a ``/``.
    """
    if not identifier or len(identifier) > 20 or "/" in identifier:
        raise BadRequest.field("pacs_name", "1 to 20 characters, no '/'")
    row = (
        await session.exec(select(PacsService).where(PacsService.identifier == identifier))
    ).first()
    if row is None:
        row = PacsService(identifier=identifier)
        session.add(row)
        await session.flush()
    return row


def _series_fields(f: PacsFileIn) -> dict[str, Any]:
    return f.model_dump(exclude={"path"})


async def register_files(
    session: AsyncSession, storage: Storage, owner: User, body: PacsFilesIn
) -> tuple[int, int]:
    """Register stored DICOM files of one PACS; returns (files, new series).

    Every path must lie under ``SERVICES/PACS/<pacs_name>/``, exist in storage
    and not be registered yet; nothing is registered unless all are valid.

    Raises:
        BadRequest: a bad, missing or already registered path, or too many files.
    """
    if len(body.files) > MAX_FILES_PER_REGISTRATION:
        raise BadRequest.field("files", f"at most {MAX_FILES_PER_REGISTRATION} per request")
    pacs = await pacs_service(session, body.pacs_name)
    prefix = f"{PACS_ROOT}/{pacs.identifier}/"
    paths: list[str] = []
    sizes: list[int] = []
    for f in body.files:
        path = check_storage_path(f.path, what="files")
        if not path.startswith(prefix):
            raise BadRequest.field("files", f"{path!r} is not under {prefix!r}")
        local = storage.local_path(path)
        if not local.is_file():
            raise BadRequest.field("files", f"{path!r} is not in storage")
        paths.append(path)
        sizes.append(local.stat().st_size)
    if len(set(paths)) != len(paths):
        raise BadRequest.field("files", "a path is listed twice")
    taken = await _registered(session, paths)
    if taken:
        raise BadRequest.field("files", f"already registered: {sorted(taken)[:5]}")

    series_ids: dict[str, int] = {}
    new_series = 0
    for f, path in zip(body.files, paths, strict=True):
        uid = f.SeriesInstanceUID
        if uid in series_ids:
            continue
        row = (
            await session.exec(
                select(PacsSeries).where(
                    PacsSeries.pacs_id == pacs.id, PacsSeries.SeriesInstanceUID == uid
                )
            )
        ).first()
        if row is None:
            assert pacs.id is not None
            row = PacsSeries(
                pacs_id=pacs.id, folder_path=path.rpartition("/")[0], **_series_fields(f)
            )
            session.add(row)
            await session.flush()
            new_series += 1
        assert row.id is not None
        series_ids[uid] = row.id

    now = utcnow()
    assert owner.id is not None
    if paths:
        conn = await session.connection()
        await conn.execute(
            insert(StoredFile),
            [
                {
                    "fname": p,
                    "fsize": n,
                    "owner_id": owner.id,
                    "public": False,
                    "creation_date": now,
                }
                for p, n in zip(paths, sizes, strict=True)
            ],
        )
        ids: dict[str, int] = {}
        for i in range(0, len(paths), CHUNK):
            rows = await session.exec(
                select(StoredFile.fname, StoredFile.id).where(
                    col(StoredFile.fname).in_(paths[i : i + CHUNK])
                )
            )
            ids.update((fname, ident) for fname, ident in rows.all() if ident is not None)
        await conn.execute(
            insert(PacsFile),
            [
                {"file_id": ids[p], "series_id": series_ids[f.SeriesInstanceUID]}
                for f, p in zip(body.files, paths, strict=True)
            ],
        )
    await session.flush()
    return len(paths), new_series


async def _registered(session: AsyncSession, paths: Sequence[str]) -> set[str]:
    """The paths among ``paths`` already registered (queried in chunks)."""
    found: set[str] = set()
    for i in range(0, len(paths), CHUNK):
        chunk = paths[i : i + CHUNK]
        rows = await session.exec(select(StoredFile.fname).where(col(StoredFile.fname).in_(chunk)))
        found.update(rows.all())
    return found
