"""In-network compute resources: sites that share CUBE's storage (``storage_env`` filesystem).

A pfcon started with ``PFCON_INNETWORK=true`` and ``PFCON_STORAGE_ENV=filesystem``
sees CUBE's storage root as its storebase (``reference/chris.md`` §1.7, §1.8,
§3.4). For such a site nothing is zipped or copied:

* **Mode.** The site says which mode it uses: when a compute resource is
  registered, CUBE reads pfcon's server info and copies ``pfcon_innetwork``
  into ``compute_innetwork`` (:func:`probe_site`); a site that is in-network
  over other storage (``swift``, ``s3``, ``fslink``) is refused, since CUBE's
  storage is a POSIX directory. A site unreachable then is registered in zip
  mode; the scheduler confirms the mode with the site before its first
  submission there in each process (:class:`SiteModes`) and corrects it.
* **Submission.** CUBE sends storage paths instead of a zip
  (:func:`job_dirs`): the values of the path parameters and, for a ds plugin,
  the previous instance's output dir as ``input_dirs``, and the instance's
  ``output_path`` as ``output_dir``. The plugin writes straight into CUBE's
  storage.
* **Registration.** CUBE asks for the output listing, checks that it is for
  the instance's output dir (ChRIS CODE16), and registers the listed files
  from its own storage (:func:`stored_outputs`): sizes from ``lstat``,
  anything not a regular file inside the output dir skipped, files the site
  lists but CUBE's storage lacks refused (CODE14: the site's storebase is not
  CUBE's storage).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

from chris_sdk.descriptor import ParameterType, PluginType
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.engine import SessionMaker
from cube.db.models import ComputeResource, ParameterValue, PluginInstance, PluginParameter
from cube.errors import BadRequest, ComputeError, OutputMismatch
from cube.schema import ErrorCode
from cube.services import topology
from cube.storage import Storage, check_storage_path
from pfcon.client import PfconClient
from pfcon.errors import AuthError, PfconError, PfconUnavailable
from pfcon.schema import InNetworkDirs, OutputListing, PfconServerInfo, StorageEnv

log = logging.getLogger(__name__)

#: How long registering a compute resource waits for its pfcon (seconds).
PROBE_TIMEOUT_SECONDS = 10.0

#: The only in-network storage CUBE's (POSIX directory) storage can share.
SHARED_STORAGE_ENV = StorageEnv.FILESYSTEM

#: ChRIS's link files; plugin output may not contain them.
LINK_FILE_SUFFIX = ".chrislink"


def site_mode(info: PfconServerInfo) -> bool:
    """Whether a site is in-network, from its server info.

    Raises:
        ComputeError: the site is in-network over storage CUBE does not use.
    """
    if info.pfcon_innetwork and info.storage_env != SHARED_STORAGE_ENV:
        raise ComputeError(
            f"the site is in-network with storage_env {info.storage_env!r}; CUBE's storage "
            f"is a POSIX directory, which only an in-network site with storage_env "
            f"{SHARED_STORAGE_ENV.value!r} can share"
        )
    return info.pfcon_innetwork


async def probe_site(
    compute_url: str,
    compute_user: str,
    compute_password: str,
    compute_auth_url: str,
    *,
    timeout: float = PROBE_TIMEOUT_SECONDS,
) -> bool:
    """A site's mode when its compute resource is registered (True: in-network).

    A site that cannot be reached now is taken to be in zip mode, with a
    warning; the scheduler confirms the mode before submitting there
    (:class:`SiteModes`).

    Raises:
        BadRequest: pfcon refused the credentials, is in-network over storage
            CUBE cannot share, or the URL answers but is not a pfcon.
    """
    client = PfconClient(
        compute_url,
        username=compute_user,
        password=compute_password,
        auth_url=compute_auth_url,
        timeout=timeout,
    )
    async with client:
        try:
            return site_mode(await client.server_info())
        except PfconUnavailable as exc:
            log.warning(
                "compute site %s unreachable (%s): registered in zip mode until the "
                "scheduler can ask it",
                compute_url,
                exc,
            )
            return False
        except AuthError as exc:
            raise BadRequest.field(
                "compute_password", f"the compute site refused the credentials: {exc}"
            ) from exc
        except ComputeError as exc:
            raise BadRequest.field("compute_url", str(exc)) from exc
        except PfconError as exc:
            raise BadRequest.field(
                "compute_url", f"no pfcon server info at this URL: {exc}"
            ) from exc


class SiteModes:
    """Each compute resource's mode, confirmed with its site once per process.

    Covers a site that was unreachable when it was registered, or that was
    switched between zip and in-network mode since: the row is corrected
    (with a warning) before the first submission there. A submission in the
    wrong mode is refused by pfcon in any case (400), so a change after that
    fails loudly rather than moving data the wrong way.
    """

    def __init__(self, sessions: SessionMaker) -> None:
        self._sessions = sessions
        self._confirmed: set[tuple[int, str]] = set()

    async def innetwork(self, resource: ComputeResource, client: PfconClient) -> bool:
        """Whether ``resource`` is in-network; ``resource`` is updated in place.

        Raises:
            PfconError: the site could not be asked (PfconUnavailable: retry).
            ComputeError: the site is in-network over storage CUBE cannot share.
        """
        assert resource.id is not None
        key = (resource.id, resource.compute_url)
        if key in self._confirmed:
            return resource.compute_innetwork
        mode = site_mode(await client.server_info())
        if mode != resource.compute_innetwork:
            log.warning(
                "compute resource %s is %s at its site; recorded as %s until now",
                resource.name,
                "in-network" if mode else "in zip mode",
                "in-network" if resource.compute_innetwork else "in zip mode",
            )
            async with self._sessions() as s:
                await s.exec(
                    update(ComputeResource)  # type: ignore[call-overload]
                    .where(col(ComputeResource.id) == resource.id)
                    .values(compute_innetwork=mode)
                )
                await s.commit()
            resource.compute_innetwork = mode
        self._confirmed.add(key)
        return mode


async def job_dirs(session: AsyncSession, inst: PluginInstance) -> InNetworkDirs:
    """The storage paths of an in-network job (ChRIS's ``input_dirs``, ``output_dir``).

    ``input_dirs``: each comma-separated value of the path parameters, in
    parameter order, then the previous instance's output dir (ds plugins);
    duplicates dropped. The caller has checked the owner's access to them
    (as for a zip). ``output_dir``: the instance's ``output_path``.
    """
    assert inst.id is not None
    path_types = [ParameterType.PATH.value, ParameterType.UNEXTPATH.value]
    values = await session.exec(
        select(ParameterValue.value)
        .join(PluginParameter, col(PluginParameter.id) == col(ParameterValue.plugin_param_id))
        .where(ParameterValue.plugin_inst_id == inst.id)
        .where(col(PluginParameter.type).in_(path_types))
        .order_by(col(PluginParameter.id))
    )
    inputs: list[str] = []
    for value in values.all():
        inputs += [check_storage_path(p) for p in str(value).split(",") if p.strip()]
    if inst.previous_id is not None and await topology.plugin_type(session, inst) is PluginType.DS:
        # a ts job gets no input dir: CUBE joins its parents' outputs itself
        previous = await session.get(PluginInstance, inst.previous_id)
        assert previous is not None
        inputs.append(previous.output_path)
    return InNetworkDirs(input_dirs=list(dict.fromkeys(inputs)), output_dir=inst.output_path)


@dataclass(frozen=True)
class _Skipped:
    """A listed path not registered, and why (for the log)."""

    rel: str
    why: str


def stored_outputs(
    storage: Storage, output_path: str, listing: OutputListing
) -> list[tuple[str, int]]:
    """The files of an in-network listing as ``(fname, size)``, read from CUBE's storage.

    Blocking (file system calls). Names with commas are renamed without
    them, as zip mode stores them (commas separate paths in path
    parameters); a clash with an existing name leaves that file unregistered.
    Entries that are not regular files, resolve outside the output dir, or
    are ``.chrislink`` files are skipped with a warning: the site removes
    them, so finding one means the site did not, or something changed
    CUBE's storage since.

    Raises:
        OutputMismatch: the listing is for another dir (CODE16), names an
            unsafe path, or lists files CUBE's storage does not have (CODE14).
    """
    if listing.job_output_path != output_path:
        raise OutputMismatch(
            f"the site listed {listing.job_output_path!r}, not the output dir {output_path!r}",
            error_code=ErrorCode.OUTPUT_PATH_MISMATCH,
        )
    top = os.path.realpath(storage.local_path(output_path))
    files: list[tuple[str, int]] = []
    missing: list[str] = []
    skipped: list[_Skipped] = []
    for rel in listing.rel_file_paths:
        try:
            safe = check_storage_path(rel)
        except BadRequest as exc:
            raise OutputMismatch(
                f"the site listed an unsafe output path {rel!r}",
                error_code=ErrorCode.OUTPUT_PATH_MISMATCH,
            ) from exc
        if safe != rel:
            raise OutputMismatch(
                f"the site listed an unsafe output path {rel!r}",
                error_code=ErrorCode.OUTPUT_PATH_MISMATCH,
            )
        fname = f"{output_path}/{rel}"
        path = storage.local_path(fname)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            missing.append(rel)
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append(_Skipped(rel, "not a regular file"))
            continue
        if rel.endswith(LINK_FILE_SUFFIX):
            # the site removes them (pfcon PR #175); a site that did not is not trusted
            skipped.append(_Skipped(rel, "a ChRIS link file, which plugins may not produce"))
            continue
        if not os.path.realpath(path).startswith(top + os.sep):
            skipped.append(_Skipped(rel, "resolves outside the output dir"))
            continue
        if "," in rel:
            renamed, why = _without_commas(storage, output_path, rel)
            if renamed is None:
                skipped.append(_Skipped(rel, why))
                continue
            fname = f"{output_path}/{renamed}"
        files.append((fname, st.st_size))
    if missing:
        raise OutputMismatch(
            f"{len(missing)} listed output file(s) are not in CUBE's storage (first: "
            f"{missing[0]!r}); is the site's storebase CUBE's storage root?",
            error_code=ErrorCode.OUTPUT_MISSING,
        )
    for item in skipped:
        log.warning("output %s/%s not registered: %s", output_path, item.rel, item.why)
    return files


def _without_commas(storage: Storage, output_path: str, rel: str) -> tuple[str | None, str]:
    """Rename an output file to its name without commas.

    Returns the new relative name, or None and why it could not be renamed.
    """
    try:
        renamed = check_storage_path(rel.replace(",", ""))
    except BadRequest:
        return None, "its name without commas is empty"
    source = storage.local_path(f"{output_path}/{rel}")
    target = storage.local_path(f"{output_path}/{renamed}")
    if os.path.lexists(target):
        return None, f"its name without commas, {renamed!r}, is taken"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
    except OSError as exc:
        return None, f"cannot rename it without commas: {exc}"
    return renamed, ""
