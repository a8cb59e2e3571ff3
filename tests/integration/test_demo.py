"""The README's main job, `kct demo`, run twice on the same stack and topic."""

import subprocess
import sys
from pathlib import Path

KCT = Path(sys.executable).with_name("kct")


def test_demo_passes_and_passes_again_on_a_topic_with_earlier_runs() -> None:
    for _ in range(2):
        result = subprocess.run(
            [str(KCT), "demo"], capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ok: all 6 events of this run consumed" in result.stdout
        assert "undecodable" in result.stdout  # the poison record was dead-lettered
        # Part two: the order fulfillment saga, every saga finished, invariants hold.
        assert "sagas by final status (20 in" in result.stdout
        assert "COMPENSATED" in result.stdout  # declined cards were undone
        assert "ok: stock and money conserved" in result.stdout
