"""The owner reviews plan requests in the CLI, over REST and from Python: the same facts in each."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from typer.testing import CliRunner

import veil
from veil.cli import app
from veil.node import Node
from veil.node.server import serve_in_thread

EMAIL, PASSWORD = "owner@plans.test", "owner-password-9"
runner = CliRunner()


@pytest.fixture
def url() -> Iterator[str]:
    node = Node("plans-node", owner_email=EMAIL, owner_password=PASSWORD)
    with serve_in_thread(node) as u:
        yield u


def _cli(*args: str) -> str:
    import veil.cli

    veil.cli.console.width = 200  # made at import, with the terminal's width then
    result = runner.invoke(
        app, list(args), env={"VEIL_EMAIL": EMAIL, "VEIL_PASSWORD": PASSWORD, "COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result.output


def _request(url: str) -> tuple[veil.Plan, object, int]:
    owner = veil.connect(url, email=EMAIL, password=PASSWORD)
    owner.datasets.create("scans", private=torch.randn(6, 3) + 9, mock=torch.ones(6, 3))
    owner.create_user("ds@plans.test", "scientist-pw-1")
    sci = veil.connect(url, email="ds@plans.test", password="scientist-pw-1")

    @veil.plan
    def column_max(x: torch.Tensor) -> torch.Tensor:
        return x.amax(0) * 2

    column_max.build(torch.zeros(6, 3))
    req = column_max.request(sci, dataset="scans", reason="max per column", runs=4)
    owner.close()
    return column_max, sci, req.id


def test_cli_lists_shows_and_approves_a_plan_request(url: str) -> None:
    p, sci, rid = _request(url)
    listed = _cli("plans", "list", "--url", url)
    assert "column_max" in listed and p.hash[:16] in listed and "0/4" in listed
    shown = _cli("plans", "show", str(rid), "--url", url)
    assert p.hash in shown and "amax" in shown and "scans" in shown
    assert "float32[3] [2, 2, 2]" in shown  # the result on the mock (ones): never the data
    assert "nothing by itself" in shown
    _cli("plans", "approve", str(rid), "--url", url, "--note", "ok")
    out = p(sci.datasets["scans"].private)
    assert out.private and "1/4" in _cli("plans", "list", "--url", url)
    sci.close()


def test_rest_api_shows_plan_requests_and_decides_them(url: str) -> None:
    p, sci, rid = _request(url)
    with httpx.Client(base_url=url) as http:
        token = http.post("/api/v1/login", json={"email": EMAIL, "password": PASSWORD}).json()
        auth = {"Authorization": f"Bearer {token['token']}"}
        items = http.get("/api/v1/plans", headers=auth).json()["items"]
        assert [(i["hash"], i["runs"], i["status"]) for i in items] == [(p.hash, 4, "pending")]
        one = http.get(f"/api/v1/plans/{rid}", headers=auth).json()
        assert one["code"].startswith("def column_max(x: float32[6, 3]):")
        denied = http.post(f"/api/v1/plans/{rid}/deny", headers=auth, json={"note": "no"})
        assert denied.status_code == 200 and denied.json()["status"] == "denied"
        sci_token = http.post("/api/v1/login", json={"email": "ds@plans.test",
                                                     "password": "scientist-pw-1"}).json()  # fmt: skip
        sci_auth = {"Authorization": f"Bearer {sci_token['token']}"}
        forbidden = http.post(f"/api/v1/plans/{rid}/approve", headers=sci_auth)
        assert forbidden.status_code == 403  # a scientist cannot approve their own plan
    with pytest.raises(veil.PermissionDenied):
        p(sci.datasets["scans"].private)
    sci.close()


def test_python_review_matches_and_scientists_see_only_their_own(url: str) -> None:
    p, sci, rid = _request(url)
    owner = veil.connect(url, email=EMAIL, password=PASSWORD)
    r = veil.plans.review(owner, rid)
    assert (r.hash, r.dataset, r.runs, r.requester) == (p.hash, "scans", 4, "ds@plans.test")
    owner.create_user("other@plans.test", "other-pw-123")
    other = veil.connect(url, email="other@plans.test", password="other-pw-123")
    assert veil.plans.reviews(other) == []
    with pytest.raises(veil.ObjectNotFound):
        veil.plans.review(other, rid)
    assert [x.request for x in veil.plans.reviews(sci)] == [rid]
    for w in (owner, other, sci):
        w.close()


def test_cli_turns_review_only_on_and_off(url: str) -> None:
    assert "only as approved plans" in _cli("plans", "require-review", "on", "--url", url)
    assert "only as approved plans" in _cli("plans", "require-review", "--url", url)
    assert "under the privacy rules" in _cli("plans", "require-review", "off", "--url", url)


def test_cli_turns_the_plan_outputs_release_policy_on_and_off(url: str) -> None:
    assert "are released" in _cli("plans", "release-outputs", "on", "--url", url)
    assert "not released" in _cli("plans", "release-outputs", "off", "--url", url)
