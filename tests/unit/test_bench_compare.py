"""make bench-compare: only ratios that moved beyond their noise are printed."""

from benchmarks.compare import compare


def _run(**ratios: tuple[float, float]) -> dict[str, object]:
    return {"ratios": {k: {"value": v, "noise": n} for k, (v, n) in ratios.items()}}


def test_only_moves_beyond_the_noise_are_reported() -> None:
    old = _run(a=(0.60, 0.05), b=(0.90, 0.02), gone=(1.0, 0.1))
    new = _run(a=(0.70, 0.03), b=(0.91, 0.02), fresh=(2.0, 0.1))
    lines = compare(old, new)
    assert lines == [
        "a: 0.600 -> 0.700 (+0.100, noise 0.050) up",
        "fresh: new",
        "gone: gone",
    ]


def test_the_larger_noise_of_the_two_runs_decides() -> None:
    assert compare(_run(a=(0.60, 0.15)), _run(a=(0.70, 0.01))) == []
