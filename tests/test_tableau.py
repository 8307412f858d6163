"""Butcher tableaux checked against Runge–Kutta theory, not against nodeopt's own numbers.

The order conditions come from Butcher's theory of rooted trees: a method with
weights ``b`` and stage matrix ``A`` has order ``p`` iff, for every rooted tree
``τ`` with at most ``p`` vertices,

    b · Φ(τ) = 1 / γ(τ)

where ``Φ`` (the elementary weight, a vector over stages) is ``1`` for the
single vertex and the elementwise product of ``A Φ(child)`` over the children
of the root otherwise, and ``γ`` (the density) is ``|τ| · Π γ(child)``.

The trees are generated here, the conditions are evaluated in exact rational
arithmetic on the stored float coefficients (``Fraction(float)`` is exact), so
a residual measures the coefficients themselves, not the test's rounding.

Measured worst relative residuals ``|γ b·Φ − 1|`` up to the claimed order:
rk4/rk38/bosh3/heun*/euler/midpoint ≤ 6e-17, dopri5 4e-15, dopri8 6e-15 (its
rational approximations of the published coefficients are that good), tsit5
5e-14 (coefficients published to 16 digits). ``ORDER_TOL = 1e-12`` is honest
for all of them, with a margin of 20 over the worst case (tsit5).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from nodeopt.solvers import METHODS, Tableau

# OEIS A000081: number of rooted trees with n vertices, n = 1..9.
KNOWN_TREE_COUNTS = (1, 1, 2, 4, 9, 20, 48, 115, 286)
MAX_TREE_ORDER = len(KNOWN_TREE_COUNTS)

ORDER_TOL = 1e-12        # relative residual allowed where a condition must hold
VIOLATION_MIN = 1e-6     # a condition "fails" when its relative residual exceeds this

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "rk38")
FSAL_METHODS = ("dopri5", "bosh3", "tsit5")
ALL_METHODS = ADAPTIVE + FIXED


# ---- rooted trees --------------------------------------------------------------
#
# A tree is the sorted tuple of its root's subtrees; the single vertex is ().
# Sorting recursively makes the representation canonical, so equal trees are
# equal tuples and a set removes duplicates.

LEAF: tuple = ()


def _canonical(children) -> tuple:
    return tuple(sorted(children))


def _attach_one_leaf(tree: tuple):
    """Every tree obtained from ``tree`` by attaching one new leaf to one of its vertices."""
    yield _canonical(tree + (LEAF,))
    for i, child in enumerate(tree):
        for bigger in _attach_one_leaf(child):
            yield _canonical(tree[:i] + (bigger,) + tree[i + 1:])


@functools.lru_cache(maxsize=None)
def rooted_trees(n: int) -> tuple:
    """All rooted trees with ``n`` vertices (each tree of order n ≥ 2 loses a leaf to one of order n − 1)."""
    if n == 1:
        return (LEAF,)
    return tuple(sorted({bigger for tree in rooted_trees(n - 1) for bigger in _attach_one_leaf(tree)}))


def tree_order(tree: tuple) -> int:
    return 1 + sum(tree_order(child) for child in tree)


def density(tree: tuple) -> int:
    """γ(τ) = |τ| · Π γ(children)."""
    g = tree_order(tree)
    for child in tree:
        g *= density(child)
    return g


def symmetry(tree: tuple) -> int:
    """σ(τ) = Π σ(children) · Π m! over the multiplicities m of identical children."""
    s = 1
    for child in tree:
        s *= symmetry(child)
    for m in Counter(tree).values():
        s *= math.factorial(m)
    return s


# ---- order conditions ------------------------------------------------------------

def _exact(values) -> list[Fraction]:
    return [Fraction(v) for v in values]


class ElementaryWeights:
    """Φ(τ) for one stage matrix, exactly, memoised over subtrees."""

    def __init__(self, a_rows):
        self.s = len(a_rows)
        self.a = [_exact(row) for row in a_rows]
        self._memo: dict = {}

    def __call__(self, tree: tuple) -> list[Fraction]:
        if tree not in self._memo:
            phi = [Fraction(1)] * self.s
            for child in tree:
                pc = self(child)
                a_pc = [sum((aij * pj for aij, pj in zip(row, pc)), Fraction(0)) for row in self.a]
                phi = [x * y for x, y in zip(phi, a_pc)]
            self._memo[tree] = phi
        return self._memo[tree]


@functools.lru_cache(maxsize=None)
def _weights_for(name: str) -> ElementaryWeights:
    return ElementaryWeights(METHODS[name].tableau.a)


def relative_residuals(name: str, weights, n: int) -> list[float]:
    """``γ(τ) · (w · Φ(τ)) − 1`` for every tree of order ``n``, in exact arithmetic."""
    phi_of = _weights_for(name)
    w = _exact(weights)
    out = []
    for tree in rooted_trees(n):
        value = sum((wi * p for wi, p in zip(w, phi_of(tree))), Fraction(0))
        out.append(float(value * density(tree) - 1))
    return out


def embedded_weights(tab: Tableau) -> list[Fraction]:
    """b_hat = b − b_error, exactly from the stored floats."""
    return [Fraction(b) - Fraction(e) for b, e in zip(tab.b, tab.b_error)]


# ---- the tree generator itself ---------------------------------------------------

def test_rooted_tree_counts_match_oeis_a000081():
    assert tuple(len(rooted_trees(n)) for n in range(1, MAX_TREE_ORDER + 1)) == KNOWN_TREE_COUNTS
    assert sum(len(rooted_trees(n)) for n in range(1, 9)) == 200


def test_generated_trees_have_the_requested_number_of_vertices():
    for n in range(1, MAX_TREE_ORDER + 1):
        assert all(tree_order(t) == n for t in rooted_trees(n))


def test_tree_densities_satisfy_the_monotone_labelling_identity():
    # α(τ) = n! / (γ(τ) σ(τ)) counts the increasing labellings of τ; summed over
    # all trees of order n they are the (n − 1)! recursive trees.
    for n in range(1, MAX_TREE_ORDER + 1):
        total = sum(Fraction(math.factorial(n), density(t) * symmetry(t)) for t in rooted_trees(n))
        assert total == math.factorial(n - 1)


def test_tree_densities_of_small_trees_match_butchers_table():
    # Order 3: the bushy tree [•,•] has γ = 3, the tall tree [[•]] has γ = 6.
    bushy3, tall3 = _canonical((LEAF, LEAF)), ((LEAF,),)
    assert sorted(density(t) for t in rooted_trees(3)) == [3, 6]
    assert density(bushy3) == 3 and density(tall3) == 6
    # Order 4: densities 4, 8, 12, 24.
    assert sorted(density(t) for t in rooted_trees(4)) == [4, 8, 12, 24]


# ---- order conditions of every shipped method ---------------------------------------

def test_every_shipped_method_is_covered():
    assert set(METHODS) == set(ALL_METHODS)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_weights_satisfy_every_order_condition_up_to_the_claimed_order(name):
    tab = METHODS[name].tableau
    for n in range(1, tab.order + 1):
        worst = max(abs(r) for r in relative_residuals(name, tab.b, n))
        assert worst <= ORDER_TOL, f"{name}: an order-{n} condition is violated by {worst:.2e}"


@pytest.mark.parametrize("name", ALL_METHODS)
def test_weights_violate_an_order_condition_one_beyond_the_claimed_order(name):
    tab = METHODS[name].tableau
    worst = max(abs(r) for r in relative_residuals(name, tab.b, tab.order + 1))
    assert worst > VIOLATION_MIN, f"{name} satisfies all order-{tab.order + 1} conditions: order is understated"


@pytest.mark.parametrize("name", ADAPTIVE)
def test_embedded_weights_satisfy_every_order_condition_up_to_the_error_order(name):
    tab = METHODS[name].tableau
    b_hat = embedded_weights(tab)
    for n in range(1, tab.error_order + 1):
        worst = max(abs(r) for r in relative_residuals(name, b_hat, n))
        assert worst <= ORDER_TOL, f"{name}: embedded order-{n} condition violated by {worst:.2e}"


@pytest.mark.parametrize("name", ADAPTIVE)
def test_embedded_weights_violate_an_order_condition_one_beyond_the_error_order(name):
    tab = METHODS[name].tableau
    worst = max(abs(r) for r in relative_residuals(name, embedded_weights(tab), tab.error_order + 1))
    assert worst > VIOLATION_MIN


@pytest.mark.parametrize("name", ALL_METHODS)
def test_adaptive_flag_is_true_exactly_for_the_embedded_pairs(name):
    tab = METHODS[name].tableau
    assert tab.adaptive == (name in ADAPTIVE)
    assert (tab.b_error is not None) == (name in ADAPTIVE)


# ---- first same as last -----------------------------------------------------------

@pytest.mark.parametrize("name", ALL_METHODS)
def test_fsal_is_true_exactly_for_dopri5_bosh3_and_tsit5(name):
    assert METHODS[name].tableau.fsal == (name in FSAL_METHODS)


def test_fsal_is_derived_from_the_coefficients_not_the_name():
    # Bogacki–Shampine's numbers under another name are still FSAL ...
    bs = Tableau("my_bs", c=(0.0, 0.5, 0.75, 1.0), a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
                 b=(2 / 9, 1 / 3, 4 / 9, 0.0), order=3)
    assert bs.fsal
    # ... while classical RK4 (last stage at c=1, but b_4 != 0 and row 4 != b) is not,
    rk4 = Tableau("my_rk4", c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                  b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4)
    assert not rk4.fsal
    # ... and neither is a method with b_s = 0 whose last row is not b.
    not_fsal = Tableau("ralston_padded", c=(0.0, 2 / 3, 1.0), a=((), (2 / 3,), (0.5, 0.5)),
                       b=(0.25, 0.75, 0.0), order=2)
    assert not not_fsal.fsal


# ---- validation on construction ---------------------------------------------------

# A valid base: Bogacki–Shampine 3(2) with its embedded weights (FSAL).
_BS_C = (0.0, 0.5, 0.75, 1.0)
_BS_A = ((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9))
_BS_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_BS_E = tuple(x - y for x, y in zip(_BS_B, (7 / 24, 1 / 4, 1 / 3, 1 / 8)))


def _bs(**changes) -> Tableau:
    kwargs = dict(name="bs", c=_BS_C, a=_BS_A, b=_BS_B, order=3, b_error=_BS_E, error_order=2)
    kwargs.update(changes)
    return Tableau(**kwargs)


def test_valid_base_tableau_constructs():
    # The control for every case below: each invalid tableau differs from this one in one place.
    tab = _bs()
    assert tab.stages == 4 and tab.adaptive and tab.fsal
    assert _bs(hermite=True).has_dense_output


_INVALID = {
    "row_sum_differs_from_c": (dict(a=((), (0.5,), (0.0, 0.7), _BS_A[3])), r"row 2 of a sums to .*c\[2\]"),
    "weights_do_not_sum_to_one": (dict(b=(2 / 9, 1 / 3, 4 / 9, 0.1)), r"weights b sum to .*must sum to 1"),
    "error_weights_do_not_sum_to_zero": (dict(b_error=(0.1, 0.0, 0.0, 0.0)), r"b_error sum to .*must sum to 0"),
    "c_has_fewer_entries_than_stages": (dict(c=_BS_C[:3]), r"one entry per stage"),
    "b_has_more_entries_than_stages": (dict(b=_BS_B + (0.0,)), r"one entry per stage"),
    "no_stages_at_all": (dict(c=(), a=(), b=()), r"one entry per stage"),
    "row_not_strictly_lower_triangular": (dict(a=((), (0.5,), (0.0, 0.75, 0.0), _BS_A[3])),
                                          r"row 2 of a must hold 2 entries"),
    "b_error_wrong_length": (dict(b_error=_BS_E[:3]), r"b_error needs 4 entries, got 3"),
    "b_mid_wrong_length": (dict(b_mid=(0.1, 0.2, 0.2)), r"b_mid needs 4 entries, got 3"),
    "first_node_not_zero": (dict(c=(0.1, 0.5, 0.75, 1.0), a=((), (0.5,), (0.0, 0.75), _BS_A[3])),
                            r"c\[0\] == 0"),
    "b_error_without_error_order": (dict(error_order=None), r"b_error and error_order together"),
    "error_order_without_b_error": (dict(b_error=None), r"b_error and error_order together"),
}


@pytest.mark.parametrize("case", sorted(_INVALID))
def test_inconsistent_tableau_raises_value_error_naming_the_problem(case):
    changes, message = _INVALID[case]
    with pytest.raises(ValueError, match=message):
        _bs(**changes)


_RK4 = dict(c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
            order=4)


@pytest.mark.parametrize("dense", [dict(hermite=True), dict(b_mid=(0.2, 0.1, 0.1, 0.1))], ids=["hermite", "b_mid"])
def test_dense_output_on_a_non_fsal_tableau_raises_value_error(dense):
    Tableau("rk4_plain", **_RK4)  # the same numbers without dense output are valid
    with pytest.raises(ValueError, match=r"dense output needs a first-same-as-last tableau"):
        Tableau("rk4_dense", **_RK4, **dense)


# ---- dense output -------------------------------------------------------------------

DENSE = {"dopri5": 4, "bosh3": 3}   # order of the interpolant (Shampine's quartic; cubic Hermite)


def _dense_vector(tab: Tableau, theta: float) -> np.ndarray:
    w = np.zeros(tab.stages)
    for j, x in tab.dense_weights(theta):
        w[j] = x
    return w


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_methods_declare_dense_output(name):
    assert METHODS[name].tableau.has_dense_output


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_weights_at_theta_zero_are_zero(name):
    tab = METHODS[name].tableau
    assert np.all(_dense_vector(tab, 0.0) == 0.0)


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_weights_at_theta_one_reproduce_b(name):
    tab = METHODS[name].tableau
    np.testing.assert_allclose(_dense_vector(tab, 1.0), np.array(tab.b), rtol=0, atol=1e-12)


def test_dopri5_dense_weights_at_half_step_are_shampines_midpoint_weights():
    tab = METHODS["dopri5"].tableau
    np.testing.assert_allclose(_dense_vector(tab, 0.5), np.array(tab.b_mid), rtol=0, atol=1e-12)


def test_dopri5_midpoint_weights_satisfy_the_order_four_conditions_at_half_step():
    # Shampine's y(t + h/2) is fourth order: b_mid · Φ(τ) = (1/2)^|τ| / γ(τ) for |τ| ≤ 4.
    tab = METHODS["dopri5"].tableau
    for n in range(1, 5):
        for tree in rooted_trees(n):
            value = sum(Fraction(w) * p for w, p in zip(tab.b_mid, _weights_for("dopri5")(tree)))
            assert abs(float(value * density(tree) - Fraction(1, 2 ** n))) <= ORDER_TOL


def _continuous_residuals(name: str, theta: float, n: int) -> list[float]:
    """``γ(τ) · (b(θ) · Φ(τ)) − θ^|τ|`` for the trees of order ``n`` (continuous order conditions)."""
    tab = METHODS[name].tableau
    w = _exact(_dense_vector(tab, theta))
    phi_of = _weights_for(name)
    target = Fraction(theta) ** n
    return [float(sum((wi * p for wi, p in zip(w, phi_of(t))), Fraction(0)) * density(t) - target)
            for t in rooted_trees(n)]


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_output_satisfies_continuous_order_conditions_up_to_its_order(name):
    # A continuous extension of order q: b(θ) · Φ(τ) = θ^|τ| / γ(τ) for all |τ| ≤ q and every θ.
    q = DENSE[name]
    for theta in (0.1, 0.3, 0.5, 0.7, 0.9):
        for n in range(1, q + 1):
            worst = max(abs(r) for r in _continuous_residuals(name, theta, n))
            assert worst <= ORDER_TOL, f"{name} θ={theta}: order-{n} continuous condition off by {worst:.2e}"


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_output_violates_a_continuous_order_condition_beyond_its_order(name):
    q = DENSE[name]
    worst = max(abs(r) for theta in (0.3, 0.5, 0.7) for r in _continuous_residuals(name, theta, q + 1))
    assert worst > VIOLATION_MIN
