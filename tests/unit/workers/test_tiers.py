import pytest

from warmstart.infra.errors import BudgetError
from warmstart.workers.capacity import Budgets, Room, levels_filled, usage
from warmstart.workers.tiers import Resident, Tier, choose_demotions, steps_between, used_bytes
from warmstart.workers.warmup import has_settled


def r(model: str, tier: Tier, size: int, used: float, pinned: bool = False) -> Resident:
    return Resident(model, tier, size, used, pinned)


def test_tiers_are_ordered_and_parse() -> None:
    assert Tier.REMOTE < Tier.DISK < Tier.HOST < Tier.DEVICE < Tier.HOT
    assert Tier.parse("hot") is Tier.HOT and Tier.parse(2) is Tier.HOST
    with pytest.raises(ValueError, match="REMOTE"):
        Tier.parse("warm")


def test_steps_go_one_tier_at_a_time() -> None:
    assert steps_between(Tier.REMOTE, Tier.HOT) == [Tier.DISK, Tier.HOST, Tier.DEVICE, Tier.HOT]
    assert steps_between(Tier.HOT, Tier.HOST) == [Tier.DEVICE, Tier.HOST]
    assert steps_between(Tier.HOST, Tier.HOST) == []


def test_budget_counts_models_at_or_above_the_level() -> None:
    residents = [r("a", Tier.HOT, 10, 0), r("b", Tier.HOST, 20, 0), r("c", Tier.DISK, 40, 0)]
    assert used_bytes(residents, Tier.DEVICE) == 10
    assert used_bytes(residents, Tier.HOST) == 30


def test_demotes_least_recently_used_first_and_only_as_many_as_needed() -> None:
    residents = [r("old", Tier.HOT, 40, 1.0), r("mid", Tier.DEVICE, 40, 2.0), r("new", Tier.HOT, 40, 3.0)]
    victims = choose_demotions(residents, Tier.DEVICE, needed_bytes=30, budget_bytes=130)
    assert [v.model for v in victims] == ["old"]
    victims = choose_demotions(residents, Tier.DEVICE, needed_bytes=90, budget_bytes=130)
    assert [v.model for v in victims] == ["old", "mid"]
    assert choose_demotions(residents, Tier.DEVICE, needed_bytes=10, budget_bytes=130) == []


def test_eager_models_are_demoted_only_after_all_others() -> None:
    residents = [
        Resident("eager-old", Tier.HOT, 40, 1.0, keep_last=True),
        Resident("lazy-new", Tier.HOT, 40, 9.0),
        Resident("eager-new", Tier.HOT, 40, 5.0, keep_last=True),
    ]
    assert [v.model for v in choose_demotions(residents, Tier.DEVICE, 40, 120)] == ["lazy-new"]
    assert [v.model for v in choose_demotions(residents, Tier.DEVICE, 80, 120)] == ["lazy-new", "eager-old"]


def test_pinned_models_are_never_demoted() -> None:
    residents = [r("busy", Tier.HOT, 50, 0.0, pinned=True), r("idle", Tier.HOT, 50, 5.0)]
    assert [v.model for v in choose_demotions(residents, Tier.DEVICE, 50, 100)] == ["idle"]
    with pytest.raises(BudgetError, match="in use"):
        choose_demotions(residents, Tier.DEVICE, 60, 100)


def test_a_model_larger_than_the_budget_is_refused_without_demoting_anything() -> None:
    with pytest.raises(BudgetError, match="WARMSTART_DEVICE_BUDGET_BYTES"):
        choose_demotions([r("a", Tier.HOT, 10, 0)], Tier.DEVICE, 200, 100)


def test_latency_settles_only_after_the_cold_run_and_a_stable_window() -> None:
    assert not has_settled([0.5, 0.1, 0.1])
    assert has_settled([0.5, 0.10, 0.11, 0.10])
    assert not has_settled([0.5, 0.10, 0.20, 0.10])
    assert has_settled([0.5, 0.3, 0.2, 0.10, 0.105, 0.1])


def test_one_capacity_rule_for_worker_planner_and_simulator() -> None:
    """A model counts against every budget at or below its tier: HOT/DEVICE the device, host
    and cache budgets, HOST the host and cache budgets, DISK the cache budget."""
    assert levels_filled(Tier.HOT) == levels_filled(Tier.DEVICE) == (Tier.DEVICE, Tier.HOST, Tier.DISK)
    assert levels_filled(Tier.HOST) == (Tier.HOST, Tier.DISK)
    assert levels_filled(Tier.DISK) == (Tier.DISK,) and levels_filled(Tier.REMOTE) == ()
    room = Room(Budgets(device_bytes=200, host_bytes=200, disk_bytes=1000),
                [(Tier.HOT, 100), (Tier.HOT, 100)])
    assert room.used == {Tier.DEVICE: 200, Tier.HOST: 200, Tier.DISK: 200}
    assert not room.fits(1, Tier.HOST) and room.fits(800, Tier.DISK)
    assert room.free(Tier.HOT) == 0 and room.free(Tier.DISK) == 800 and room.over() == []
    room.place(50, Tier.HOST)
    assert room.over() == [Tier.HOST]
    # The worker's eviction counts the same: the two HOT models fill the host budget, so
    # making room there for a HOST model demotes one of them.
    residents = [r("a", Tier.HOT, 100, 1.0), r("b", Tier.HOT, 100, 2.0)]
    assert used_bytes(residents, Tier.HOST) == usage([(x.tier, x.size_bytes) for x in residents])[Tier.HOST]
    assert [v.model for v in choose_demotions(residents, Tier.HOST, 50, 200)] == ["a"]
