"""Extending a stored grid sweep with a sweep file that adds trials: which trials the stored sweep
already holds, which are new, and why a file that would change or drop stored trials is a new
sweep instead. Trials are compared by their keys (the resolved config), so a field moved from
`base` to an axis that keeps its value changes nothing stored. No torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .keys import KnownKeys, keys_of
from .spec import SweepError, SweepSpec

# Fields that are not part of any trial's config but that one sweep must keep: its MLflow
# experiment lives at one tracking URI; the rest (resources, packing, concurrency) may change.
KEPT_FIELDS = ("tracking_uri", "share_pretraining", "checkpoint_every")


@dataclass(frozen=True)
class Extension:
    kept: frozenset[str]  # trial keys the stored sweep holds
    new: int  # trials the file adds (a boundary search refining the grid: at most)
    refines: bool = False  # a boundary search that takes the stored grid's trials as its first round
    known: KnownKeys = field(default_factory=KnownKeys)  # the stored trials' keys, found by their values


def trial_keys(spec: SweepSpec) -> frozenset[str]:
    """The keys of a grid sweep's trials."""
    return frozenset(keys_of(values).trial for values in spec.trial_values())


def extension_of(stored: SweepSpec, wanted: SweepSpec, source: str) -> Extension:
    """What `wanted` adds to the `stored` sweep of the same name; a SweepError naming what it
    would change when it does more than add trials."""
    rename = f"that is a new sweep: `minima run {source} --name NEW_NAME`"
    if _as_run(stored) == _as_run(wanted):
        return Extension(frozenset(), 0)
    if stored.search.kind != "grid":
        raise SweepError(f"search: sweep {stored.name!r} is a {stored.search.kind} search, and only a grid "
                         f"sweep is extended; {rename}")
    if wanted.search.kind not in ("grid", "boundary"):
        raise SweepError(f"search: a grid sweep is extended by a grid, or refined by a boundary search, not "
                         f"by a {wanted.search.kind} search; {rename}")
    for field in KEPT_FIELDS:
        if getattr(stored, field) != getattr(wanted, field):
            raise SweepError(f"{field}: {getattr(wanted, field)!r} differs from the stored sweep's "
                             f"{getattr(stored, field)!r}; set it back, or {rename}")
    known = [(values, keys_of(values)) for values in stored.trial_values()]
    kept = frozenset(keys.trial for _, keys in known)
    if wanted.search.kind == "boundary":
        return Extension(kept, wanted.search.max_trials, refines=True, known=KnownKeys(known))
    keys = trial_keys(wanted)
    lost = kept - keys
    if lost:
        raise SweepError(f"{', '.join(_changes(stored, wanted)) or 'the trial configs'}: this file would change "
                         f"or drop {len(lost)} of the {len(kept)} trials sweep {stored.name!r} holds; "
                         f"an extension may only add seeds, axis values or axes; {rename}")
    return Extension(kept, len(keys - kept), known=KnownKeys(known))


def _as_run(spec: SweepSpec) -> dict:
    """What decides a sweep's trials and where they go (not where it is found, nor how `pack: auto`
    was resolved)."""
    return spec.model_dump(exclude={"storage", "pack_plan", "description"})


def _changes(stored: SweepSpec, wanted: SweepSpec) -> list[str]:
    """What differs, field by field, as the user wrote it (for the refusal)."""
    out = []
    for name in sorted(set(stored.base) | set(wanted.base)):
        old, new = stored.base.get(name), wanted.base.get(name)
        if old != new and name not in wanted.axes:  # a field made an axis is looked at below
            out.append(f"base.{name} {old!r} -> {new!r}")
    for name in stored.axes:
        if name not in wanted.axes:
            out.append(f"axes.{name} removed")
            continue
        gone = [v for v in stored.axis_values(name) if v not in wanted.axis_values(name)]
        if gone:
            out.append(f"axes.{name} loses {gone}")
    for name in wanted.axes:
        if name not in stored.axes and stored.base.get(name) not in wanted.axis_values(name):
            had = repr(stored.base[name]) if name in stored.base else "its default"
            out.append(f"axes.{name} leaves out the value the stored trials have ({had})")
    gone = sorted(set(stored.seeds) - set(wanted.seeds))
    if gone:
        out.append(f"seeds lose {gone}")
    return out
