"""In-network mode (``storage_env`` ``filesystem``): job data stays where CUBE keeps it.

With ``PFCON_INNETWORK=true`` and ``PFCON_STORAGE_ENV=filesystem``, CUBE, pfcon
and pman see one POSIX tree: CUBE at its storage root, pfcon at
``PFCON_STOREBASE``, pman at ``PMAN_STOREBASE``. CUBE names a job's input dirs
and output dir as storage paths (``reference/chris.md`` §1.7, §3.2) and no
data is copied:

* one input dir is given to pman as it is: the plugin reads it in place
  (read-only on the docker, swarm and kubernetes backends, which mount
  ``incoming`` read-only; the local backend runs plugins as host processes
  and cannot protect it);
* several input dirs (an fs plugin with several paths, a ds plugin with path
  parameters), or one that contains the output dir, are merged into pfcon's
  scratch dir ``key-<jid>/incoming`` with hard links: no data is copied, and
  a file is copied only where a link is impossible (another file system,
  ``fs.protected_hardlinks``), which a log line reports;
* the output dir is given to pman as it is, created if missing.

pfcon's only own data is ``key-<jid>/``: its record of the job
(``job.json``) and the hard-link dir. That is all a DELETE removes; the shared
input and output dirs belong to CUBE and are never deleted.

Safety rules (the paths come from CUBE, the plugin is untrusted):

* A storage path is relative, without ``..`` (:func:`pfcon.schema.check_storage_path`).
  After resolving symbolic links it must be a directory strictly inside the
  storebase and outside pfcon's ``key-*`` scratch dirs.
* No input dir may lie inside the output dir (the plugin could change it
  through its writable output).
* The output listing removes, rather than lists, what a plugin could use to
  make CUBE expose files it never wrote: symbolic links, devices, FIFOs,
  sockets, and ``.chrislink`` files (ChRIS's link files, refused since pfcon
  PR #175). A listing that cannot remove one fails.

Every function here blocks on the file system; :class:`pfcon.coordinator.Coordinator`
calls them in a worker thread. ``OSError`` is translated here, at the edge,
into :class:`pfcon.errors.StorageError` (or :class:`pfcon.errors.InvalidJob`
when the caller's path is at fault).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pfcon.errors import InvalidJob, JobConflict, JobNotFound, StorageError
from pfcon.schema import InNetworkDirs, OutputListing

log = logging.getLogger(__name__)

#: pfcon's scratch dirs are ``<storebase>/key-<jid>/`` (the ChRIS layout).
SCRATCH_PREFIX = "key-"
#: pfcon's record of a job, inside its scratch dir.
RECORD_FILE = "job.json"
#: The hard-link input dir, inside the scratch dir.
INCOMING = "incoming"
#: ChRIS's link files; a plugin must not produce them (pfcon PR #175).
LINK_FILE_SUFFIX = ".chrislink"

#: Why ``link()`` fails when a copy would work: another file system, link
#: protection or a file system without hard links, too many links to one inode.
_NO_LINK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
)


class JobRecord(BaseModel):
    """pfcon's record of an in-network job (``key-<jid>/job.json``).

    ``input_dirs`` and ``output_dir`` are as CUBE gave them; ``pman_input_dir``
    and ``pman_output_dir`` are what pman was given (symlinks resolved),
    relative to the storebase. ``linked``: the input is pfcon's hard-link dir.
    """

    jid: str
    input_dirs: list[str]
    output_dir: str
    pman_input_dir: str
    pman_output_dir: str
    linked: bool
    nfiles: int
    timestamp: str


@dataclass(frozen=True)
class Prepared:
    """A job's dirs, ready for pman; ``created`` is False for a resubmission."""

    record: JobRecord
    created: bool


@dataclass
class _LinkReport:
    """What merging input dirs did: files placed, of which copied, and why not linked."""

    nfiles: int = 0
    copied: int = 0
    clashes: int = 0
    skipped: int = 0
    reason: str = ""


def _within(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or below it (both relative, normalised)."""
    return path == folder or path.startswith(folder + "/")


class SharedStorage:
    """The storage tree pfcon shares with CUBE and pman, rooted at ``root``.

    Raises :class:`StorageError` at construction if ``root`` is not a directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise StorageError(f"the shared storage {str(root)!r} is not a directory")

    def scratch(self, jid: str) -> Path:
        """pfcon's own dir for job ``jid`` (a valid job id: one path component)."""
        return self.root / f"{SCRATCH_PREFIX}{jid}"

    # -- submission -----------------------------------------------------------

    def prepare(self, jid: str, dirs: InNetworkDirs) -> Prepared:
        """Check the job's dirs and make them ready for pman.

        Creates the output dir if missing and, when needed, the hard-link
        input dir. If ``key-<jid>`` exists already, the job was submitted
        before: its record is returned (``created`` False) when it names the
        same dirs. Raises :class:`InvalidJob` (400) for a path that is unsafe,
        missing or not a directory, :class:`JobConflict` (409) for a
        resubmission with other dirs or one still being prepared,
        :class:`StorageError` when the storage fails. Nothing is left in
        ``key-<jid>`` when this raises for a new job.
        """
        # every check that needs no change comes first: a refused job leaves nothing
        inputs = [self._input_dir(given) for given in dirs.input_dirs]
        output = self._output_dir(dirs.output_dir)
        for given, real in zip(dirs.input_dirs, inputs, strict=True):
            if _within(real, output):
                raise InvalidJob(
                    f"input_dirs: {given!r} lies inside output_dir {dirs.output_dir!r}; "
                    "the plugin could change its own input"
                )
        scratch = self.scratch(jid)
        try:
            scratch.mkdir()  # exclusive: the first submission of a jid owns its scratch
        except FileExistsError:
            return Prepared(self._resubmitted(jid, dirs), created=False)
        except OSError as exc:
            raise StorageError(f"cannot create pfcon's dir for job {jid!r}: {exc}") from exc
        try:
            record = self._fill(jid, scratch, dirs, inputs, output)
        except BaseException:
            self._remove_scratch(scratch)
            raise
        return Prepared(record, created=True)

    def _fill(
        self, jid: str, scratch: Path, dirs: InNetworkDirs, inputs: list[str], output: str
    ) -> JobRecord:
        """Create the output dir and the input pman gets; write the record."""
        try:
            (self.root / output).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create output_dir {dirs.output_dir!r}: {exc}") from exc
        # re-check what was just created: a symlink swapped in meanwhile is refused
        if self._input_dir(output, what="output_dir") != output:
            raise InvalidJob(f"output_dir: {dirs.output_dir!r} changed while it was created")
        # An input that contains the output dir would show the plugin its own
        # output growing under its input: it gets a snapshot without it.
        contains_output = any(_within(output, real) for real in inputs)
        linked = len(inputs) != 1 or contains_output
        if not linked:
            pman_input = inputs[0]
            nfiles = _count_files(self.root / pman_input)
        else:
            incoming = scratch / INCOMING
            exclude = self.root / output if contains_output else None
            report = _merge_dirs([self.root / real for real in inputs], incoming, exclude)
            pman_input = incoming.relative_to(self.root).as_posix()
            nfiles = report.nfiles
            _log_merge(jid, len(inputs), report)
        record = JobRecord(
            jid=jid,
            input_dirs=dirs.input_dirs,
            output_dir=dirs.output_dir,
            pman_input_dir=pman_input,
            pman_output_dir=output,
            linked=linked,
            nfiles=nfiles,
            timestamp=datetime.now(UTC).isoformat(),
        )
        _write_atomic(scratch / RECORD_FILE, record.model_dump_json().encode())
        return record

    def _resubmitted(self, jid: str, dirs: InNetworkDirs) -> JobRecord:
        """The record of a job submitted before, if it names the same dirs."""
        try:
            record = self.record(jid)
        except JobNotFound as exc:
            raise JobConflict(
                f"job {jid!r} is being submitted, or a submission failed midway; "
                "DELETE the job to start over"
            ) from exc
        if record.input_dirs != dirs.input_dirs or record.output_dir != dirs.output_dir:
            raise JobConflict(f"job {jid!r} already exists with other input or output dirs")
        return record

    def record(self, jid: str) -> JobRecord:
        """pfcon's record of job ``jid``.

        Raises :class:`JobNotFound` when there is none, :class:`StorageError`
        when it cannot be read.
        """
        path = self.scratch(jid) / RECORD_FILE
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise JobNotFound(f"no in-network job {jid!r} at this site") from exc
        except OSError as exc:
            raise StorageError(f"cannot read the record of job {jid!r}: {exc}") from exc
        try:
            return JobRecord.model_validate_json(data)
        except ValidationError as exc:
            raise StorageError(f"the record of job {jid!r} is corrupt") from exc

    # -- paths ----------------------------------------------------------------

    def _relative(self, real: Path, what: str, given: str) -> str:
        """``real`` (absolute, symlinks resolved) relative to the root, if safe."""
        try:
            rel = real.relative_to(self.root)
        except ValueError:
            raise InvalidJob(f"{what}: {given!r} leads outside the shared storage") from None
        if not rel.parts:
            raise InvalidJob(f"{what}: {given!r} is the storage root itself")
        if rel.parts[0].startswith(SCRATCH_PREFIX) or given.startswith(SCRATCH_PREFIX):
            raise InvalidJob(
                f"{what}: {given!r} is in pfcon's job scratch space ({SCRATCH_PREFIX}*)"
            )
        return rel.as_posix()

    def _input_dir(self, given: str, *, what: str = "input_dirs") -> str:
        """An existing directory ``given`` as a resolved path relative to the root."""
        real = Path(os.path.realpath(self.root / given))
        rel = self._relative(real, what, given)
        try:
            mode = os.stat(real).st_mode
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise InvalidJob(f"{what}: {given!r} does not exist in the shared storage") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidJob(f"{what}: {given!r} is a loop of symbolic links") from exc
            raise StorageError(f"{what}: cannot read {given!r}: {exc}") from exc
        if not stat.S_ISDIR(mode):
            raise InvalidJob(f"{what}: {given!r} is not a directory")
        return rel

    def _output_dir(self, given: str) -> str:
        """The output dir ``given``, resolved, relative to the root; it need not exist yet.

        Its deepest existing part is resolved and must be a directory in the
        storage; the missing rest is appended as named.
        """
        target = self.root / given
        missing: list[str] = []
        existing = target
        while not os.path.lexists(existing):
            missing.append(existing.name)
            existing = existing.parent
        if not missing:
            return self._input_dir(given, what="output_dir")
        real = Path(os.path.realpath(existing))
        if real != self.root:
            self._relative(real, "output_dir", given)
        if not real.is_dir():
            raise InvalidJob(f"output_dir: {given!r} runs through something that is not a folder")
        return self._relative(real.joinpath(*reversed(missing)), "output_dir", given)

    # -- output ---------------------------------------------------------------

    def list_output(self, jid: str, job_output_path: str) -> OutputListing:
        """The regular files of the job's output dir, after removing unsafe entries.

        Symbolic links, devices, FIFOs, sockets and ``.chrislink`` files are
        deleted (each logged) and not listed; names that are not valid UTF-8
        are left out (CUBE could not name them). Raises :class:`JobNotFound`,
        :class:`InvalidJob` (400) when ``job_output_path`` is not the job's
        output dir, :class:`StorageError` when the dir cannot be read or an
        unsafe entry cannot be removed.
        """
        record = self.record(jid)
        if job_output_path != record.output_dir:
            raise InvalidJob(
                f"job_output_path {job_output_path!r} is not the output dir of job {jid!r}"
            )
        top = self.root / record.pman_output_dir
        try:
            mode = os.lstat(top).st_mode
        except FileNotFoundError:
            return OutputListing(job_output_path=job_output_path, rel_file_paths=[])
        except OSError as exc:
            raise StorageError(f"cannot read the output of job {jid!r}: {exc}") from exc
        if stat.S_ISLNK(mode):
            # the plugin replaced its output dir by a link (possible on the local backend)
            _remove_unsafe(jid, top, "symbolic link (in place of the output dir)")
            return OutputListing(job_output_path=job_output_path, rel_file_paths=[])
        if not stat.S_ISDIR(mode) or os.path.realpath(top) != str(top):
            raise StorageError(f"the output dir of job {jid!r} is no longer a plain folder")
        try:
            files = _walk_output(jid, top)
        except OSError as exc:
            raise StorageError(f"cannot list the output of job {jid!r}: {exc}") from exc
        return OutputListing(job_output_path=job_output_path, rel_file_paths=sorted(files))

    # -- deletion -------------------------------------------------------------

    def discard(self, jid: str) -> None:
        """Remove pfcon's ``key-<jid>`` dir; absent is fine. The shared dirs are untouched.

        The hard-link input dir holds links, not the data: removing them
        leaves CUBE's files as they are. Raises :class:`StorageError`.
        """
        scratch = self.scratch(jid)
        try:
            if scratch.is_symlink():
                scratch.unlink()  # never follow a link out of the scratch space
            else:
                # rmtree does not follow symlinks inside the tree (fd-based on Linux)
                shutil.rmtree(scratch)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove pfcon's dir of job {jid!r}: {exc}") from exc

    def _remove_scratch(self, scratch: Path) -> None:
        """Best-effort removal of a scratch dir whose job was refused."""
        try:
            shutil.rmtree(scratch)
        except OSError as exc:
            log.warning("could not remove %s after a refused submission: %s", scratch, exc)


def _count_files(top: Path) -> int:
    """Regular files under ``top`` (symlinks not followed). Raises StorageError."""
    count = 0
    stack = [top]
    try:
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        count += 1
    except OSError as exc:
        raise StorageError(f"cannot read input dir {str(top)!r}: {exc}") from exc
    return count


def _merge_dirs(sources: list[Path], dest: Path, exclude: Path | None) -> _LinkReport:
    """Merge the trees ``sources`` into a new ``dest`` with hard links.

    The first source's file wins a name clash (as in zip mode); symbolic links
    and special files are not taken; ``exclude`` (a dir) is left out. A file
    that cannot be linked is copied. Raises StorageError.
    """
    report = _LinkReport()
    try:
        dest.mkdir()
        for source in sources:
            stack = [(source, dest)]
            while stack:
                src_dir, dst_dir = stack.pop()
                with os.scandir(src_dir) as it:
                    entries = sorted(it, key=lambda e: e.name)
                for entry in entries:
                    src = Path(entry.path)
                    dst = dst_dir / entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if exclude is not None and src == exclude:
                            continue
                        if os.path.lexists(dst) and not dst.is_dir():
                            report.clashes += 1
                            continue
                        dst.mkdir(exist_ok=True)
                        stack.append((src, dst))
                    elif not entry.is_file(follow_symlinks=False):
                        report.skipped += 1  # links and special files are not input
                    elif os.path.lexists(dst):
                        report.clashes += 1
                    else:
                        _place(src, dst, report)
    except OSError as exc:
        raise StorageError(f"cannot build the merged input dir: {exc}") from exc
    return report


def _place(src: Path, dst: Path, report: _LinkReport) -> None:
    """Hard-link ``src`` at ``dst``; copy it when a link is impossible."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
        shutil.copy2(src, dst, follow_symlinks=False)
        report.copied += 1
        report.reason = report.reason or f"{exc.strerror} ({errno.errorcode.get(exc.errno or 0)})"
    report.nfiles += 1


def _log_merge(jid: str, ndirs: int, report: _LinkReport) -> None:
    """Say how the merged input dir was built, loudly when data was copied."""
    if report.copied:
        log.warning(
            "job %s: %d input dirs merged; %d of %d files COPIED because hard links are "
            "impossible (%s)",
            jid,
            ndirs,
            report.copied,
            report.nfiles,
            report.reason,
        )
    else:
        log.info(
            "job %s: %d input dirs merged with %d hard links (no data copied)",
            jid,
            ndirs,
            report.nfiles,
        )
    if report.clashes or report.skipped:
        log.info(
            "job %s: %d name clashes (first input dir wins), %d links or special files left out",
            jid,
            report.clashes,
            report.skipped,
        )


def _walk_output(jid: str, top: Path) -> list[str]:
    """Relative paths of the regular files under ``top``; unsafe entries removed."""
    files: list[str] = []
    stack = [("", top)]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as it:
            entries = list(it)
        for entry in entries:
            rel = prefix + entry.name
            path = Path(entry.path)
            if entry.is_symlink():
                _remove_unsafe(jid, path, "symbolic link")
            elif entry.is_dir(follow_symlinks=False):
                stack.append((rel + "/", path))
            elif not entry.is_file(follow_symlinks=False):
                _remove_unsafe(jid, path, _kind(entry.stat(follow_symlinks=False).st_mode))
            elif entry.name.endswith(LINK_FILE_SUFFIX):
                _remove_unsafe(jid, path, "ChRIS link file")
            elif not _is_utf8(rel):
                log.warning("job %s: output %r is not valid UTF-8; not listed", jid, rel)
            else:
                files.append(rel)
    return files


def _remove_unsafe(jid: str, path: Path, kind: str) -> None:
    """Delete an entry a plugin must not leave in CUBE's storage. Raises StorageError."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(
            f"job {jid!r} left a {kind} at {str(path)!r} that could not be removed: {exc}; "
            "its output is not listed"
        ) from exc
    log.warning("job %s: removed a %s from its output: %s", jid, kind, path)


def _kind(mode: int) -> str:
    """A file type in words, for log lines."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _is_utf8(name: str) -> bool:
    """False for names with undecodable bytes (``os`` maps them to surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename. Raises StorageError."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {str(path)!r}: {exc}") from exc
