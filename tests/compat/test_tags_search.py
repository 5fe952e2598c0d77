"""PySyft 0.2's tags and search (``tensor.tag``, ``describe``, ``worker.search``)."""

from __future__ import annotations

import pytest
import torch

import veil as sy


def test_tags_travel_with_send_and_search_finds_them() -> None:
    bob = sy.VirtualWorker(sy.TorchHook(torch), id="bob")
    x = torch.tensor([1, 2, 3]).tag("#fun", "#mnist").describe("The images in the MNIST set")
    y = torch.tensor([4, 5]).tag("#fun", "#boston")
    xp, yp = x.send(bob), y.send(bob)
    assert {p.id for p in bob.search(["#fun"])} == {xp.id, yp.id}
    (found,) = bob.search(["#fun", "#boston"])
    assert found.id == yp.id and torch.equal(found.get(), y)
    assert [p.id for p in bob.request_search("#mnist")] == [xp.id]
    assert [p.id for p in bob.search("MNIST")] == [xp.id]  # a plain word searches descriptions
    assert bob.search(["#nothing"]) == []
    with pytest.raises(ValueError, match="starting with '#'"):
        torch.ones(1).tag("no hash")


def test_search_shows_only_what_the_caller_may_see() -> None:
    owner = sy.VirtualWorker("clinic")
    owner.create_user("a@x.org", "pw-123456")
    owner.create_user("b@x.org", "pw-123456")
    a, b = owner.login("a@x.org", "pw-123456"), owner.login("b@x.org", "pw-123456")
    mine = torch.tensor([1.0]).tag("#secret").send(a)
    assert [p.id for p in a.search("#secret")] == [mine.id]
    assert b.search("#secret") == [] and b._objects == {}  # another user's objects stay hidden
