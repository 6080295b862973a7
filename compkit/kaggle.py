"""Fetch competition data (official kaggle client, or a plain URL) and upload submissions.

``kaggle`` logs in when it is imported, so it is imported only inside these functions, after the
credentials were checked. Downloads are idempotent: see :func:`competition_files`. Every request has a
timeout, and idempotent calls are retried a bounded number of times (:mod:`compkit._net`). No message,
log line or output of the client shows a credential (:func:`_redact`).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import datetime
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

from compkit import _net, archives, console
from compkit._io import write_text
from compkit.errors import CompkitError

STATE_FOLDER = ".compkit"  # inside the data root: completion markers and unfinished downloads
TOKEN_PAGE = "https://www.kaggle.com/settings/api"
OFFLINE_HINT = "For offline work use `compkit download NAME --demo`."
UPLOAD_FAILED = "Could not submit to competition"  # what kaggle's competition_submit returns, not raises
SUBMISSION_FIELDS = ("ref", "date", "fileName", "description", "status", "publicScore", "privateScore")


# ---- public API ----


def competition_files(slug: str, root: str | os.PathLike, *, force: bool = False) -> Path:
    """Download every file of competition ``slug`` and extract it into ``root``; return ``root``.

    Idempotent: after a successful extraction a marker ``root/.compkit/<what>.json`` records the
    files fetched; while it and those files exist a second call makes no request. An interrupted
    download (no marker yet) is redone; ``force=True`` always downloads again.
    """
    advice = _competition_advice(slug)
    _fetch(
        Path(root),
        f"competition-{slug}",
        {"competition": slug},
        f"competition '{slug}'",
        force,
        _downloader(advice, "competition_download_files", slug, force=force),
    )
    return Path(root)


def competition_file(slug: str, file_name: str, root: str | os.PathLike, *, force: bool = False) -> Path:
    """Download one file of competition ``slug`` into ``root``; return its path.

    The file lands in ``root`` under its base name. When the server wraps it in a zip (``train.csv``
    arrives as ``train.csv.zip``) it is extracted; a file that is itself an archive (``train.7z``)
    is kept as it is.
    """
    root = Path(root)
    advice = _competition_advice(slug)
    advice[404] = (
        f"Kaggle found no file '{file_name}' in competition '{slug}' (404 Not Found): check both names; "
        f"`kaggle competitions files {slug}` lists the files."
    )
    name = Path(file_name).name
    _fetch(
        root,
        f"competition-{slug}-file-{file_name}",
        {"competition": slug, "file": file_name},
        f"file '{file_name}' of competition '{slug}'",
        force,
        _downloader(advice, "competition_download_file", slug, file_name, force=force,
                    what=f"file '{file_name}' of competition '{slug}'"),
        keep=name,
    )
    return root / name if (root / name).exists() else root


def dataset(ref: str, root: str | os.PathLike, *, version: int | None = None, force: bool = False) -> Path:
    """Download Kaggle dataset ``ref`` ("owner/slug"), optionally one ``version``, into ``root``; return ``root``."""
    parts = ref.split("/")
    if len(parts) != 2 or not all(parts):
        raise CompkitError(
            f"a Kaggle dataset is named 'owner/slug' (e.g. 'dansbecker/hot-dog-not-hot-dog'); got {ref!r}"
        )
    advice = {
        403: f"Access to Kaggle dataset '{ref}' denied (403 Forbidden): it is private or its terms must be "
        f"accepted first; open https://www.kaggle.com/datasets/{ref} while signed in with the same account.",
        404: f"Kaggle has no dataset '{ref}' (404 Not Found): check the owner and name in "
        f"https://www.kaggle.com/datasets/{ref}.",
    }
    full_ref = ref if version is None else f"{ref}/{int(version)}"
    _fetch(
        Path(root),
        f"dataset-{ref}" + ("" if version is None else f"-v{int(version)}"),
        {"dataset": ref, "version": version},
        f"dataset '{full_ref}'",
        force,
        _downloader(advice, "dataset_download_files", full_ref, force=force, what=f"dataset '{full_ref}'"),
    )
    return Path(root)


def url(
    url: str,
    root: str | os.PathLike,
    *,
    sha1: str | None = None,
    sha256: str | None = None,
    filename: str | None = None,
    force: bool = False,
) -> Path:
    """Download ``url`` over HTTP(S) into ``root``, verify its checksum, extract it if it is an archive.

    Returns ``root`` for an archive (its members are extracted there and the archive removed),
    otherwise the downloaded file. A checksum mismatch removes the file and raises.
    """
    root = Path(root)
    name = filename or Path(unquote(urlsplit(url).path)).name
    if not name:
        raise CompkitError(f"cannot tell a file name from {_shown(url)}; pass filename=")
    source = {"url_sha256": hashlib.sha256(url.encode()).hexdigest(), "sha1": sha1, "sha256": sha256}
    _fetch(
        root,
        f"url-{name}",
        source,
        f"{name} from {_shown(url)}",
        force,
        lambda api, staging: _download_url(url, staging / name, {"sha1": sha1, "sha256": sha256}),
        needs_kaggle=False,
    )
    return root if archives.is_archive(name) else root / name


def submit(slug: str, path: str | os.PathLike, message: str) -> dict:
    """Upload the submission file ``path`` to competition ``slug``; return {"message", "ref"}."""
    path = Path(path)
    if not path.is_file():
        raise CompkitError(f"submission file {path} does not exist")
    advice = {
        403: f"Kaggle refused the submission to '{slug}' (403 Forbidden): accept the rules at "
        f"https://www.kaggle.com/competitions/{slug}/rules, and check the competition still takes submissions.",
        404: f"Kaggle has no competition '{slug}' taking submissions (404 Not Found): check the name in "
        f"https://www.kaggle.com/competitions/{slug}.",
    }
    api = _client()
    rules = _net.policy()
    # Not retried: a second CreateSubmission would be a second submission. Only the blob upload inside it
    # (a PUT of the same bytes to the same URL) is repeated, by _net.bounded.
    with _net.bounded(rules) as failures:
        try:
            result = _call(
                advice,
                api.competition_submit,
                str(path),
                message,
                slug,
                doing=f"submitting {path} to '{slug}'",
            )
        except CompkitError:
            if not (failures and failures[-1].url.endswith("/CreateSubmission")):
                raise
            raise CompkitError(
                f"Kaggle did not answer the request that creates the submission of {path} to '{slug}' "
                f"({_net.reason(failures[-1].error, rules)}). It was not sent again because Kaggle may have "
                f"received it: check `kaggle competitions submissions {slug}` before you submit again."
            ) from None
    text = _redact(str(getattr(result, "message", "") or ""))
    ref = getattr(result, "ref", 0) or 0
    # A failed upload is returned, not raised, and carries no submission id.
    if text == UPLOAD_FAILED and failures and failures[-1].method == "PUT":
        raise CompkitError(
            f"uploading {path} to Kaggle failed: {_net.reason(failures[-1].error, rules)}, {_net.tried(rules.retries + 1)}. "
            f"Nothing was submitted: check your network connection and run again; {rules.advice()}."
        )
    if text == UPLOAD_FAILED or not ref:
        raise CompkitError(
            f"Kaggle did not accept {path} for competition '{slug}': {text or 'no submission id came back'}. "
            "Check the file against the competition's sample submission, your daily submission limit, "
            "and your network, then run again."
        )
    _say(f"submitted {path} to '{slug}' (ref {ref}): {text}")
    return {"message": text, "ref": ref}


def submissions(slug: str) -> list[dict]:
    """The recent submissions to competition ``slug``, newest first, as dicts of SUBMISSION_FIELDS."""
    api = _client()
    found = (
        _call(
            _competition_advice(slug),
            api.competition_submissions,
            slug,
            doing=f"listing the submissions to '{slug}'",
            retry=True,
        )
        or []
    )
    rows = []
    for submission in found:
        values = submission.to_dict(ignore_defaults=False)
        rows.append({field: values.get(field) for field in SUBMISSION_FIELDS})
    return rows


# ---- idempotent fetch: marker, staging folder, extraction ----

# ``compkit download NAME --force`` reaches the helpers a plugin's download(root) calls through this,
# so the plugin API needs no force argument.
_FORCED = contextvars.ContextVar("compkit_forced_download", default=False)


@contextlib.contextmanager
def forced(force: bool = True) -> Iterator[None]:
    """Within the block, every download helper fetches again as if called with ``force=True``."""
    token = _FORCED.set(force)
    try:
        yield
    finally:
        _FORCED.reset(token)


def _fetch(
    root: Path,
    marker_name: str,
    source: dict,
    what: str,
    force: bool,
    download: Callable,
    *,
    keep: str | None = None,
    needs_kaggle: bool = True,
) -> list[Path]:
    """Download into a staging folder, unpack into ``root``, then write the marker; skip if already done."""
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", marker_name)
    marker = root / STATE_FOLDER / f"{safe_name}.json"
    staging = root / STATE_FOLDER / "partial" / safe_name
    force = force or _FORCED.get()
    if not force:
        files = _recorded_files(marker, source, root)
        if files is not None:
            _say(f"{what} is already in {root}; nothing to download (force=True / --force fetches it again)")
            return files
    if force:
        shutil.rmtree(staging, ignore_errors=True)
    # From here until the new marker is written the tree may change: an interruption must show.
    marker.unlink(missing_ok=True)
    api = _client() if needs_kaggle else None
    staging.mkdir(parents=True, exist_ok=True)
    download(api, staging)
    files = _unpack(staging, root, keep)
    _write_marker(marker, source, files, root)
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # only when no other download is unfinished
    _say(f"{what}: {len(files)} file(s) in {root}")
    return files


def _downloader(advice: dict[int, str], method: str, *args: str, force: bool, what: str | None = None) -> Callable:
    """``(api, staging) -> None``: the client's download ``method`` into the staging folder, under the
    timeouts, retried (a download is idempotent)."""
    what = what or f"competition '{args[0]}'"

    def download(api, staging: Path) -> None:
        _call(advice, getattr(api, method), *args, path=str(staging), force=force, quiet=False,
              doing=f"downloading {what}", retry=True)

    return download


def _recorded_files(marker: Path, source: dict, root: Path) -> list[Path] | None:
    """The files a marker for ``source`` records, or None unless the marker and all its files exist."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        files = [root / name for name in record["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("source") != source:
        return None
    if not all(path.exists() or path.is_symlink() for path in files):
        return None
    return files


def _write_marker(marker: Path, source: dict, files: list[Path], root: Path) -> None:
    record = {
        "source": source,
        "fetched": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": sorted(path.relative_to(root).as_posix() for path in files),
    }
    write_text(marker, json.dumps(record, indent=1) + "\n")


def _unpack(staging: Path, root: Path, keep: str | None) -> list[Path]:
    """Extract (or move) what was downloaded into ``staging`` into ``root``; return the files placed."""
    # The client keeps a "<file>.kaggle-partial" note beside a download it has not finished.
    downloaded = [
        path
        for path in sorted(staging.iterdir())
        if path.is_file()
        and not path.name.endswith((".kaggle-partial", ".part"))
        and not path.with_name(path.name + ".kaggle-partial").exists()
    ]
    if not downloaded:
        raise CompkitError(f"the download into {staging} produced no file; run the command again")
    files: list[Path] = []
    root.mkdir(parents=True, exist_ok=True)
    for path in downloaded:
        if archives.is_archive(path) and path.name != keep:
            try:
                files += archives.extract(path, root)
            except CompkitError as error:
                path.unlink(missing_ok=True)  # so that the next run downloads it afresh
                raise CompkitError(f"{error} (the download was removed: run the command again)") from error
            path.unlink()
        else:
            shutil.move(path, root / path.name)
            files.append(root / path.name)
    return files


# ---- plain HTTP(S) downloads ----


def _download_url(address: str, destination: Path, expected: dict[str, str | None]) -> None:
    """Stream ``address`` to ``destination`` (through a ``.part`` file), checking size and checksums.

    A network failure is retried from the start, ``COMPKIT_NET_RETRIES`` times (see :mod:`compkit._net`).
    """
    import requests

    part = destination.with_name(destination.name + ".part")
    shown = _shown(address)
    rules = _net.policy()
    for retry in range(rules.retries + 1):
        hashes = {algorithm: hashlib.new(algorithm) for algorithm, digest in expected.items() if digest}
        try:
            with requests.get(address, stream=True, timeout=rules.timeouts) as response:
                response.raise_for_status()
                total = int(response.headers.get("Content-Length") or 0) or None
                _stream(response, part, hashes, total, destination.name)
            break
        except requests.HTTPError as error:
            part.unlink(missing_ok=True)
            status = error.response.status_code if error.response is not None else "?"
            raise CompkitError(
                f"downloading {shown} failed: the server answered {status}; check the URL"
            ) from None
        except _net.transient_errors() as error:
            part.unlink(missing_ok=True)
            if retry == rules.retries:
                raise CompkitError(
                    f"could not download {shown}: {_net.reason(error, rules)}, {_net.tried(retry + 1)}. Check "
                    f"your network connection and run the command again; {rules.advice()}. {OFFLINE_HINT}"
                ) from None
            _retrying(f"downloading {shown}", error, rules, retry + 1)
        except requests.RequestException as error:
            part.unlink(missing_ok=True)
            raise CompkitError(
                f"downloading {shown} was interrupted ({type(error).__name__}); run the command again"
            ) from None
    if total is not None and part.stat().st_size != total:
        size = part.stat().st_size
        part.unlink()
        raise CompkitError(
            f"downloading {shown} stopped after {size} of {total} bytes; run the command again"
        )
    for algorithm, digest in hashes.items():
        if digest.hexdigest().lower() != expected[algorithm].lower():
            part.unlink()
            raise CompkitError(
                f"{algorithm} checksum mismatch for {shown}: expected {expected[algorithm]}, got {digest.hexdigest()}. "
                "The file was removed; the server may have changed it, so check the URL or the expected checksum."
            )
    os.replace(part, destination)


def _stream(response, part: Path, hashes: dict, total: int | None, label: str) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not sys.stderr.isatty()
    )
    with bar, open(part, "wb") as handle:
        for chunk in response.iter_content(chunk_size=1 << 20):
            handle.write(chunk)
            for digest in hashes.values():
                digest.update(chunk)
            bar.update(len(chunk))


def _shown(address: str) -> str:
    """``address`` without user info or query string, which may hold credentials or signatures."""
    parts = urlsplit(address)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# ---- the kaggle client: credentials, start-up, errors ----


def _config_dir() -> Path:
    """The folder where the kaggle client looks for kaggle.json (same rule as the client)."""
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    legacy = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return legacy


def _config_file_values() -> dict:
    path = _config_dir() / "kaggle.json"
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CompkitError(
            f"{path} is not a readable JSON file; download a fresh kaggle.json from {TOKEN_PAGE}, "
            f"save it there and run `chmod 600 {path}`"
        ) from None
    return values if isinstance(values, dict) else {}


def _access_token_file() -> Path | None:
    for name in ("access_token", "access_token.txt"):
        path = Path.home() / ".kaggle" / name
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace").strip():
            return path
    return None


def check_credentials() -> None:
    """Raise CompkitError saying what to do when no Kaggle credentials are set (makes no request)."""
    _require_credentials()


def _require_credentials() -> None:
    """Raise a CompkitError saying what to do unless some credential the client accepts exists."""
    if os.environ.get("KAGGLE_API_TOKEN") or _access_token_file() is not None:
        return
    values = _config_file_values()
    username = os.environ.get("KAGGLE_USERNAME") or values.get("username")
    key = os.environ.get("KAGGLE_KEY") or values.get("key")
    if username and key:
        return
    if (Path.home() / ".kaggle" / "credentials.json").is_file():  # written by `kaggle auth login`
        return
    raise CompkitError(_no_credentials_message())


def _no_credentials_message() -> str:
    # ~/.kaggle/kaggle.json works everywhere (the client prefers ~/.kaggle once it exists, as the
    # README says); only KAGGLE_CONFIG_DIR moves it
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    path = Path(explicit) / "kaggle.json" if explicit else Path("~/.kaggle/kaggle.json")
    return (
        f"No Kaggle credentials found. Create an API token at {TOKEN_PAGE}, then either save the "
        f"downloaded kaggle.json as {path} and run `chmod 600 {path}`, or set the environment variables "
        f"KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN). {OFFLINE_HINT}"
    )


def _credentials_in_use() -> str:
    """Where the credentials the client uses come from, in its order of preference (never their value)."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "the access token in KAGGLE_API_TOKEN"
    token_file = _access_token_file()
    if token_file is not None:
        return f"the access token in {token_file}"
    if os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME / KAGGLE_KEY"
    return f"the key in {_config_dir() / 'kaggle.json'}"


def _secrets() -> list[str]:
    found = [os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN")]
    with contextlib.suppress(CompkitError):
        found.append(_config_file_values().get("key"))
    token_file = _access_token_file()
    if token_file is not None:
        found.append(token_file.read_text(encoding="utf-8", errors="replace").strip())
    return [secret for secret in found if isinstance(secret, str) and len(secret) >= 4]


def _secret_forms() -> list[str]:
    """Every way a credential may show up, longest first.

    Raw (also the ``Bearer <token>`` of an access token), base64 of itself and of ``username:key`` (HTTP
    Basic), each with and without its ``=`` padding, and each of those URL-quoted (``quote``, ``quote`` with
    nothing safe, ``quote_plus``).
    """
    usernames = {os.environ.get("KAGGLE_USERNAME")}
    with contextlib.suppress(CompkitError):
        usernames.add(_config_file_values().get("username"))
    forms: set[str] = set()
    for secret in _secrets():
        texts = [secret, _b64(secret)] + [
            _b64(f"{name}:{secret}") for name in usernames if isinstance(name, str)
        ]
        for text in texts + [text.rstrip("=") for text in texts]:
            forms |= {text, quote(text), quote(text, safe=""), quote_plus(text)}
    return sorted((form for form in forms if len(form) >= 4), key=len, reverse=True)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _redact(text: str, forms: list[str] | None = None) -> str:
    """``text`` with every form of every known credential replaced by ``***``."""
    for form in _secret_forms() if forms is None else forms:
        text = text.replace(form, "***")
    return text


class _RedactingStream:
    """Wraps a text stream (stdout, stderr) so that what the kaggle client prints shows no credential."""

    def __init__(self, stream, forms: list[str]):
        self._stream, self._forms = stream, forms

    def write(self, text: str) -> int:
        return self._stream.write(_redact(text, self._forms))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _redacted_output() -> Iterator[None]:
    """While the client runs, redact what it prints and every log record (message and traceback)."""
    forms = _secret_forms()
    make_record = logging.getLogRecordFactory()

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        with contextlib.suppress(Exception):  # a malformed record is left for logging to report
            record.msg, record.args = _redact(record.getMessage(), forms), ()
            if record.exc_info:
                record.exc_text = _redact(
                    "".join(traceback.format_exception(*record.exc_info)).rstrip("\n"), forms
                )
        return record

    logging.setLogRecordFactory(redacted_record)
    try:
        with (
            contextlib.redirect_stdout(_RedactingStream(sys.stdout, forms)),
            contextlib.redirect_stderr(_RedactingStream(sys.stderr, forms)),
        ):
            yield
    finally:
        logging.setLogRecordFactory(make_record)


def _client():
    """A logged-in ``kaggle.api.kaggle_api_extended.KaggleApi`` that follows the current environment."""
    _require_credentials()
    try:
        # It logs in at import time (an access token is checked over the network).
        with _net.bounded(_net.policy()), _redacted_output():
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as error:
        raise CompkitError(f"cannot import the kaggle client ({error}): pip install kaggle six") from None
    except (Exception, SystemExit) as error:  # it may also exit
        raise CompkitError(
            _redact(f"the kaggle client failed to start ({type(error).__name__}: {error})")
        ) from None
    api = KaggleApi()
    # KaggleApi reads these once, when its module is first imported; follow later changes (tests, notebooks).
    config_dir = _config_dir()
    api.config_dir = str(config_dir)
    api.config = str(config_dir / "kaggle.json")
    local = os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST"
    api.args = [arg for arg in KaggleApi.args if arg != "--local"] + (["--local"] if local else [])
    # Its file transfer retries 5 times itself (300 s read timeout, up to 60 s apart); _call retries instead.
    api.download_file = functools.partial(api.download_file, max_retries=0)
    try:
        _call({}, api.authenticate, doing="checking your Kaggle credentials", retry=True)
    except CompkitError as error:
        # The client found a token but the server called it invalid, then fell through to "no credentials".
        token = os.environ.get("KAGGLE_API_TOKEN") or _access_token_file() is not None
        if token and str(error) == _no_credentials_message():
            raise CompkitError(
                "Kaggle did not accept the access token from KAGGLE_API_TOKEN or ~/.kaggle/access_token "
                f"(expired or revoked?): create a new one at {TOKEN_PAGE}."
            ) from None
        raise
    return api


def _call(
    advice: dict[int, str],
    function: Callable,
    *args,
    doing: str = "talking to Kaggle",
    retry: bool = False,
    **kwargs,
):
    """Call a kaggle client function, turning each way it fails into a CompkitError saying what to do.

    Every request it sends has the timeouts of :func:`compkit._net.policy`. ``retry=True`` (only for an
    idempotent call: a download, a listing) tries again after a network failure, ``COMPKIT_NET_RETRIES``
    times, waiting 1, 2, 4 ... s between tries. ``doing`` names the call in messages.
    """
    rules = _net.policy()
    tries = rules.retries + 1 if retry else 1
    with _translated_errors(advice, doing, rules, tries), _net.bounded(rules), _redacted_output():
        for attempt in range(1, tries + 1):
            try:
                return function(*args, **kwargs)
            except _net.transient_errors() as error:
                if attempt == tries:
                    raise
                _retrying(doing, error, rules, attempt)


def _retrying(doing: str, error: Exception, rules: _net.Policy, retry: int) -> None:
    """Say that a network failure is retried, and wait before the retry."""
    delay = rules.backoff(retry)
    _say(
        f"{doing}: {_net.reason(error, rules)}; trying again in {delay:g} s (retry {retry} of {rules.retries})"
    )
    time.sleep(delay)


@contextlib.contextmanager
def _translated_errors(advice: dict[int, str], doing: str, rules: _net.Policy, tries: int) -> Iterator[None]:
    """Turn what the client raises into a CompkitError whose message shows no credential."""
    try:
        yield
    except CompkitError:
        raise
    except BaseException as error:
        message = _failure_message(error, advice, doing, rules, tries)
        if message is None:
            raise
        raise CompkitError(_redact(message)) from None


def _failure_message(
    error: BaseException, advice: dict[int, str], doing: str, rules, tries: int
) -> str | None:
    """What to tell the user about ``error``, or None for an error to pass on as it is (KeyboardInterrupt)."""
    import requests

    if isinstance(error, SystemExit):  # the client prints help and exits when it finds no credentials
        return _no_credentials_message()
    if isinstance(error, requests.HTTPError):
        return _http_message(error, advice, doing)
    if isinstance(error, _net.transient_errors()):
        offline = "" if doing.startswith(("submitting", "listing")) else f" {OFFLINE_HINT}"
        return (
            f"Could not reach Kaggle while {doing}: {_net.reason(error, rules)}, {_net.tried(tries)}. Check your "
            f"network connection and proxy settings, then run again; {rules.advice()}.{offline}"
        )
    if isinstance(error, ValueError) and "does not match expected size" in str(error):
        return f"the download from Kaggle was incomplete ({error}); run the command again"
    if isinstance(error, Exception):
        return f"the kaggle client failed while {doing}: {type(error).__name__}: {error}"
    return None


def _http_message(error, advice: dict[int, str], doing: str = "talking to Kaggle") -> str:
    status = _status(error)
    if status in advice:
        return advice[status]
    if status == 401:
        return (
            f"Kaggle rejected your credentials ({_credentials_in_use()}) with 401 Unauthorized: create a new "
            f"API token at {TOKEN_PAGE} and put it there."
        )
    if status == 429:
        return "Kaggle is limiting how fast you send requests (429 Too Many Requests): wait a few minutes and run again."
    if status is not None and status >= 500:
        return f"Kaggle had a server error ({status}): try again later."
    return f"Kaggle answered {status} while {doing}: {error}"


def _status(error) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is None or status < 400:
        # The client also raises when a 200 answer carries {"code": 4xx} in its JSON body.
        with contextlib.suppress(Exception):
            status = int(response.json()["code"])
    return status


def _competition_advice(slug: str) -> dict[int, str]:
    return {
        403: f"Kaggle refused access to competition '{slug}' (403 Forbidden): accept its rules at "
        f"https://www.kaggle.com/competitions/{slug}/rules (signed in with the account of your API token), "
        "then run again.",
        404: f"Kaggle has no competition '{slug}' (404 Not Found): check the name in the competition's URL, "
        f"https://www.kaggle.com/competitions/{slug}.",
    }


def _say(message: str) -> None:
    console.echo(f"compkit: {_redact(message)}", err=True)
