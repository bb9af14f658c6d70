"""The chaos nemesis asks the sandbox only for faults it knows, and can ask for every one."""

from __future__ import annotations

import random

from devtools.sandbox.faults import Faults
from tests.chaos.nemesis import (
    LATE_APPLY_SECONDS,
    fault_menu,
    fault_profile,
    v2_fault_profile,
    v2_settings,
)


def test_every_menu_entry_is_a_valid_fault_setting() -> None:
    rng = random.Random(1)
    menu = fault_menu(rng)
    seen: set[str] = set()
    for name, draw in menu.items():
        settings = draw()
        merged = Faults().merged(settings)  # raises on an unknown field or a bad value
        assert any(getattr(merged, k) != getattr(Faults(), k) for k in settings), name
        seen |= set(settings)
    for field in (
        "trickle_rate",
        "late_apply_rate",
        "error_after_rate",
        "drop_after_rate",
        "retry_after_style",
        "odd_timestamps_rate",
        "unknown_status_rate",
        "missing_history_rate",
        "token_expiry_rate",
    ):
        assert field in seen


def test_profiles_are_valid_and_seeded() -> None:
    for seed in range(200):
        profile = fault_profile(random.Random(seed))
        merged = Faults().merged(profile)
        assert merged.hang_seconds == 2.5
        if merged.late_apply_rate:
            assert LATE_APPLY_SECONDS[0] <= merged.late_apply_seconds <= LATE_APPLY_SECONDS[1]
        assert fault_profile(random.Random(seed)) == profile


def test_v2_profiles_hold_only_faults_v2_can_have() -> None:
    seen: set[str] = set()
    for seed in range(200):
        profile = v2_fault_profile(random.Random(seed))
        merged = Faults().merged(profile)
        assert merged.hang_seconds == 2.5
        assert not merged.token_expiry_rate and not merged.odd_timestamps_rate
        assert not merged.missing_history_rate
        seen |= set(profile)
    for field in ("late_apply_rate", "drop_after_rate", "error_after_rate", "trickle_rate"):
        assert field in seen
    settings = v2_settings(random.Random(3))
    assert 0 <= settings["requested_rate"] <= 0.5
    assert settings["requested_outcome"] in ("SUCCEEDED", "FAILED")
