"""A/B/n assignment (pure) and the challengers config: properties with hypothesis, tables of
cases for validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import ConfigError, parse_config
from router.sidecar.app import initial_state
from router.sidecar.assign import (
    BUCKETS,
    Layout,
    bucket,
    extents_size,
    free_extents,
    initial_layout,
    owner_table,
    remove,
    resize,
    threshold,
)
from router.sidecar.control import LiveState, UpstreamPin, with_first_challenger

NAMES = ["a", "b", "c", "d"]


def _owners(layout: Layout) -> list[str]:
    table = owner_table(layout, NAMES)
    return ["champion" if i == 0 else NAMES[i - 1] for i in table]


def _check_invariants(layout: Layout) -> None:
    seen = bytearray(BUCKETS)
    for ext in layout.values():
        for lo, hi in ext:
            assert 0 <= lo < hi <= BUCKETS
            for b in range(lo, hi):
                assert not seen[b], "two challengers own one bucket"
                seen[b] = 1
    assert sum(hi - lo for lo, hi in free_extents(layout)) == BUCKETS - sum(seen)


# a sequence of live operations: (name, new share), share None = remove
ops = st.lists(
    st.tuples(
        st.sampled_from(NAMES), st.one_of(st.none(), st.integers(0, 40).map(lambda x: x / 100))
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    start=st.lists(st.integers(0, 25).map(lambda x: x / 100), min_size=1, max_size=4),
    changes=ops,
)
def test_a_change_moves_units_only_between_the_champion_and_that_challenger(
    start: list[float], changes: list[tuple[str, float | None]]
) -> None:
    layout = initial_layout(list(zip(NAMES, start, strict=False)))
    _check_invariants(layout)
    for name, share in changes:
        before = _owners(layout)
        try:
            after_layout = remove(layout, name) if share is None else resize(layout, name, share)
        except ValueError:  # would sum over 1: refused, nothing changes
            total = sum(extents_size(e) for k, e in layout.items() if k != name)
            assert share is not None and total + threshold(share) > BUCKETS
            continue
        _check_invariants(after_layout)
        after = _owners(after_layout)
        if share is not None:
            assert extents_size(after_layout[name]) == threshold(share)
        grew = share is not None and threshold(share) >= extents_size(layout.get(name, ()))
        for b, (x, y) in enumerate(zip(before, after, strict=True)):
            if x == y:
                continue
            # only the changed challenger's buckets move, and only to or from the champion
            if grew:
                assert (x, y) == ("champion", name), b
            else:
                assert (x, y) == (name, "champion"), b
        layout = after_layout


@settings(max_examples=60, deadline=None)
@given(shares=st.lists(st.integers(0, 25).map(lambda x: x / 100), min_size=1, max_size=4))
def test_one_challenger_is_todays_formula_and_the_shares_are_exact(shares: list[float]) -> None:
    layout = initial_layout(list(zip(NAMES, shares, strict=False)))
    for name, share in zip(NAMES, shares, strict=False):
        assert extents_size(layout[name]) == threshold(share)
    one = initial_layout([("a", shares[0])])
    table = owner_table(one, ["a"])
    for b in range(0, BUCKETS, 37):
        assert (table[b] == 1) == (b < threshold(shares[0]))  # challenger iff bucket < split


def test_a_new_salt_re_randomises_every_challenger() -> None:
    table = owner_table(initial_layout([("a", 0.3), ("b", 0.3)]), ["a", "b"])
    units = [f"u{i}" for i in range(6000)]
    one = [table[bucket("s1", u)] for u in units]
    two = [table[bucket("s2", u)] for u in units]
    same = sum(x == y for x, y in zip(one, two, strict=True)) / len(units)
    # independent: P(same) = 0.4^2 + 0.3^2 + 0.3^2 = 0.34
    assert abs(same - 0.34) < 0.03


def test_four_challengers_share_the_units_as_configured() -> None:
    shares = [0.1, 0.2, 0.05, 0.15]
    table = owner_table(initial_layout(list(zip(NAMES, shares, strict=True))), NAMES)
    n = 40_000
    counts = [0] * 5
    for i in range(n):
        counts[table[bucket("share", f"user-{i}")]] += 1
    for i, share in enumerate([0.5, *shares]):
        sd = (n * share * (1 - share)) ** 0.5
        assert abs(counts[i] - n * share) < 4 * sd


def test_the_single_challenger_fields_follow_the_first_challenger() -> None:
    cfg = parse_config(_cfg(challengers=[_ch("a", split=0.1), _ch("b", split=0.2)]))
    state = initial_state(cfg)
    assert state.layout() == {"a": ((0, 1000),), "b": ((1000, 3000),)}
    raised = with_first_challenger(
        LiveState(
            **{**_fields(state), "split": 0.25, "challenger": UpstreamPin("http://x:1", "v9")}
        )
    )
    assert raised.challengers[0].split == 0.25 and raised.challengers[0].version == "v9"
    assert raised.layout()["b"] == ((1000, 3000),)  # b's units do not move
    assert extents_size(raised.layout()["a"]) == 2500
    assert LiveState.from_json(raised.to_json()) == raised


def _fields(state: LiveState) -> dict[str, Any]:
    return {k: getattr(state, k) for k in state.__slots__}  # type: ignore[attr-defined]


# ---- config ---------------------------------------------------------------------------------


def _ch(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "url": f"http://127.0.0.1:9/{name}", "version": f"v-{name}", **kw}


def _cfg(**top: Any) -> dict[str, Any]:
    exp = top.pop("experiment", {})
    out: dict[str, Any] = {
        "champion": {"url": "http://127.0.0.1:8", "version": "c1"},
        "experiment": {"name": "e", "salt": "s", **exp},
    }
    out.update(top)
    return out


def test_the_shorthand_is_a_one_element_list() -> None:
    cfg = parse_config(
        _cfg(
            challenger={"url": "http://h:1", "version": "v2"},
            experiment={"split": 0.2, "mirror": 0.5},
        )
    )
    assert [c.name for c in cfg.challengers] == ["challenger"]
    assert (cfg.challengers[0].split, cfg.challengers[0].mirror) == (0.2, 0.5)
    assert cfg.challenger is cfg.challengers[0]


def test_a_list_sets_the_single_challenger_views_from_its_first() -> None:
    cfg = parse_config(_cfg(challengers=[_ch("a", split=0.1, mirror=0.3), _ch("b", split=0.4)]))
    assert (cfg.experiment.split, cfg.experiment.mirror) == (0.1, 0.3)
    assert cfg.upstream("b").version == "v-b" and cfg.upstream("champion").version == "c1"


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        (_cfg(challengers=[_ch("a"), _ch("a")]), "challengers[1].name", "already the name"),
        (_cfg(challengers=[_ch("a", split=0.6), _ch("b", split=0.5)]), "challengers[1].split",
         "sum to 1.1, over 1"),
        (_cfg(challengers=[]), "challengers", "at least one"),
        (_cfg(challengers=[_ch("champion")]), "challengers[0].name", "name of the champion"),
        (_cfg(challengers=[_ch("a b")]), "challengers[0].name", "pattern"),
        (_cfg(challengers=[_ch("a", split=1.5)]), "challengers[0].split", "less than or equal"),
        (_cfg(challengers=[_ch("a")], experiment={"split": 0.1}), "experiment.split",
         "per challenger"),
        (_cfg(challengers=[_ch("a")], challenger=_ch("b")), "challenger", "either"),
        (_cfg(challenger={**_ch("x"), "version": "v"}), "challenger.name", "shorthand"),
        (_cfg(), "challengers", "missing"),
        (_cfg(challengers=[_ch("a", mirror_max_rps=0)]), "challengers[0].mirror_max_rps",
         "greater than 0"),
        (_cfg(challengers=[_ch("a")], experiment={"expires_at": "soon"}),
         "experiment.expires_at", "ISO-8601"),
    ],
)  # fmt: skip
def test_bad_challengers_name_the_field(data: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "f.yaml")
    msg = str(err.value)
    assert msg.startswith(f"f.yaml: {key}: "), msg
    assert words in msg, msg


def test_a_validated_config_round_trips_through_its_dump() -> None:
    for data in (
        _cfg(challenger={"url": "http://h:1", "version": "v2"}, experiment={"split": 0.2}),
        _cfg(challengers=[_ch("a", split=0.1, mirror=0.3), _ch("b", split=0.4)]),
    ):
        cfg = parse_config(data)
        assert parse_config(cfg.model_dump()) == cfg
