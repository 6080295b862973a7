"""Tests for compkit.kaggle: the real kaggle client against a loopback fake, plain URL downloads, markers."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from compkit import kaggle
from compkit.errors import CompkitError
from tests.fake_kaggle import FakeKaggle, point_client_at, zip_bytes

README = (Path(__file__).parents[1] / "README.md").read_text()
SLUG = "toy-competition"
COMPETITION = {
    "train.csv": b"id,label\n1,cat\n2,dog\n",
    "images/a.png": b"png-a",
    "sample_submission.csv": b"id\n",
}
DATASET = {"hotdog/train/hot_dog/1.jpg": b"jpg-1", "labels.csv": b"id,hotdog\n1,1\n"}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A running fake Kaggle with one competition and one dataset; the client is pointed at it."""
    server = FakeKaggle(competitions={SLUG: dict(COMPETITION)}, datasets={"owner/hotdog": dict(DATASET)})
    server.start()
    home = tmp_path / "home"
    home.mkdir()
    point_client_at(monkeypatch, server, home)
    yield server
    server.stop()


@pytest.fixture
def root(tmp_path):
    return tmp_path / "data" / "toy"


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` outside compkit's state folder, as relative name -> bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and kaggle.STATE_FOLDER not in path.relative_to(folder).parts
    }


def marker(root: Path, name: str) -> Path:
    return root / kaggle.STATE_FOLDER / f"{name}.json"


# ---- competitions and datasets ----


def test_competition_files_are_downloaded_and_extracted(fake, root):
    assert kaggle.competition_files(SLUG, root) == root
    assert tree(root) == COMPETITION
    assert fake.count("DownloadDataFiles") == 1
    record = json.loads(marker(root, f"competition-{SLUG}").read_text())
    assert sorted(record["files"]) == sorted(COMPETITION)
    assert not (root / kaggle.STATE_FOLDER / "partial").exists() or not any(
        (root / kaggle.STATE_FOLDER / "partial").iterdir()
    )


def test_second_call_makes_no_request_and_says_so(fake, root, capsys):
    kaggle.competition_files(SLUG, root)
    requests_after_first = len(fake.requests)
    capsys.readouterr()
    assert kaggle.competition_files(SLUG, root) == root
    assert len(fake.requests) == requests_after_first
    assert "already" in capsys.readouterr().err


def test_force_downloads_again(fake, root):
    kaggle.competition_files(SLUG, root)
    fake.competitions[SLUG]["train.csv"] = b"id,label\n1,bird\n"
    kaggle.competition_files(SLUG, root, force=True)
    assert fake.count("DownloadDataFiles") == 2
    assert (root / "train.csv").read_bytes() == b"id,label\n1,bird\n"


def test_missing_marker_means_the_download_is_redone(fake, root):
    kaggle.competition_files(SLUG, root)
    marker(root, f"competition-{SLUG}").unlink()  # as if killed between extraction and marker
    kaggle.competition_files(SLUG, root)
    assert fake.count("DownloadDataFiles") == 2
    assert tree(root) == COMPETITION


def test_a_deleted_file_means_the_download_is_redone(fake, root):
    kaggle.competition_files(SLUG, root)
    (root / "images" / "a.png").unlink()
    kaggle.competition_files(SLUG, root)
    assert fake.count("DownloadDataFiles") == 2
    assert tree(root) == COMPETITION


def test_an_interrupted_download_is_redone(fake, root):
    # What a killed download leaves: half a zip in the staging folder, no marker.
    staging = root / kaggle.STATE_FOLDER / "partial" / f"competition-{SLUG}"
    staging.mkdir(parents=True)
    whole = zip_bytes(COMPETITION)
    (staging / f"{SLUG}.zip").write_bytes(whole[: len(whole) // 2])
    kaggle.competition_files(SLUG, root)
    assert fake.count("DownloadDataFiles") == 1
    assert tree(root) == COMPETITION
    assert marker(root, f"competition-{SLUG}").exists()


def test_an_interrupted_extraction_is_cleaned_up_and_redone(fake, root):
    stale = root.parent / f".{root.name}.{SLUG}.zip.extracting"
    stale.mkdir(parents=True)
    (stale / "train.csv").write_bytes(b"half")
    kaggle.competition_files(SLUG, root)
    assert not stale.exists()
    assert tree(root) == COMPETITION


def test_single_competition_file_is_unwrapped_from_its_zip(fake, root):
    path = kaggle.competition_file(SLUG, "train.csv", root)
    assert path == root / "train.csv"
    assert tree(root) == {"train.csv": COMPETITION["train.csv"]}
    assert fake.count("DownloadDataFile") == 1
    assert kaggle.competition_file(SLUG, "train.csv", root) == path
    assert fake.count("DownloadDataFile") == 1


def test_dataset_is_downloaded_and_extracted(fake, root):
    assert kaggle.dataset("owner/hotdog", root) == root
    assert tree(root) == DATASET
    kaggle.dataset("owner/hotdog", root)
    assert fake.count("DownloadDataset") == 1


def test_dataset_version_is_sent_and_recorded_separately(fake, root):
    kaggle.dataset("owner/hotdog", root, version=3)
    kaggle.dataset("owner/hotdog", root)
    bodies = [body for _, path, body in fake.requests if path.endswith("/DownloadDataset")]
    assert [body.get("datasetVersionNumber") for body in bodies] == [3, None]


def test_dataset_name_must_be_owner_slash_slug(fake, root):
    with pytest.raises(CompkitError, match="owner/slug"):
        kaggle.dataset("hotdog", root)
    assert fake.requests == []


# ---- errors a user will meet ----


def test_rules_not_accepted_points_at_the_rules_page(fake, root):
    fake.errors[SLUG] = 403
    with pytest.raises(CompkitError, match=f"https://www.kaggle.com/competitions/{SLUG}/rules"):
        kaggle.competition_files(SLUG, root)
    assert not marker(root, f"competition-{SLUG}").exists()


def test_unknown_competition_is_named(fake, root):
    with pytest.raises(CompkitError, match="no competition 'no-such-thing'"):
        kaggle.competition_files("no-such-thing", root)


def test_unknown_competition_file_is_named(fake, root):
    with pytest.raises(CompkitError, match="no file 'nope.csv' in competition"):
        kaggle.competition_file(SLUG, "nope.csv", root)


def test_dataset_access_denied_and_unknown(fake, root):
    fake.errors["owner/hotdog"] = 403
    with pytest.raises(CompkitError, match="denied"):
        kaggle.dataset("owner/hotdog", root)
    with pytest.raises(CompkitError, match="no dataset 'owner/missing'"):
        kaggle.dataset("owner/missing", root)


def test_no_credentials_says_where_to_put_them(fake, root, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(CompkitError) as caught:
        kaggle.competition_files(SLUG, root)
    message = str(caught.value)
    assert "kaggle-config/kaggle.json" in message and "chmod 600" in message
    assert "KAGGLE_USERNAME" in message and "KAGGLE_KEY" in message
    assert fake.requests == []
    monkeypatch.delenv("KAGGLE_CONFIG_DIR")  # then the README's place, ~/.kaggle, not ~/.config/kaggle
    with pytest.raises(CompkitError, match=r"save the downloaded kaggle.json as ~/\.kaggle/kaggle\.json and run "
                                           r"`chmod 600 ~/\.kaggle/kaggle\.json`"):
        kaggle.competition_files(SLUG, root)
    assert "~/.kaggle/kaggle.json" in README


def test_kaggle_json_in_the_config_dir_is_enough(fake, root, monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    config = tmp_path / "home" / "kaggle-config"
    config.mkdir()
    (config / "kaggle.json").write_text(json.dumps({"username": fake.username, "key": fake.key}))
    (config / "kaggle.json").chmod(0o600)
    kaggle.competition_files(SLUG, root)
    assert tree(root) == COMPETITION


def test_wrong_key_is_reported_without_showing_it(fake, root, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", "wrong-secret-key-5551234")
    with pytest.raises(CompkitError, match="401") as caught:
        kaggle.competition_files(SLUG, root)
    assert "wrong-secret-key-5551234" not in str(caught.value)


def test_an_access_token_is_enough(fake, root, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    fake.access_token = "fake-token-secret-999"
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake.access_token)
    kaggle.competition_files(SLUG, root)
    assert tree(root) == COMPETITION


def test_rejected_access_token_says_so_without_showing_it(fake, root, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    fake.access_token = "the-valid-token"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "fake-token-secret-999")
    with pytest.raises(CompkitError, match="did not accept the access token") as caught:
        kaggle.competition_files(SLUG, root)
    captured = capsys.readouterr()
    assert "fake-token-secret-999" not in str(caught.value) + captured.out + captured.err


def test_importing_compkit_kaggle_imports_neither_kaggle_nor_requests():
    code = "import sys, compkit.kaggle, compkit.archives; print(sorted({'kaggle', 'requests', 'py7zr'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_network_says_so_and_suggests_the_demo(fake, root, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, closed)
    with pytest.raises(CompkitError, match="Could not reach Kaggle") as caught:
        kaggle.competition_files(SLUG, root)
    assert "compkit download NAME --demo" in str(caught.value)


def test_the_key_never_appears_in_output_logs_or_errors(fake, root, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    messages = []
    kaggle.competition_files(SLUG, root)
    kaggle.competition_files(SLUG, root)
    kaggle.dataset("owner/hotdog", root)
    fake.errors["owner/hotdog"] = 403
    fake.fail_upload = True
    submission = tmp_path / "submission.csv"
    submission.write_text("id,label\n1,cat\n")
    for attempt in (
        lambda: kaggle.dataset("owner/hotdog", root, force=True),
        lambda: kaggle.competition_files("missing", root),
        lambda: kaggle.submit(SLUG, submission, "try"),
    ):
        with pytest.raises(CompkitError) as caught:
            attempt()
        messages.append(str(caught.value))
    captured = capsys.readouterr()
    everything = "\n".join([captured.out, captured.err, caplog.text, *messages])
    assert fake.key not in everything
    assert "Could not submit" in everything  # the scenarios really ran and printed


# ---- submissions ----


def test_submit_uploads_the_file_and_returns_the_ref(fake, tmp_path):
    submission = tmp_path / "submission.csv"
    submission.write_bytes(b"id,label\n1,cat\n2,dog\n")
    result = kaggle.submit(SLUG, submission, "fold 0 resnet18")
    assert result == {"message": "Successfully submitted to the competition", "ref": 1001}
    assert list(fake.uploads.values()) == [submission.read_bytes()]
    (created,) = fake.created
    assert created["submissionDescription"] == "fold 0 resnet18"
    assert created["blobFileTokens"] == next(iter(fake.uploads))


def test_failed_upload_raises_with_the_clients_message(fake, tmp_path):
    fake.fail_upload = True
    submission = tmp_path / "submission.csv"
    submission.write_text("id,label\n")
    with pytest.raises(CompkitError, match="Could not submit to competition"):
        kaggle.submit(SLUG, submission, "broken")
    assert fake.created == []


def test_submit_to_competition_with_rules_not_accepted(fake, tmp_path):
    fake.errors[SLUG] = 403
    submission = tmp_path / "submission.csv"
    submission.write_text("id,label\n")
    with pytest.raises(CompkitError, match="rules"):
        kaggle.submit(SLUG, submission, "x")


def test_submit_needs_an_existing_file(fake, tmp_path):
    with pytest.raises(CompkitError, match="does not exist"):
        kaggle.submit(SLUG, tmp_path / "missing.csv", "x")


def test_submissions_lists_status_and_public_score(fake):
    fake.submissions = [
        {
            "ref": 7,
            "fileName": "s.csv",
            "date": "2024-05-01T10:00:00.000Z",
            "status": "COMPLETE",
            "publicScore": "0.93",
        },
        {"ref": 8, "fileName": "t.csv", "date": "2024-05-02T10:00:00.000Z", "status": "PENDING"},
    ]
    rows = kaggle.submissions(SLUG)
    assert [(row["ref"], row["status"], row["publicScore"]) for row in rows] == [
        (7, "COMPLETE", "0.93"),
        (8, "PENDING", None),
    ]


# ---- plain URLs ----


def served(fake: FakeKaggle, name: str, content: bytes) -> str:
    fake.urls[f"/files/{name}"] = content
    return f"{fake.address}/files/{name}"


def test_url_archive_with_good_checksums_is_extracted(fake, root):
    content = zip_bytes(DATASET)
    address = served(fake, "hotdog.zip", content)
    sha1, sha256 = hashlib.sha1(content).hexdigest(), hashlib.sha256(content).hexdigest()
    assert kaggle.url(address, root, sha1=sha1, sha256=sha256) == root
    assert tree(root) == DATASET
    kaggle.url(address, root, sha1=sha1, sha256=sha256)
    assert fake.count("/files/hotdog.zip") == 1


def test_url_plain_file_is_kept_under_its_name(fake, root):
    address = served(fake, "labels.csv", b"a,b\n")
    assert kaggle.url(address, root, filename="trainLabels.csv") == root / "trainLabels.csv"
    assert tree(root) == {"trainLabels.csv": b"a,b\n"}


def test_url_checksum_mismatch_removes_the_file(fake, root):
    address = served(fake, "hotdog.zip", zip_bytes(DATASET))
    with pytest.raises(CompkitError, match="sha1 checksum mismatch"):
        kaggle.url(address, root, sha1="0" * 40)
    assert tree(root) == {}
    assert not marker(root, "url-hotdog.zip").exists()
    assert not list(root.rglob("hotdog.zip*"))


def test_url_truncated_transfer_raises_and_leaves_no_file(fake, root):
    address = served(fake, "big.bin", bytes(range(256)) * 64)
    fake.truncated_urls.add("/files/big.bin")
    with pytest.raises(CompkitError, match="run the command again"):
        kaggle.url(address, root)
    assert tree(root) == {}
    assert not list(root.rglob("big.bin*"))


def test_url_leftover_part_file_is_redone(fake, root):
    address = served(fake, "labels.csv", b"a,b\n1,2\n")
    staging = root / kaggle.STATE_FOLDER / "partial" / "url-labels.csv"
    staging.mkdir(parents=True)
    (staging / "labels.csv.part").write_bytes(b"a,")
    assert kaggle.url(address, root).read_bytes() == b"a,b\n1,2\n"
    assert not (staging / "labels.csv.part").exists()


def test_url_not_found_names_the_address_without_its_query(fake, root):
    with pytest.raises(CompkitError, match="answered 404") as caught:
        kaggle.url(f"{fake.address}/files/missing.zip?token=secret-query", root)
    assert "secret-query" not in str(caught.value)


def test_download_force_reaches_the_helpers_a_plugin_calls(fake, tmp_path):
    from compkit import pipeline
    from compkit.places import Places

    fake.competitions["digit-recognizer"] = {"train.csv": b"label,pixel0\n1,0\n"}
    where = Places(data=tmp_path / "data")
    pipeline.download("digits", where)
    pipeline.download("digits", where)
    assert fake.count("DownloadDataFiles") == 1  # already there: nothing fetched
    fake.competitions["digit-recognizer"]["train.csv"] = b"label,pixel0\n2,0\n"
    pipeline.download("digits", where, force=True)
    assert fake.count("DownloadDataFiles") == 2
    assert (tmp_path / "data" / "digits" / "train.csv").read_bytes() == b"label,pixel0\n2,0\n"


# ---- a server that stalls or drops the connection ----


@pytest.fixture
def quick(monkeypatch):
    """Half a second without an answer is a timeout; idempotent calls are tried 3 times."""
    monkeypatch.setenv("COMPKIT_NET_TIMEOUT", "0.5")
    monkeypatch.setenv("COMPKIT_NET_RETRIES", "2")


def timed(call) -> tuple[str, float]:
    """The CompkitError message ``call`` raises, and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(CompkitError) as caught:
        call()
    return str(caught.value), time.monotonic() - start


IDEMPOTENT_CALLS = {
    "DownloadDataFiles": lambda root: kaggle.competition_files(SLUG, root),
    "DownloadDataFile": lambda root: kaggle.competition_file(SLUG, "train.csv", root),
    "DownloadDataset": lambda root: kaggle.dataset("owner/hotdog", root),
    "ListSubmissions": lambda root: kaggle.submissions(SLUG),
}


@pytest.mark.parametrize("method", sorted(IDEMPOTENT_CALLS))
def test_a_stalled_api_call_gives_up_soon_after_bounded_retries(fake, root, quick, monkeypatch, method):
    monkeypatch.setenv("COMPKIT_NET_RETRIES", "1")
    fake.faults[method] = "stall"
    message, seconds = timed(lambda: IDEMPOTENT_CALLS[method](root))
    assert seconds < 6
    assert fake.count(method) == 2  # the first try and one retry, no more
    assert "no answer within 0.5 s" in message and "tried 2 times" in message
    assert "COMPKIT_NET_TIMEOUT" in message and "run again" in message
    assert "\n" not in message
    assert tree(root) == {}


def test_a_reset_connection_is_retried_then_named(fake, root, quick, capsys):
    fake.faults["DownloadDataFiles"] = "reset"
    message, _ = timed(lambda: kaggle.competition_files(SLUG, root))
    assert fake.count("DownloadDataFiles") == 3
    assert "Could not reach Kaggle while downloading competition 'toy-competition'" in message
    assert "ConnectionResetError" in message and "compkit download NAME --demo" in message
    assert capsys.readouterr().err.count("trying again in") == 2  # each retry is announced


def test_a_transfer_stalled_mid_file_gives_up_and_the_next_run_starts_clean(fake, root, quick, monkeypatch):
    monkeypatch.setenv("COMPKIT_NET_RETRIES", "1")
    fake.faults["download"] = "stall"
    message, seconds = timed(lambda: kaggle.competition_files(SLUG, root))
    assert seconds < 6
    assert sum(method == "GET" for method, _, _ in fake.requests) == 2
    assert "no answer within 0.5 s" in message and "tried 2 times" in message
    assert tree(root) == {} and not marker(root, f"competition-{SLUG}").exists()
    fake.faults.clear()  # Kaggle answers again
    kaggle.competition_files(SLUG, root)
    assert tree(root) == COMPETITION
    assert marker(root, f"competition-{SLUG}").exists()
    assert not (root / kaggle.STATE_FOLDER / "partial").exists()  # no half file left behind


def test_a_stalled_plain_url_gives_up_and_leaves_no_part_file(fake, root, quick):
    address = served(fake, "big.bin", bytes(range(256)) * 64)
    fake.faults["download"] = "stall"
    message, seconds = timed(lambda: kaggle.url(address, root))
    assert seconds < 8
    assert fake.count("/files/big.bin") == 3
    assert "could not download" in message and "no answer within 0.5 s" in message
    assert not list(root.rglob("big.bin*"))
    fake.faults.clear()
    assert kaggle.url(address, root).read_bytes() == bytes(range(256)) * 64


@pytest.mark.parametrize("method", ["StartSubmissionUpload", "CreateSubmission"])
def test_the_calls_that_submit_are_never_retried(fake, tmp_path, quick, method):
    fake.faults[method] = "stall"
    submission = tmp_path / "submission.csv"
    submission.write_text("id,label\n1,cat\n")
    message, seconds = timed(lambda: kaggle.submit(SLUG, submission, "once"))
    assert seconds < 4
    assert fake.count("StartSubmissionUpload") == 1
    assert fake.count("CreateSubmission") == (method == "CreateSubmission")
    assert "no answer within 0.5 s" in message
    if method == "CreateSubmission":  # it may have gone through: say how to check instead of "run again"
        assert "may have received it" in message and f"kaggle competitions submissions {SLUG}" in message
    else:
        assert f"Could not reach Kaggle while submitting {submission} to '{SLUG}'" in message


@pytest.mark.parametrize("fault", ["stall", "reset"])
def test_a_failing_upload_is_retried_a_bounded_number_of_times(fake, tmp_path, quick, fault):
    fake.faults["upload"] = fault
    submission = tmp_path / "submission.csv"
    submission.write_text("id,label\n1,cat\n")
    message, seconds = timed(lambda: kaggle.submit(SLUG, submission, "x"))
    assert seconds < 8
    assert sum(method == "PUT" for method, _, _ in fake.requests) == 3
    assert fake.created == [] and fake.count("CreateSubmission") == 0
    assert f"uploading {submission} to Kaggle failed" in message and "Nothing was submitted" in message
    assert ("no answer within 0.5 s" if fault == "stall" else "ConnectionResetError") in message
    fake.faults.clear()
    assert kaggle.submit(SLUG, submission, "x")["ref"] == 1001
    assert len(fake.created) == 1


def test_cli_download_gives_up_in_one_line_then_works_when_kaggle_answers(fake, tmp_path, quick):
    from click.testing import CliRunner

    from compkit.cli import cli

    fake.competitions["digit-recognizer"] = {"train.csv": b"label,pixel0\n1,0\n"}
    fake.faults["DownloadDataFiles"] = "stall"
    arguments = ["download", "digits", "--data-dir", str(tmp_path / "data")]
    start = time.monotonic()
    result = CliRunner().invoke(cli, arguments)
    assert time.monotonic() - start < 8
    assert result.exit_code == 1
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "downloading competition 'digit-recognizer'" in error and "no answer within 0.5 s" in error
    fake.faults.clear()
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "digits" / "train.csv").exists()
    assert not (tmp_path / "data" / "digits" / kaggle.STATE_FOLDER / "partial").exists()


@pytest.mark.parametrize("name, value", [("COMPKIT_NET_TIMEOUT", "soon"), ("COMPKIT_NET_RETRIES", "1.5")])
def test_network_settings_must_be_numbers(fake, root, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(CompkitError, match=name):
        kaggle.competition_files(SLUG, root)
    assert fake.requests == []


# ---- credentials a server repeats back ----

ODD_KEY = "k3y/with+odd=chars&more?0123456789"


def every_form(username: str, secret: str) -> set[str]:
    """The credential as the server may repeat it: raw, base64 (of user:key and alone), URL-quoted."""
    texts = [secret]
    for plain in (f"{username}:{secret}", secret):
        encoded = base64.b64encode(plain.encode()).decode()
        texts += [encoded, encoded.rstrip("=")]
    return {form for text in texts for form in (text, quote(text), quote(text, safe=""), quote_plus(text))}


def test_redact_removes_every_form_of_the_key(fake, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", ODD_KEY)
    forms = every_form(fake.username, ODD_KEY)
    assert len(forms) >= 8  # the key's odd characters make the quoted forms differ
    text = kaggle._redact(" | ".join(sorted(forms)))
    assert not [form for form in forms if form in text]
    assert text.count("***") >= len(forms) - 2


@pytest.mark.parametrize("credential", ["key", "access token"])
def test_credentials_echoed_in_a_400_never_reach_the_cli_output(fake, tmp_path, monkeypatch, credential):
    from click.testing import CliRunner

    from compkit.cli import cli

    if credential == "key":
        fake.key = ODD_KEY
        monkeypatch.setenv("KAGGLE_KEY", ODD_KEY)
        forms = every_form(fake.username, ODD_KEY)
    else:
        monkeypatch.delenv("KAGGLE_USERNAME")
        monkeypatch.delenv("KAGGLE_KEY")
        fake.access_token = "t0ken/" + ODD_KEY
        monkeypatch.setenv("KAGGLE_API_TOKEN", fake.access_token)
        forms = every_form(fake.username, fake.access_token)
    fake.competitions["digit-recognizer"] = {"train.csv": b"label\n1\n"}
    fake.errors["digit-recognizer"] = 400
    result = CliRunner().invoke(cli, ["download", "digits", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert fake.count("DownloadDataFiles") == 1  # the server really answered with the echo
    output = result.stdout + result.stderr
    assert not [form for form in forms if form in output]
    assert "Kaggle answered 400 while downloading competition 'digit-recognizer'" in output
    assert "Bad request. Authorization: " in output and "***" in output  # still says what happened


def test_credentials_echoed_to_submit_are_redacted_everywhere(fake, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    fake.key = ODD_KEY
    monkeypatch.setenv("KAGGLE_KEY", ODD_KEY)
    forms = every_form(fake.username, ODD_KEY)
    submission = tmp_path / "submission.csv"
    submission.write_text("id,label\n1,cat\n")
    basic = base64.b64encode(f"{fake.username}:{ODD_KEY}".encode()).decode()
    fake.create_message = f"Submitted with key {ODD_KEY}, basic {basic}, quoted {quote_plus(ODD_KEY)}"
    result = kaggle.submit(SLUG, submission, "ok")  # its "submitted" line repeats the server's message
    fake.errors[SLUG] = 400
    with pytest.raises(CompkitError) as caught:
        kaggle.submit(SLUG, submission, "echoed")
    captured = capsys.readouterr()
    everything = "\n".join([str(caught.value), result["message"], captured.out, captured.err, caplog.text])
    assert not [form for form in forms if form in everything]
    assert (
        "Kaggle answered 400 while submitting" in str(caught.value)
        and "Authorization: Basic ***" in everything
    )
    assert "Submitted with key ***" in captured.err
