"""Two keys cannot see or touch each other's jobs, through any endpoint (fake engine, live server)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import LiveServer, add_keys, bearer, wait_done, wait_export
from tests.media import make_video_with_speech


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video_with_speech("private words of alice", tmp_path_factory.mktemp("m") / "alice.mp4")


def test_two_keys_cannot_see_or_touch_each_others_jobs(make_server: Callable[..., LiveServer], tmp_path: Path, clip: Path) -> None:
    keys = add_keys(tmp_path / "data", "alice", "bob")
    live = make_server(**{"auth.enabled": True})
    with live.client(headers=bearer(keys["alice"])) as alice, live.client(headers=bearer(keys["bob"])) as bob:
        r = alice.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes())}, data={"language": "en"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert wait_done(alice, job_id)["status"] == "done"
        r = alice.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft", "container": "mkv"})
        assert r.status_code == 202, r.text
        export_id = r.json()["id"]
        assert wait_export(alice, job_id, export_id)["status"] == "done"
        bob_job = bob.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes())}, data={"language": "en"}).json()["id"]
        wait_done(bob, bob_job)

        # The listing shows only the caller's jobs.
        assert [j["id"] for j in alice.get("/v1/jobs").json()["jobs"]] == [job_id]
        assert [j["id"] for j in bob.get("/v1/jobs").json()["jobs"]] == [bob_job]
        # A cursor of another owner's job is not a way in either.
        assert bob.get("/v1/jobs", params={"cursor": job_id}).status_code == 422

        segments = alice.get(f"/v1/jobs/{job_id}/transcript").json()["segments"]
        base = f"/v1/jobs/{job_id}"
        attempts = [
            ("GET", base, {}),
            ("GET", f"{base}/events", {}),
            ("GET", f"{base}/transcript", {}),
            ("GET", f"{base}/transcript?format=srt", {}),
            ("PUT", f"{base}/transcript", {"json": {"segments": [{"start": 0, "end": 1, "text": "bob was here"}]}}),
            ("POST", f"{base}/exports", {"json": {"mode": "soft", "container": "mkv"}}),
            ("GET", f"{base}/exports/{export_id}", {}),
            ("GET", f"{base}/exports/{export_id}/file", {}),
            ("DELETE", f"{base}/exports/{export_id}", {}),
            ("DELETE", base, {}),
            # Bob's own job id with Alice's export id: the export belongs to the job, not to the id alone.
            ("GET", f"/v1/jobs/{bob_job}/exports/{export_id}", {}),
            ("GET", f"/v1/jobs/{bob_job}/exports/{export_id}/file", {}),
            ("DELETE", f"/v1/jobs/{bob_job}/exports/{export_id}", {}),
        ]
        for method, path, kw in attempts:
            r = bob.request(method, path, **kw)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert r.json()["error"]["code"] in ("job_not_found", "export_not_found")
            assert "private" not in r.text

        # Indistinguishable from a job that does not exist at all.
        ghost = bob.get("/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA")
        theft = bob.get(base)
        assert ghost.status_code == theft.status_code == 404 and ghost.json() == theft.json()

        # Alice's job is untouched: status, transcript, export, file.
        job = alice.get(base).json()
        assert job["status"] == "done" and [e["id"] for e in job["exports"]] == [export_id]
        assert alice.get(f"{base}/transcript").json()["segments"] == segments
        assert alice.get(f"{base}/exports/{export_id}/file").status_code == 200
        assert alice.delete(base).status_code == 204
        assert alice.get(base).status_code == 404
        assert bob.get(f"/v1/jobs/{bob_job}").json()["status"] == "done"


def test_jobs_made_without_keys_are_not_visible_to_keys(make_server: Callable[..., LiveServer], tmp_path: Path, clip: Path) -> None:
    data = tmp_path / "data"
    open_server = make_server(data_dir=data)
    with open_server.client() as client:
        job_id = client.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes())}).json()["id"]
        wait_done(client, job_id)
    open_server.stop()
    keys = add_keys(data, "alice")
    live = make_server(data_dir=data, **{"auth.enabled": True})
    with live.client(headers=bearer(keys["alice"])) as alice:
        assert alice.get(f"/v1/jobs/{job_id}").status_code == 404
        assert alice.get("/v1/jobs").json()["jobs"] == []
