"""Where a model registry's files live: a local folder, or object storage through fsspec.

A registry root is a plain path (or ``file://`` URL), or the URL of any filesystem fsspec
knows: ``s3://bucket/prefix`` (package ``s3fs``), ``gs://bucket/prefix`` (``gcsfs``),
``az://``... Both kinds sit behind one small interface, :class:`RegistryStore`, whose keys are
``/``-separated paths relative to the root (``<name>/CHAMPION``, ``<name>/<version>/...``):

- :class:`LocalStore`: exactly what the registry always did on a shared volume: a publish is
  staged next to its final place, fsynced and renamed into place; a pointer is replaced by a
  temp file, fsync and ``os.replace``; champion changes are serialised by ``flock``;
- :class:`ObjectStore`: object storage, where there is no rename and no lock. A version is
  uploaded file by file with its manifest **last** (readers take a version without a manifest
  for an incomplete one and ignore it), and a pointer is one small object written by a single
  PUT, which object stores apply atomically (a reader gets the old object or the new one).
  Loading a version downloads it into a local cache (:func:`default_cache_dir`), checked
  against the manifest's sha256 digests, and the model is loaded from there.

Credentials and endpoints come from each backend's standard configuration, never from
stream-ae's settings: for S3 ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or an instance
role) and, for an S3-compatible server, ``AWS_ENDPOINT_URL``; for GCS
``GOOGLE_APPLICATION_CREDENTIALS``. Any other fsspec option goes through fsspec's own
configuration (``FSSPEC_S3='{"endpoint_url": ...}'``, see fsspec's ``config`` module).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from stream_ae.errors import ArtifactError
from stream_ae.model.artifacts import MANIFEST, parse_manifest, read_manifest

# Where the registry's write side stages a local publish (readers ignore these folders).
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".lock"


def is_url(root: Path | str) -> bool:
    """Whether ``root`` names object storage (a URL with a scheme other than ``file``).

    >>> is_url("s3://bucket/models"), is_url("file:///srv/models"), is_url("/srv/models")
    (True, False, False)
    """
    text = str(root)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme != "file" and scheme.isidentifier()


def registry_root(root: Path | str) -> Path | str:
    """``root`` as the registry takes it: a URL kept as text, a path (or ``file://`` URL) as
    a :class:`Path`.

    >>> registry_root("s3://bucket/models"), registry_root("file:///srv/models")
    ('s3://bucket/models', PosixPath('/srv/models'))
    """
    if is_url(root):
        return str(root).rstrip("/")
    text = str(root)
    return Path(text.removeprefix("file://")) if text.startswith("file://") else Path(text)


class RegistryStore(Protocol):
    """The files of a registry, by key (a ``/``-separated path relative to its root)."""

    root: Path | str

    def describe(self, key: str) -> str:
        """Where ``key`` is, for messages (a path or a URL)."""
        ...

    def read_text(self, key: str) -> str | None:
        """The text of ``key``, None when it does not exist; :class:`ArtifactError` when it
        cannot be read."""
        ...

    def is_file(self, key: str) -> bool: ...

    def is_dir(self, key: str) -> bool:
        """Whether ``key`` holds files (on object storage: whether any key starts with it)."""
        ...

    def list_dirs(self, key: str) -> list[str]:
        """The names of the folders directly under ``key`` (empty when there is none)."""
        ...

    def write_atomic(self, key: str, text: str) -> None:
        """Replace ``key`` so that a reader gets the old content or the new, never a mix."""
        ...

    def append_line(self, key: str, line: str) -> None:
        """Add one line at the end of ``key`` (created if absent)."""
        ...

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Serialise writers of ``key``'s folder, where the storage allows it."""
        ...

    def staging(self, model_key: str, version: str) -> contextlib.AbstractContextManager[Path]:
        """An empty local folder to write a version into before :meth:`put_version`; removed
        on the way out, whatever happened."""
        ...

    def put_version(self, staging: Path, key: str) -> None:
        """Publish the verified artifact in ``staging`` as ``key``, atomically for readers;
        :class:`ArtifactError` when ``key`` exists (versions are immutable)."""
        ...

    def local_dir(self, key: str) -> Path:
        """A local folder holding the version at ``key``, to load it from."""
        ...


def open_store(root: Path | str, cache_dir: Path | None = None) -> RegistryStore:
    """The store of the registry at ``root`` (see :func:`registry_root`); ``cache_dir``: where
    versions on object storage are downloaded (default :func:`default_cache_dir`)."""
    parsed = registry_root(root)
    if isinstance(parsed, Path):
        return LocalStore(parsed)
    return ObjectStore(parsed, cache_dir)


# --- a local folder ------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory bottom-up (so the entries that
    name the files are durable too)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for fname in filenames:
            fd = os.open(Path(dirpath) / fname, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content atomically: write a temp file beside it, fsync, rename over,
    fsync the directory. Readers see the old content or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


class LocalStore:
    """A registry in a local (or shared-volume) folder."""

    def __init__(self, root: Path) -> None:
        self.root: Path | str = Path(root)

    def path(self, key: str) -> Path:
        return Path(self.root) / key

    def describe(self, key: str) -> str:
        return str(self.path(key))

    def read_text(self, key: str) -> str | None:
        try:
            return self.path(key).read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{self.path(key)}: unreadable: {exc}") from None

    def is_file(self, key: str) -> bool:
        return self.path(key).is_file()

    def is_dir(self, key: str) -> bool:
        return self.path(key).is_dir()

    def list_dirs(self, key: str) -> list[str]:
        folder = self.path(key)
        if not folder.is_dir():
            return []
        return [p.name for p in folder.iterdir() if p.is_dir()]

    def write_atomic(self, key: str, text: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)

    def append_line(self, key: str, line: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        folder = self.path(key)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / LOCK_FILE).open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def staging(self, model_key: str, version: str) -> Iterator[Path]:
        # Next to the final place (same filesystem): the rename that publishes is atomic.
        folder = self.path(model_key)
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def put_version(self, staging: Path, key: str) -> None:
        final = self.path(key)
        if final.exists():
            raise ArtifactError(f"{final} already exists: versions are immutable")
        fsync_tree(staging)
        # rename() onto an existing empty directory would succeed: check once more.
        if final.exists():
            raise ArtifactError(f"{final} already exists: versions are immutable")
        os.rename(staging, final)
        fsync_dir(final.parent)

    def local_dir(self, key: str) -> Path:
        return self.path(key)


# --- object storage ------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where versions on object storage are downloaded: ``$XDG_CACHE_HOME/stream-ae/models``
    (``~/.cache/stream-ae/models`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stream-ae" / "models"


# One filesystem object per URL: fsspec's own instance cache would keep a directory-listing
# cache, and a registry that is polled must never be answered from a stale listing.
_FILESYSTEMS: dict[str, tuple[Any, str]] = {}


def _filesystem(url: str) -> tuple[Any, str]:
    if url not in _FILESYSTEMS:
        try:
            import fsspec
        except ImportError:
            raise ArtifactError(
                f"registry {url}: object storage needs fsspec and the backend of its scheme "
                "(pip install 'stream-ae[s3]', or gcsfs for gs://)"
            ) from None
        try:
            fs, path = fsspec.core.url_to_fs(
                url, use_listings_cache=False, skip_instance_cache=True
            )
        except (ImportError, ValueError) as exc:
            raise ArtifactError(f"registry {url}: {exc}") from None
        _FILESYSTEMS[url] = (fs, str(path).rstrip("/"))
    return _FILESYSTEMS[url]


class ObjectStore:
    """A registry on object storage (any fsspec URL), see the module docstring.

    There is no lock: champion changes (promote, rollback) must come from one place at a time
    (a CI job, an operator). Each pointer write is still a single atomic PUT; what two
    concurrent promoters could lose is a line of ``HISTORY.jsonl``.
    """

    def __init__(self, url: str, cache_dir: Path | None = None) -> None:
        self.root: Path | str = url
        self.fs, self.base = _filesystem(url)
        self.cache_dir = cache_dir or default_cache_dir()

    def _path(self, key: str) -> str:
        return f"{self.base}/{key}" if key else self.base

    def describe(self, key: str) -> str:
        return f"{self.root}/{key}" if key else str(self.root)

    def read_text(self, key: str) -> str | None:
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ArtifactError(f"{self.describe(key)}: unreadable: {exc}") from None
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"{self.describe(key)}: unreadable: {exc}") from None

    def is_file(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def is_dir(self, key: str) -> bool:
        return bool(self.fs.isdir(self._path(key)))

    def list_dirs(self, key: str) -> list[str]:
        try:
            entries = self.fs.ls(self._path(key), detail=True)
        except FileNotFoundError:
            return []
        return [
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            for e in entries
            if e.get("type") == "directory"
        ]

    def write_atomic(self, key: str, text: str) -> None:
        # One PUT of the whole object: readers get the old object or the new one.
        self.fs.pipe_file(self._path(key), text.encode())

    def append_line(self, key: str, line: str) -> None:
        # No append on object storage: read, add, write back (one writer at a time).
        self.write_atomic(key, (self.read_text(key) or "") + line + "\n")

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        del key  # nothing to lock with: see the class docstring
        yield

    @contextlib.contextmanager
    def staging(self, model_key: str, version: str) -> Iterator[Path]:
        del model_key
        with tempfile.TemporaryDirectory(prefix=f"stream-ae-publish-{version}-") as tmp:
            yield Path(tmp) / version

    def put_version(self, staging: Path, key: str) -> None:
        if self.fs.exists(self._path(key)):
            raise ArtifactError(f"{self.describe(key)} already exists: versions are immutable")
        names = sorted(p.name for p in staging.iterdir() if p.is_file())
        # Every file first, the manifest last: until it is there, readers see no version.
        for name in [n for n in names if n != MANIFEST] + [MANIFEST]:
            self.fs.put_file(str(staging / name), self._path(f"{key}/{name}"))

    def local_dir(self, key: str) -> Path:
        """The version at ``key`` in the local cache, downloaded if needed; every file is
        checked against the manifest's sha256 on object storage, and a cached copy that does
        not match it (changed, truncated) is downloaded again."""
        text = self.read_text(f"{key}/{MANIFEST}")
        if text is None:
            raise ArtifactError(
                f"{self.describe(key)}: no {MANIFEST} (not a version, or incomplete)"
            )
        manifest = parse_manifest(text, self.describe(f"{key}/{MANIFEST}"))
        url_digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        cached = self.cache_dir / url_digest / key
        if cached.is_dir():
            try:
                if read_manifest(cached, verify=True) == manifest:
                    return cached
            except ArtifactError:
                pass
            shutil.rmtree(cached, ignore_errors=True)
        cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fetching = cached.parent / f".fetch-{cached.name}-{uuid.uuid4().hex[:8]}"
        fetching.mkdir(mode=0o700)
        try:
            # Only the files the manifest lists (plain names: checked by parse_manifest).
            for name in manifest["files"]:
                try:
                    self.fs.get_file(self._path(f"{key}/{name}"), str(fetching / name))
                except FileNotFoundError:
                    raise ArtifactError(f"{self.describe(key)}: {name} is missing") from None
            (fetching / MANIFEST).write_text(text)
            read_manifest(fetching, verify=True)
            with contextlib.suppress(OSError):  # another process cached it meanwhile
                os.rename(fetching, cached)
            if read_manifest(cached, verify=True) != manifest:
                raise ArtifactError(f"{cached}: the cached copy does not match {self.root}")
        finally:
            shutil.rmtree(fetching, ignore_errors=True)
        return cached
