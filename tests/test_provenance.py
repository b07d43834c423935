"""TrackedTensor: the provenance of every output is the union of its inputs' provenances."""

import torch
from pyro.ops.provenance import detach_provenance, get_provenance

from ppgen.provenance import TrackedTensor, track


def test_union_through_arithmetic_indexing_and_sequences():
    a = track(torch.randn(3), frozenset({"a"}))
    b = track(torch.randn(3, 3), frozenset({"b"}))
    index = track(torch.tensor([0, 2]), frozenset({"z"}))
    plain = torch.ones(3)
    assert get_provenance(a + plain) == {"a"}
    assert get_provenance(b[index]) == {"b", "z"}
    assert get_provenance(torch.stack([a, plain, a * 2])) == {"a"}
    assert get_provenance(torch.cat((a, b[0]))) == {"a", "b"}
    assert get_provenance(torch.where(a > 0, a, b.sum(0))) == {"a", "b"}
    assert get_provenance(plain * 2) == frozenset()


def test_tuple_results_keep_their_type_and_provenance():
    b = track(torch.randn(4, 3), frozenset({"b"}))
    values, indices = torch.max(b, dim=-1)
    result = b.max(-1)
    assert type(result).__name__ == "max" and torch.equal(result.values, detach_provenance(values))
    assert get_provenance(values) == {"b"} and get_provenance(indices) == {"b"}
    first, second = torch.split(b, 2)
    assert isinstance(first, TrackedTensor) and get_provenance(second) == {"b"}


def test_values_are_those_of_plain_tensors():
    x, y = torch.randn(5), torch.randn(5)
    tracked = track(x, frozenset({"x"})) * track(y, frozenset({"y"})) + 1.0
    assert torch.equal(detach_provenance(tracked), x * y + 1.0)
    assert get_provenance(tracked) == {"x", "y"}
    retracked = track(tracked, frozenset({"site"}))
    assert get_provenance(retracked) == {"site"} and torch.equal(detach_provenance(retracked), x * y + 1.0)
