"""Tiers: the seeded defaults, the cached lookup, validation and the admin."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from aes_project.table_cache import TableCache
from tests.helpers import wait_for
from tiers import lookup
from tiers.models import LIMIT_FIELDS, Tier

pytestmark = pytest.mark.django_db

# The table of DESIGN.md (Tiers): None means unlimited.
DESIGN_DEFAULTS: dict[str, dict[str, Any]] = {
    "free": {
        "priority": 4,
        "max_iterations": 3,
        "max_tools": 2,
        "timeout_seconds": 30,
        "max_tokens": 4000,
        "max_history_messages": 10,
        "rate_limit_per_minute": 10,
        "rate_limit_per_day": 100,
        "max_concurrent_executions": 2,
        "agent_config_cache_ttl": 300,
        "history_cache_ttl": 60,
        "wait_for_persistence": False,
    },
    "advance": {
        "priority": 3,
        "max_iterations": 5,
        "max_tools": 5,
        "timeout_seconds": 60,
        "max_tokens": 8000,
        "max_history_messages": 25,
        "rate_limit_per_minute": 50,
        "rate_limit_per_day": 1000,
        "max_concurrent_executions": 5,
        "agent_config_cache_ttl": 300,
        "history_cache_ttl": 120,
        "wait_for_persistence": False,
    },
    "professional": {
        "priority": 2,
        "max_iterations": 10,
        "max_tools": 10,
        "timeout_seconds": 120,
        "max_tokens": 16000,
        "max_history_messages": 50,
        "rate_limit_per_minute": 200,
        "rate_limit_per_day": 10000,
        "max_concurrent_executions": 20,
        "agent_config_cache_ttl": 600,
        "history_cache_ttl": 300,
        "wait_for_persistence": True,
    },
    "enterprise": {
        "priority": 1,
        "max_iterations": 20,
        "max_tools": None,
        "timeout_seconds": 300,
        "max_tokens": 32000,
        "max_history_messages": 100,
        "rate_limit_per_minute": None,
        "rate_limit_per_day": None,
        "max_concurrent_executions": None,
        "agent_config_cache_ttl": 900,
        "history_cache_ttl": 600,
        "wait_for_persistence": True,
    },
}
# The tiers in the order of their design priorities: the one served first first.
PRIORITY_ORDER = sorted(DESIGN_DEFAULTS, key=lambda name: DESIGN_DEFAULTS[name]["priority"])


# --- Seeded defaults -------------------------------------------------------


def test_migration_seeds_exactly_the_four_design_tiers():
    assert sorted(Tier.objects.values_list("name", flat=True)) == sorted(DESIGN_DEFAULTS)


@pytest.mark.parametrize("name", PRIORITY_ORDER)
def test_seeded_tier_has_every_default_of_the_design_table(name):
    tier = Tier.objects.get(name=name)
    actual = {field: getattr(tier, field) for field in DESIGN_DEFAULTS[name]}
    assert actual == DESIGN_DEFAULTS[name]


def test_design_table_covers_every_limit_field():
    # A limit added to the model without a default in the table would go untested.
    assert set(LIMIT_FIELDS) | {"priority"} == set(DESIGN_DEFAULTS["free"])


def test_enterprise_limits_are_unlimited_as_none_not_zero():
    enterprise = lookup.get_tier("enterprise")
    for field in (
        "max_tools",
        "rate_limit_per_minute",
        "rate_limit_per_day",
        "max_concurrent_executions",
    ):
        assert getattr(enterprise, field) is None, field


# --- Lookup ------------------------------------------------------------------


def test_tiers_by_priority_lists_the_tier_served_first_first():
    assert [tier.name for tier in lookup.tiers_by_priority()] == PRIORITY_ORDER
    assert [tier.priority for tier in lookup.tiers_by_priority()] == [1, 2, 3, 4]


@pytest.mark.parametrize("name", PRIORITY_ORDER)
def test_get_tier_returns_the_tier_of_that_name(name):
    tier = lookup.get_tier(name)
    assert tier is not None
    assert tier.name == name
    assert tier.limits() == Tier.objects.get(name=name).limits()


def test_get_tier_returns_none_for_an_unknown_name():
    assert lookup.get_tier("platinum") is None
    assert lookup.get_tier("") is None


def test_an_orm_save_is_seen_at_once_in_the_same_process(settings):
    settings.AES_TIER_CACHE_SECONDS = 3600  # only the signal can refresh it
    assert lookup.get_tier("free").max_iterations == 3

    tier = Tier.objects.get(name="free")
    tier.max_iterations = 4
    tier.save()

    assert lookup.get_tier("free").max_iterations == 4


def test_a_new_tier_saved_through_the_orm_joins_the_priority_order_at_once(settings):
    settings.AES_TIER_CACHE_SECONDS = 3600
    settings.AES_QUEUE_TIERS = [*settings.AES_QUEUE_TIERS, "trial"]
    assert lookup.get_tier("trial") is None

    trial = Tier.objects.get(name="free")
    trial.pk = None
    trial.name, trial.priority = "trial", 9
    trial.save()

    assert lookup.get_tier("trial") is not None
    assert [tier.name for tier in lookup.tiers_by_priority()] == [*PRIORITY_ORDER, "trial"]


def test_a_deleted_tier_disappears_from_the_lookup_at_once(settings):
    settings.AES_TIER_CACHE_SECONDS = 3600
    assert lookup.get_tier("advance") is not None

    Tier.objects.get(name="advance").delete()

    assert lookup.get_tier("advance") is None
    assert [tier.name for tier in lookup.tiers_by_priority()] == [
        name for name in PRIORITY_ORDER if name != "advance"
    ]


def test_an_edit_without_signal_is_served_from_cache_until_it_expires(settings):
    settings.AES_TIER_CACHE_SECONDS = 3600
    assert lookup.get_tier("free").max_iterations == 3

    # An UPDATE sends no signal, like an edit made by another process.
    Tier.objects.filter(name="free").update(max_iterations=7)
    assert lookup.get_tier("free").max_iterations == 3  # still the cached row

    settings.AES_TIER_CACHE_SECONDS = 0.2
    wait_for(
        lambda: lookup.get_tier("free").max_iterations == 7,
        timeout=5,
        what="the cached row to expire",
    )
    assert [tier.max_iterations for tier in lookup.tiers_by_priority()] == [20, 10, 5, 7]


def test_a_stale_table_is_read_again_by_one_thread_while_the_others_get_the_old_rows():
    # Hundreds of runs starting at once in a threaded worker send one query, not one each.
    reads, reading, go_on = [], threading.Event(), threading.Event()

    def load() -> dict[str, int]:
        reads.append(len(reads) + 1)
        if len(reads) == 2:  # the first read again, held until the test lets it go
            reading.set()
            go_on.wait(10)
        return {"read": reads[-1]}

    table = TableCache(load, lambda: 0.0)  # stale as soon as read
    assert table.rows() == {"read": 1}
    refresher = threading.Thread(target=table.rows)
    refresher.start()
    assert reading.wait(10)
    assert [table.rows() for _ in range(5)] == [{"read": 1}] * 5  # no query of their own
    go_on.set()
    refresher.join(10)
    assert reads == [1, 2]
    assert table.rows() == {"read": 3}  # read again once stale, as before


# --- Validation ----------------------------------------------------------------


def _error_fields(tier: Tier) -> set[str]:
    with pytest.raises(ValidationError) as caught:
        tier.full_clean()
    return set(caught.value.message_dict)


def test_seeded_tiers_pass_validation():
    for tier in Tier.objects.all():
        tier.full_clean()


def test_zero_timeout_is_rejected():
    tier = Tier.objects.get(name="free")
    tier.timeout_seconds = 0
    assert _error_fields(tier) == {"timeout_seconds"}


def test_zero_max_iterations_is_rejected():
    tier = Tier.objects.get(name="free")
    tier.max_iterations = 0
    assert _error_fields(tier) == {"max_iterations"}


def test_missing_max_iterations_is_rejected_because_it_has_no_unlimited():
    tier = Tier.objects.get(name="free")
    tier.max_iterations = None
    assert _error_fields(tier) == {"max_iterations"}


def test_a_tier_without_an_rq_queue_is_rejected(settings):
    assert "platinum" not in settings.AES_QUEUE_TIERS
    copy = Tier.objects.get(name="free")
    copy.pk = None
    copy.name, copy.priority = "platinum", 9
    assert _error_fields(copy) == {"name"}


def test_a_copy_with_a_configured_queue_accepts_unlimited_max_tools(settings):
    settings.AES_QUEUE_TIERS = [*settings.AES_QUEUE_TIERS, "platinum"]
    copy = Tier.objects.get(name="free")
    copy.pk = None
    copy.name, copy.priority = "platinum", 9
    copy.max_tools = None

    copy.full_clean()  # no error
    copy.save()
    assert Tier.objects.get(name="platinum").max_tools is None


def test_a_copy_keeping_a_taken_name_or_priority_is_rejected():
    copy = Tier.objects.get(name="free")
    copy.pk = None
    assert _error_fields(copy) == {"name", "priority"}


# --- Model helpers --------------------------------------------------------------


def test_limits_returns_the_snapshot_of_every_limit():
    free = Tier.objects.get(name="free")
    expected = {k: v for k, v in DESIGN_DEFAULTS["free"].items() if k != "priority"}
    assert free.limits() == expected
    assert list(free.limits()) == list(LIMIT_FIELDS)


def test_limits_snapshot_does_not_change_when_the_tier_is_edited_later():
    free = Tier.objects.get(name="free")
    snapshot = free.limits()
    free.max_iterations = 9
    free.save()
    assert snapshot["max_iterations"] == 3


def test_reaches_is_true_for_the_same_or_a_lower_tier_only():
    tiers = {tier.name: tier for tier in Tier.objects.all()}
    for i, higher in enumerate(PRIORITY_ORDER):
        for j, lower in enumerate(PRIORITY_ORDER):
            assert tiers[higher].reaches(tiers[lower]) is (i <= j), (higher, lower)


# --- Admin ------------------------------------------------------------------------

CHANGELIST = "admin:tiers_tier_changelist"


def changelist_post(overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The changelist form as a browser posts it, every tier as stored but `overrides`."""
    tiers = list(Tier.objects.order_by("priority"))
    data: dict[str, Any] = {
        "form-TOTAL_FORMS": str(len(tiers)),
        "form-INITIAL_FORMS": str(len(tiers)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for index, tier in enumerate(tiers):
        values = {**tier.limits(), **overrides.get(tier.name, {})}
        data[f"form-{index}-id"] = str(tier.pk)
        for field, value in values.items():
            key = f"form-{index}-{field}"
            if isinstance(value, bool):
                if value:  # an unchecked checkbox is not posted at all
                    data[key] = "on"
            else:
                data[key] = "" if value is None else str(value)
    return data


def test_tier_changelist_shows_every_tier_with_editable_limits(admin_client):
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    for name in PRIORITY_ORDER:
        assert name in html
    for index in range(len(PRIORITY_ORDER)):
        for field in LIMIT_FIELDS:
            assert f'name="form-{index}-{field}"' in html, (index, field)


def test_admin_edit_of_max_iterations_persists_and_is_used_at_once(admin_client, settings):
    settings.AES_TIER_CACHE_SECONDS = 3600
    assert lookup.get_tier("free").max_iterations == 3

    response = admin_client.post(
        reverse(CHANGELIST), changelist_post({"free": {"max_iterations": 4}})
    )

    assert response.status_code == 302
    assert Tier.objects.get(name="free").max_iterations == 4
    assert lookup.get_tier("free").max_iterations == 4
    # The other tiers are untouched.
    for name in sorted(set(DESIGN_DEFAULTS) - {"free"}):
        assert Tier.objects.get(name=name).limits() == {
            k: v for k, v in DESIGN_DEFAULTS[name].items() if k != "priority"
        }


def test_admin_can_make_a_limit_unlimited_and_toggle_persistence(admin_client):
    response = admin_client.post(
        reverse(CHANGELIST),
        changelist_post({"advance": {"rate_limit_per_day": None, "wait_for_persistence": True}}),
    )
    assert response.status_code == 302
    advance = Tier.objects.get(name="advance")
    assert advance.rate_limit_per_day is None
    assert advance.wait_for_persistence is True


def test_admin_refuses_a_zero_timeout_and_keeps_the_old_value(admin_client):
    response = admin_client.post(
        reverse(CHANGELIST), changelist_post({"free": {"timeout_seconds": 0}})
    )

    assert response.status_code == 200
    assert response.context["cl"].formset.errors != [{}] * len(PRIORITY_ORDER)
    assert "greater than or equal to 1" in response.content.decode()
    assert Tier.objects.get(name="free").timeout_seconds == 30


def test_admin_refuses_an_empty_timeout(admin_client):
    response = admin_client.post(
        reverse(CHANGELIST), changelist_post({"free": {"timeout_seconds": None}})
    )
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert Tier.objects.get(name="free").timeout_seconds == 30


def test_anonymous_visitor_is_sent_to_the_admin_login(client):
    url = reverse(CHANGELIST)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))

    response = client.post(url, changelist_post({"free": {"max_iterations": 4}}))
    assert response.status_code == 302
    assert Tier.objects.get(name="free").max_iterations == 3


def test_non_staff_user_cannot_open_the_tier_admin(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw")
    client.force_login(user)
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
