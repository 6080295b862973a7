"""A fake Kaggle API on 127.0.0.1 that the real kaggle client talks to in tests.

The client is pointed at it with KAGGLE_API_ENVIRONMENT=LOCALHOST (it then calls http://localhost/api/v1/...)
and HTTP_PROXY=http://127.0.0.1:<port>, so every request, downloads and uploads included, arrives here.

It serves competition downloads and submissions, dataset downloads, dataset uploads (GetDatasetStatus,
StartBlobUpload, then a PUT of each file's bytes, CreateDataset / CreateDatasetVersion) and notebook pushes
(SaveKernel); each records what it received (see the fields of FakeKaggle).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, urlsplit

API = "/api/v1/"
COMPETITIONS = "competitions.CompetitionApiService/"
DATASETS = "datasets.DatasetApiService/"
BLOBS = "blobs.BlobApiService/"
KERNELS = "kernels.KernelsApiService/"
INTROSPECT = "security.OAuthService/IntrospectToken"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a pack's zipped run folder (compkit pack --upload) is some 20 MiB
SOCKET_TIMEOUT_SECONDS = 10
STALL_SECONDS = 30  # how long a stalled request waits at most (stop() releases it at once)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """The bytes of a zip archive holding ``files`` (name -> content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy")
CLEARED_VARIABLES = (
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "XDG_CONFIG_HOME",
    "VERBOSE",
    "VERBOSE_OUTPUT",
)


def point_client_at(monkeypatch, fake: FakeKaggle, home: Path) -> None:
    """Set the environment so the real kaggle client (and requests) talk only to ``fake``.

    ``home`` becomes HOME (so no real ~/.kaggle is read) and holds the KAGGLE_CONFIG_DIR.
    HTTPS goes to the fake too: a request meant for the real api.kaggle.com fails instead of leaving.
    Network calls time out after 5 s and are not retried unless a test sets COMPKIT_NET_* itself.
    """
    for name in list(os.environ):
        if name.startswith("KAGGLE_") or name in CLEARED_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "kaggle-config"))
    monkeypatch.setenv("KAGGLE_USERNAME", fake.username)
    monkeypatch.setenv("KAGGLE_KEY", fake.key)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, fake.address)
    monkeypatch.setenv("COMPKIT_NET_TIMEOUT", "5")
    monkeypatch.setenv("COMPKIT_NET_RETRIES", "0")


@dataclass
class FakeKaggle:
    """What the fake serves and what it received; edit the fields freely while it runs."""

    username: str = "fake-user"
    key: str = "fake-key-0123456789abcdef"
    access_token: str | None = None  # accepted as "Authorization: Bearer <token>" when set
    competitions: dict[str, dict[str, bytes]] = field(default_factory=dict)  # slug -> name -> bytes
    datasets: dict[str, dict[str, bytes]] = field(default_factory=dict)  # "owner/slug" -> name -> bytes
    urls: dict[str, bytes] = field(default_factory=dict)  # path such as "/files/x.zip" -> bytes
    errors: dict[str, int] = field(default_factory=dict)  # slug or "owner/slug" -> 400 / 403 / 404
    # What misbehaves, and how: an RPC method name ("DownloadDataFiles", "CreateSubmission", ...), "download"
    # (a file's bytes, from a redirect or in urls: half of them go out first) or "upload" (the PUT, after its
    # body arrived) -> "stall" (accept, never answer) or "reset" (drop the connection). Requests are recorded.
    faults: dict[str, str] = field(default_factory=dict)
    truncated_urls: set[str] = field(default_factory=set)  # paths answered with fewer bytes than promised
    fail_upload: bool = False
    create_message: str = "Successfully submitted to the competition"  # what CreateSubmission answers
    submissions: list[dict] = field(default_factory=list)  # answered by ListSubmissions
    uploads: dict[str, bytes] = field(default_factory=dict)  # upload token -> bytes received by PUT
    created: list[dict] = field(default_factory=list)  # CreateSubmission request bodies
    # Uploading a dataset and pushing a notebook. GetDatasetStatus answers "ready" for a dataset in ``datasets``
    # or created here (CreateDataset), 404 otherwise (or the status in ``errors``).
    blobs: dict[str, dict] = field(default_factory=dict)  # upload token -> StartBlobUpload request body
    created_datasets: list[dict] = field(default_factory=list)  # CreateDataset request bodies
    dataset_refs: set[str] = field(default_factory=set)  # "owner/slug" of the datasets CreateDataset created
    dataset_versions: list[dict] = field(default_factory=list)  # CreateDatasetVersion request bodies
    kernels: list[dict] = field(default_factory=list)  # SaveKernel request bodies
    # RPC method name ("CreateDataset", "CreateDatasetVersion", "SaveKernel") -> fields put into its answer,
    # e.g. {"error": "Slug taken"}: an answer with an error creates nothing.
    answers: dict[str, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, dict]] = field(default_factory=list)  # (method, path, json body)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _released: threading.Event = field(default_factory=threading.Event)

    def start(self) -> FakeKaggle:
        """Listen on a free loopback port in a daemon thread."""
        fake = self

        class Handler(_Handler):
            kaggle = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-kaggle", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._released.set()  # stalled requests give up
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method_or_path: str) -> int:
        """How many requests had this RPC method name (e.g. "DownloadDataFiles") or this path."""
        return sum(
            1 for _, path, _ in self.requests if path == method_or_path or path.endswith("/" + method_or_path)
        )

    def uploaded(self, files: list[dict]) -> dict[str, bytes]:
        """The files a CreateDataset / CreateDatasetVersion body names (``[{"token": ...}]``), as the name
        each was announced under (StartBlobUpload) -> the bytes its PUT sent."""
        return {self.blobs[item["token"]]["name"]: self.uploads[item["token"]] for item in files}


class _Handler(BaseHTTPRequestHandler):
    kaggle: FakeKaggle
    timeout = SOCKET_TIMEOUT_SECONDS  # a stuck client cannot hold a server thread forever

    def log_message(self, format, *args):
        pass  # keep test output quiet

    # ---- plumbing ----

    def _path(self) -> str:
        # Through a proxy the request line holds the absolute URL ("http://localhost/api/v1/...").
        return unquote(urlsplit(self.path).path)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            return self._chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("request body too large for the fake")
        return self.rfile.read(length)

    def _chunked_body(self) -> bytes:
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return body
            body += self.rfile.read(size)
            self.rfile.readline()
            if len(body) > MAX_BODY_BYTES:
                raise ValueError("request body too large for the fake")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: dict, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"code": status, "message": message}, status)

    def _redirect(self, path: str) -> None:
        # A query string like a signed storage URL's: the client must strip it from the file name.
        self._send(302, b"", "text/plain", {"Location": f"http://localhost{path}?signature=fake"})

    def _misbehave(self, what: str, partial: bytes | None = None) -> bool:
        """Stall or drop the connection if ``faults[what]`` says so (``partial``: promise it, send half first)."""
        fault = self.kaggle.faults.get(what)
        if fault is None:
            return False
        if partial is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(partial)))
            self.end_headers()
            self.wfile.write(partial[: len(partial) // 2])
            self.wfile.flush()
        if fault == "stall":
            self.kaggle._released.wait(STALL_SECONDS)
        # Closing with SO_LINGER 0 sends a reset, not an orderly end of the stream.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        return True

    def _echo_credentials(self) -> str:
        # What a careless server does in a 400 body: repeat the credential it was sent, in every encoding.
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme == "Basic":
            secret, encoded = base64.b64decode(value).decode().partition(":")[2], value
        else:
            secret, encoded = value, base64.b64encode(value.encode()).decode()
        return (
            f"Bad request. Authorization: {header}; credential {secret}; base64 {encoded}; "
            f"quoted {quote(secret)}; plus-quoted {quote_plus(secret)}; quoted base64 {quote(encoded, safe='')}"
        )

    def _authorized(self) -> bool:
        basic = base64.b64encode(f"{self.kaggle.username}:{self.kaggle.key}".encode()).decode()
        accepted = {f"Basic {basic}"} | (
            {f"Bearer {self.kaggle.access_token}"} if self.kaggle.access_token else set()
        )
        return self.headers.get("Authorization") in accepted

    # ---- HTTP verbs ----

    def do_GET(self):
        path = self._path()
        self.kaggle.requests.append(("GET", path, {}))
        if path.startswith("/download/"):
            return self._serve_download(path)
        if path in self.kaggle.urls:
            content = self.kaggle.urls[path]
            if self._misbehave("download", partial=content):
                return None
            if path in self.kaggle.truncated_urls:
                return self._send_truncated(content)
            return self._send(200, content, "application/octet-stream")
        return self._error(404, f"no such file: {path}")

    def do_PUT(self):
        path = self._path()
        body = self._body()
        self.kaggle.requests.append(("PUT", path, {}))
        token = path.rsplit("/", 1)[-1]
        if self._misbehave("upload"):
            return None
        if not path.startswith("/upload/") or self.kaggle.fail_upload:
            return self._error(500, "upload failed")
        if self.headers.get("Content-Range"):  # the client resuming a dataset's upload (kaggle's _upload_blob)
            return self._resumable_put(token, body, self.headers["Content-Range"])
        self.kaggle.uploads[token] = body
        return self._json({})

    def _resumable_put(self, token: str, body: bytes, content_range: str) -> None:
        """A resumable upload's status query ("bytes */N": what arrived?) or its next part ("bytes A-B/N"),
        answered as Google Cloud Storage does: 200 once all N bytes are in, else 308 with the Range received
        (none: start again from byte 0)."""
        spec, _, total = content_range.removeprefix("bytes ").partition("/")
        received = self.kaggle.uploads.get(token, b"")
        if spec != "*":
            if int(spec.split("-")[0]) != len(received):
                return self._error(400, f"upload part {spec} does not follow the {len(received)} bytes received")
            received += body
            self.kaggle.uploads[token] = received
        if str(len(received)) == total:
            return self._json({})
        self._send(308, b"", "text/plain", {"Range": f"bytes=0-{len(received) - 1}"} if received else {})

    def do_POST(self):
        path = self._path()
        raw = self._body()
        body = json.loads(raw or b"{}")
        self.kaggle.requests.append(("POST", path, body))
        if not path.startswith(API):
            return self._error(404, f"unknown path {path}")
        method = path[len(API) :]
        if self._misbehave(method.rsplit("/", 1)[-1]):
            return None
        if method == INTROSPECT:  # asks whether the token in the body is valid; needs no login itself
            return self._introspect_token(body)
        if not self._authorized():
            return self._error(401, "Unauthenticated")
        handler = {
            COMPETITIONS + "DownloadDataFiles": self._download_data_files,
            COMPETITIONS + "DownloadDataFile": self._download_data_file,
            COMPETITIONS + "StartSubmissionUpload": self._start_submission_upload,
            COMPETITIONS + "CreateSubmission": self._create_submission,
            COMPETITIONS + "ListSubmissions": self._list_submissions,
            DATASETS + "DownloadDataset": self._download_dataset,
            DATASETS + "GetDatasetStatus": self._get_dataset_status,
            DATASETS + "CreateDataset": self._create_dataset,
            DATASETS + "CreateDatasetVersion": self._create_dataset_version,
            BLOBS + "StartBlobUpload": self._start_blob_upload,
            KERNELS + "SaveKernel": self._save_kernel,
        }.get(method)
        if handler is None:
            return self._error(404, f"the fake does not implement {method}")
        return handler(body)

    # ---- RPC methods ----

    def _introspect_token(self, body: dict) -> None:
        active = bool(self.kaggle.access_token) and body.get("token") == self.kaggle.access_token
        self._json({"active": active, "username": self.kaggle.username if active else ""})

    def _competition(self, name: str) -> dict[str, bytes] | None:
        status = self.kaggle.errors.get(name)
        if status == 400:
            self._error(400, self._echo_credentials())
            return None
        if status == 403:
            self._error(
                403, "You must accept this competition's rules before you'll be able to download files."
            )
            return None
        if status is not None or name not in self.kaggle.competitions:
            self._error(404, "Not found")
            return None
        return self.kaggle.competitions[name]

    def _download_data_files(self, body: dict) -> None:
        name = body.get("competitionName", "")
        if self._competition(name) is not None:
            self._redirect(f"/download/competitions/{name}/{name}.zip")

    def _download_data_file(self, body: dict) -> None:
        name, file_name = body.get("competitionName", ""), body.get("fileName", "")
        files = self._competition(name)
        if files is None:
            return
        if file_name not in files:
            return self._error(404, "Not found")
        self._redirect(f"/download/competitions/{name}/files/{file_name}.zip")

    def _download_dataset(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        status = self.kaggle.errors.get(ref)
        if status == 400:
            return self._error(400, self._echo_credentials())
        if status is not None or ref not in self.kaggle.datasets:
            return self._error(status or 404, "Permission denied" if status == 403 else "Not found")
        self._redirect(f"/download/datasets/{ref}.zip")

    def _start_submission_upload(self, body: dict) -> None:
        if self._competition(body.get("competitionName", "")) is None:
            return
        self._json(self._new_upload())

    def _new_upload(self) -> dict:
        """A fresh upload token and the URL its PUT goes to (which ``do_PUT`` serves)."""
        token = f"blob-{len(self.kaggle.uploads) + len(self.kaggle.requests)}"
        return {"token": token, "createUrl": f"http://localhost/upload/{token}"}

    def _create_submission(self, body: dict) -> None:
        if self._competition(body.get("competitionName", "")) is None:
            return
        self.kaggle.created.append(body)
        ref = 1000 + len(self.kaggle.created)
        self._json({"message": self.kaggle.create_message, "ref": ref})

    def _list_submissions(self, body: dict) -> None:
        if self._competition(body.get("competitionName", "")) is not None:
            self._json({"submissions": self.kaggle.submissions, "nextPageToken": ""})

    # ---- uploading datasets, pushing notebooks ----

    def _dataset_exists(self, ref: str) -> bool:
        return ref in self.kaggle.datasets or ref in self.kaggle.dataset_refs

    def _get_dataset_status(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        status = self.kaggle.errors.get(ref)
        if status is not None:
            return self._error(status, "Permission denied" if status == 403 else "Not found")
        if not self._dataset_exists(ref):
            return self._error(404, "Not found")
        self._json({"status": "ready"})

    def _start_blob_upload(self, body: dict) -> None:
        upload = self._new_upload()
        self.kaggle.blobs[upload["token"]] = body
        self._json(upload)

    def _unknown_tokens(self, files: list[dict]) -> list[str]:
        """The tokens in ``files`` that no PUT delivered bytes for."""
        return [item.get("token", "") for item in files if item.get("token") not in self.kaggle.uploads]

    def _dataset_answer(self, method: str, ref: str, files: list[dict]) -> dict:
        missing = self._unknown_tokens(files)
        answer = {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok", "error": ""}
        if missing:
            answer |= {"error": f"unknown upload token(s) {', '.join(missing)}"}
        answer |= self.kaggle.answers.get(method, {})
        if answer["error"]:
            answer |= {"ref": "", "url": "", "status": "error"}
        return answer

    def _create_dataset(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug', '')}/{body.get('slug', '')}"
        answer = self._dataset_answer("CreateDataset", ref, body.get("files", []))
        if not answer["error"] and self._dataset_exists(ref):
            answer |= {"ref": "", "url": "", "status": "error", "error": f"dataset {ref} already exists"}
        self.kaggle.created_datasets.append(body)
        if not answer["error"]:
            self.kaggle.dataset_refs.add(ref)
        self._json(answer)

    def _create_dataset_version(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        self.kaggle.dataset_versions.append(body)
        if not self._dataset_exists(ref):
            return self._error(404, "Not found")
        self._json(self._dataset_answer("CreateDatasetVersion", ref, body.get("body", {}).get("files", [])))

    def _save_kernel(self, body: dict) -> None:
        self.kaggle.kernels.append(body)
        slug = body.get("slug") or ""
        answer = {"ref": f"/code/{slug}", "url": f"https://www.kaggle.com/code/{slug}",
                  "versionNumber": len(self.kaggle.kernels), "error": ""}
        answer |= self.kaggle.answers.get("SaveKernel", {})
        self._json(answer)

    # ---- file bytes (what the redirects point to) ----

    def _serve_download(self, path: str) -> None:
        parts = path.removeprefix("/download/").removesuffix(".zip").split("/")
        files = None
        if parts[0] == "competitions" and len(parts) == 3:
            files = self.kaggle.competitions.get(parts[1])
        elif parts[0] == "competitions" and len(parts) == 4 and parts[2] == "files":
            content = self.kaggle.competitions.get(parts[1], {}).get(parts[3])
            files = None if content is None else {parts[3]: content}
        elif parts[0] == "datasets" and len(parts) == 3:
            files = self.kaggle.datasets.get(f"{parts[1]}/{parts[2]}")
        if files is None:
            return self._error(404, f"no such download: {path}")
        content = zip_bytes(files)
        if not self._misbehave("download", partial=content):
            self._send(200, content, "application/zip")

    def _send_truncated(self, content: bytes) -> None:
        # Promise every byte, send half, hang up: what a dropped connection looks like to the client.
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2])
        self.wfile.flush()
        self.close_connection = True
