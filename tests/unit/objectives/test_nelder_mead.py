import numpy as np
import pytest

from align.objectives.nelder_mead import NelderMead


def drive(nm, f):
    while (x := nm.ask()) is not None:
        nm.tell(f(x))
    return nm.best()


def quad(x):
    return float((x[0] - 1.0) ** 2 + 2.0 * (x[1] + 0.5) ** 2)


def test_converges_on_a_quadratic():
    nm = NelderMead([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]], tol=1e-10, max_evals=400, cache_tol=0.0)
    x, fx = drive(nm, quad)
    np.testing.assert_allclose(x, [1.0, -0.5], atol=1e-3)
    assert fx < 1e-6


def test_one_dimension_and_budget():
    nm = NelderMead([[0.0], [1.0]], tol=0.0, max_evals=7, cache_tol=0.0)
    x, fx = drive(nm, lambda x: float((x[0] - 3.0) ** 2))
    assert len(nm.history) == 7 and nm.done
    assert fx < 9.0  # better than both starting points (f=9 at 0, f=4 at 1)
    assert fx <= 4.0


def test_first_asks_are_the_initial_simplex():
    simplex = [[0.1, 0.2], [0.3, 0.2], [0.1, 0.4]]
    nm = NelderMead(simplex)
    seen = []
    for _ in range(3):
        seen.append(nm.ask().tolist())
        nm.tell(1.0 + len(seen))
    assert seen == simplex


def test_memoised_points_are_not_asked_again():
    # A simplex whose reflection lands on an evaluated point (within cache_tol): no new evaluation.
    calls = []

    def f(x):
        calls.append(x.copy())
        return float(abs(x[0] - 0.5))

    nm = NelderMead([[0.0], [1.0]], tol=0.0, max_evals=30, cache_tol=5e-3)
    drive(nm, f)
    pts = np.array(calls)[:, 0]
    # every pair of handed-out points differs by at least cache_tol
    gaps = np.abs(pts[:, None] - pts[None, :])[~np.eye(len(pts), dtype=bool)]
    assert (gaps >= 5e-3).all()
    # with cache_tol 0 the same run asks at least as many points
    nm0 = NelderMead([[0.0], [1.0]], tol=0.0, max_evals=30, cache_tol=0.0)
    n0 = 0
    while (x := nm0.ask()) is not None:
        nm0.tell(float(abs(x[0] - 0.5)))
        n0 += 1
    assert n0 >= len(calls)


def test_cache_hit_just_inside_and_miss_just_outside():
    nm = NelderMead([[0.0], [1.0]], cache_tol=5e-3)
    nm.history = [([0.2], 7.0)]
    assert nm._cached(np.array([0.2049])) == 7.0
    assert nm._cached(np.array([0.2051])) is None


def test_state_replays_exactly():
    nm = NelderMead([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]], tol=0.0, max_evals=25)
    for _ in range(9):
        nm.tell(quad(nm.ask()))
    other = NelderMead([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]], tol=0.0, max_evals=25)
    other.load_state_dict(nm.state_dict())
    np.testing.assert_array_equal(other.ask(), nm.ask())
    wrong = NelderMead([[0.0, 0.0], [0.7, 0.0], [0.0, 0.5]], tol=0.0, max_evals=25)
    with pytest.raises(ValueError, match="does not replay"):
        wrong.load_state_dict(nm.state_dict())


def test_bounds_project_points_and_the_memo_sees_the_projected_point():
    # the minimum (x = -1) is outside [0, 1]: the search ends at the bound, each point asked once
    nm = NelderMead([[0.9], [0.6]], tol=0.0, max_evals=20, cache_tol=1e-3, bounds=([0.0], [1.0]))
    asked = []
    while (x := nm.ask()) is not None:
        assert 0.0 <= x[0] <= 1.0
        asked.append(round(float(x[0]), 6))
        nm.tell(float((x[0] + 1.0) ** 2))
    assert nm.best()[0][0] == 0.0
    assert len(asked) == len(set(asked))  # the clipped point 0.0 was evaluated once, then memoised
