"""models/isolation.py: a failing batch is re-run item by item, so only the bad items fail."""

from __future__ import annotations

from models.isolation import Failure, run_isolated


class Model:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError(f"negative input in {items}")
        return [i * 10 for i in items]


def test_a_good_batch_runs_once():
    model = Model()
    assert run_isolated(model, [1, 2, 3]) == [10, 20, 30]
    assert model.calls == [[1, 2, 3]]


def test_a_failing_batch_runs_item_by_item_and_only_the_bad_items_fail():
    model = Model()
    out = run_isolated(model, [1, -2, 3, -4])
    assert out[0] == 10 and out[2] == 30
    assert isinstance(out[1], Failure) and "negative input in [-2]" in str(out[1].error)
    assert isinstance(out[3], Failure) and isinstance(out[3].error, ValueError)
    assert model.calls == [[1, -2, 3, -4], [1], [-2], [3], [-4]]


def test_a_wrong_output_count_is_a_failure_that_says_so():
    (out,) = run_isolated(lambda items: [], [7])
    assert isinstance(out, Failure) and "0 outputs for 1 inputs" in str(out.error)


def test_an_empty_batch_gives_nothing():
    assert run_isolated(Model(), []) == []
