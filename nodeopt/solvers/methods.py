"""The Runge–Kutta methods nodeopt ships, named as torchdiffeq names them.

Each method is a :class:`RungeKutta` object holding a :class:`Tableau`; the
numbers are the published ones (Dormand & Prince 1980, Prince & Dormand 1981,
Bogacki & Shampine 1989, Fehlberg 1969, Tsitouras 2011, Kutta 1901).
``RungeKutta(tableau)`` wraps any user tableau the same way.
"""

from __future__ import annotations

from typing import Union

from .tableau import Tableau


class RungeKutta:
    """An explicit Runge–Kutta method: a tableau and whether it adapts its steps.

    Args:
        tableau: the method's coefficients. A tableau with ``b_error`` is solved
            with adaptive step control, one without on a fixed grid.
    """

    tableau: Tableau

    def __init__(self, tableau: Tableau | None = None):
        if tableau is not None:
            self.tableau = tableau
        if not isinstance(getattr(self, "tableau", None), Tableau):
            raise TypeError(f"RungeKutta needs a Tableau, got {tableau!r}")

    @property
    def name(self) -> str:
        return self.tableau.name

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if type(self) is not RungeKutta else f"RungeKutta({self.name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RungeKutta) and other.tableau == self.tableau

    def __hash__(self) -> int:
        return hash(self.tableau)


# ---- adaptive pairs -----------------------------------------------------------

_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
# The embedded fourth-order weights torchdiffeq uses (Shampine 1986) rather than
# Hairer's 5179/57600, ...: both are fourth order; these make the step sequence
# under controller="i" identical to torchdiffeq's dopri5.
_DOPRI5_B_HAT = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)


def _minus(b, b_hat):
    return tuple(x - y for x, y in zip(b, b_hat))


DOPRI5 = Tableau(
    name="dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((),
       (1 / 5,),
       (3 / 40, 9 / 40),
       (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       _DOPRI5_B[:6]),
    b=_DOPRI5_B,
    order=5,
    b_error=_minus(_DOPRI5_B, _DOPRI5_B_HAT),
    error_order=4,
    # Shampine (1986): the solution at the middle of the step, to fourth order.
    b_mid=(6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2,
           -2691868925 / 45128329728 / 2, 187940372067 / 1594534317056 / 2,
           -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2),
)

_TSIT5_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
            -3.290069515436081, 2.324710524099774, 0.0)


def _first_column(c, rest):
    """Rows of ``a`` whose first entry makes the row sum equal ``c_i``."""
    return tuple((ci - sum(r),) + r if r else ((ci,) if ci else ()) for ci, r in zip(c, rest))


_TSIT5_C = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
TSIT5 = Tableau(
    name="tsit5",
    c=_TSIT5_C,
    a=_first_column(_TSIT5_C, (
        (),
        (),
        (0.3354806554923570,),
        (-6.359448489975075, 4.362295432869581),
        (-11.74888356406283, 7.495539342889836, -0.09249506636175525),
        (-12.92096931784711, 8.159367898576159, -0.071584973281401, -0.02826905039406838),
    )) + (_TSIT5_B[:6],),
    b=_TSIT5_B,
    order=5,
    # Tsitouras (2011), Table 1, with the sign of the last entry as it must be
    # for the error weights to sum to zero.
    b_error=(0.001780011052226, 0.000816434459657, -0.007880878010262, 0.144711007173263,
             -0.582357165452555, 0.458082105929187, -1 / 66),
    error_order=4,
)

_D8_C = (0.0, 1 / 18, 1 / 12, 1 / 8, 5 / 16, 3 / 8, 59 / 400, 93 / 200, 5490023248 / 9719169821,
         13 / 20, 1201146811 / 1299019798, 1.0, 1.0)
_D8_B = (14005451 / 335480064, 0.0, 0.0, 0.0, 0.0, -59238493 / 1068277825, 181606767 / 758867731,
         561292985 / 797845732, -1041891430 / 1371343529, 760417239 / 1151165299,
         118820643 / 751138087, -528747749 / 2220607170, 1 / 4)
_D8_B_HAT = (13451932 / 455176623, 0.0, 0.0, 0.0, 0.0, -808719846 / 976000145, 1757004468 / 5645159321,
             656045339 / 265891186, -3867574721 / 1518517206, 465885868 / 322736535,
             53011238 / 667516719, 2 / 45, 0.0)
DOPRI8 = Tableau(
    name="dopri8",
    c=_D8_C,
    a=((),
       (1 / 18,),
       (1 / 48, 1 / 16),
       (1 / 32, 0.0, 3 / 32),
       (5 / 16, 0.0, -75 / 64, 75 / 64),
       (3 / 80, 0.0, 0.0, 3 / 16, 3 / 20),
       (29443841 / 614563906, 0.0, 0.0, 77736538 / 692538347, -28693883 / 1125000000,
        23124283 / 1800000000),
       (16016141 / 946692911, 0.0, 0.0, 61564180 / 158732637, 22789713 / 633445777,
        545815736 / 2771057229, -180193667 / 1043307555),
       (39632708 / 573591083, 0.0, 0.0, -433636366 / 683701615, -421739975 / 2616292301,
        100302831 / 723423059, 790204164 / 839813087, 800635310 / 3783071287),
       (246121993 / 1340847787, 0.0, 0.0, -37695042795 / 15268766246, -309121744 / 1061227803,
        -12992083 / 490766935, 6005943493 / 2108947869, 393006217 / 1396673457,
        123872331 / 1001029789),
       (-1028468189 / 846180014, 0.0, 0.0, 8478235783 / 508512852, 1311729495 / 1432422823,
        -10304129995 / 1701304382, -48777925059 / 3047939560, 15336726248 / 1032824649,
        -45442868181 / 3398467696, 3065993473 / 597172653),
       (185892177 / 718116043, 0.0, 0.0, -3185094517 / 667107341, -477755414 / 1098053517,
        -703635378 / 230739211, 5731566787 / 1027545527, 5232866602 / 850066563,
        -4093664535 / 808688257, 3962137247 / 1805957418, 65686358 / 487910083),
       (403863854 / 491063109, 0.0, 0.0, -5068492393 / 434740067, -411421997 / 543043805,
        652783627 / 914296604, 11173962825 / 925320556, -13158990841 / 6184727034,
        3936647629 / 1978049680, -160528059 / 685178525, 248638103 / 1413531060, 0.0)),
    b=_D8_B,
    order=8,
    b_error=_minus(_D8_B, _D8_B_HAT),
    error_order=7,
)

BOSH3 = Tableau(
    name="bosh3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    order=3,
    b_error=_minus((2 / 9, 1 / 3, 4 / 9, 0.0), (7 / 24, 1 / 4, 1 / 3, 1 / 8)),
    error_order=2,
    hermite=True,
)

FEHLBERG2 = Tableau(
    name="fehlberg2",
    c=(0.0, 1 / 2, 1.0),
    a=((), (1 / 2,), (1 / 256, 255 / 256)),
    b=(1 / 512, 255 / 256, 1 / 512),
    order=2,
    b_error=(-1 / 512, 0.0, 1 / 512),
    error_order=1,
)

ADAPTIVE_HEUN = Tableau(
    name="adaptive_heun",
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(1 / 2, 1 / 2),
    order=2,
    b_error=(-1 / 2, 1 / 2),
    error_order=1,
)

# ---- fixed-step methods -------------------------------------------------------

EULER = Tableau(name="euler", c=(0.0,), a=((),), b=(1.0,), order=1)
MIDPOINT = Tableau(name="midpoint", c=(0.0, 1 / 2), a=((), (1 / 2,)), b=(0.0, 1.0), order=2)
HEUN2 = Tableau(name="heun2", c=(0.0, 1.0), a=((), (1.0,)), b=(1 / 2, 1 / 2), order=2)
HEUN3 = Tableau(name="heun3", c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)),
                b=(1 / 4, 0.0, 3 / 4), order=3)
CLASSIC_RK4 = Tableau(name="rk4", c=(0.0, 1 / 2, 1 / 2, 1.0), a=((), (1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)),
              b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4)
THREE_EIGHTHS = Tableau(name="rk38", c=(0.0, 1 / 3, 2 / 3, 1.0), a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
               b=(1 / 8, 3 / 8, 3 / 8, 1 / 8), order=4)


def _method(class_name: str, tableau: Tableau, doc: str) -> type[RungeKutta]:
    return type(class_name, (RungeKutta,), {"tableau": tableau, "__doc__": doc, "__module__": __name__})


Dopri5 = _method("Dopri5", DOPRI5, "Dormand–Prince 5(4), FSAL, with Shampine's quartic dense output.")
Dopri8 = _method("Dopri8", DOPRI8, "Prince–Dormand 8(7), 13 stages; lands on output times.")
Tsit5 = _method("Tsit5", TSIT5, "Tsitouras 5(4), FSAL; lands on output times.")
Bosh3 = _method("Bosh3", BOSH3, "Bogacki–Shampine 3(2), FSAL, with cubic Hermite dense output.")
Fehlberg2 = _method("Fehlberg2", FEHLBERG2, "Runge–Kutta–Fehlberg 2(1).")
AdaptiveHeun = _method("AdaptiveHeun", ADAPTIVE_HEUN, "Heun's method with an Euler error estimate, 2(1).")
Euler = _method("Euler", EULER, "Forward Euler, order 1.")
Midpoint = _method("Midpoint", MIDPOINT, "Explicit midpoint, order 2.")
Heun2 = _method("Heun2", HEUN2, "Heun's trapezoidal method, order 2.")
Heun3 = _method("Heun3", HEUN3, "Heun's third-order method.")
RK4 = _method("RK4", CLASSIC_RK4, "The classical fourth-order Runge–Kutta method.")
RK38 = _method("RK38", THREE_EIGHTHS, "Kutta's 3/8 rule, order 4 (torchdiffeq's 'rk4' is this method).")

METHODS: dict[str, type[RungeKutta]] = {
    cls.tableau.name: cls
    for cls in (Dopri5, Dopri8, Bosh3, Fehlberg2, AdaptiveHeun, Tsit5, Euler, Midpoint, Heun2, Heun3, RK4, RK38)
}


def get_method(method: Union[str, RungeKutta, Tableau, None]) -> RungeKutta:
    """Resolve ``method=`` (a name, a :class:`RungeKutta`, a :class:`Tableau` or None) to an object.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
        TypeError: for anything else.
    """
    if method is None:
        return Dopri5()
    if isinstance(method, RungeKutta):
        return method
    if isinstance(method, Tableau):
        return RungeKutta(method)
    if isinstance(method, str):
        try:
            return METHODS[method]()
        except KeyError:
            raise ValueError(f"method={method!r} is not a known solver; use one of "
                             f"{', '.join(sorted(METHODS))}, or pass a RungeKutta object") from None
    raise TypeError(f"method must be a solver name or a RungeKutta object, got {type(method).__name__}")
