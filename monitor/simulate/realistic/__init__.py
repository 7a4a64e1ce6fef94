"""One site's stream of real header rows whose stable weeks wander, with changes at known onsets.

Why: the false-alarm arithmetic of the drift engine (docs/drift.md) holds for exchangeable
events, but a hospital's stable months are not exchangeable. The share of studies each X-ray
room takes, the patients' habitus (so tube current, exposure, exposure time, the auto-window and
the collimated image size), the share of portable AP studies and the age mix move from week to
week, and with the season. Alarms a site manager can live with must stay quiet through that and
still catch the changes that matter, so this module builds both, from real rows only.

How (docs/drift.md, "Realistic streams"): a site template names one header table of the
torchxrayvision wheel (:mod:`monitor.simulate.xrv`) and how its rows group into rooms (the
acquisition signature: bit depth, detector pitch, photometric interpretation, modality). Each
simulated week draws its studies, with replacement, from the table's rows: room shares follow a
slowly wandering random walk around the site's own shares, and within each room the rows are
exponentially tilted towards higher or lower technique, AP view and age by equally wandering
weekly amounts plus a winter term. Every value an event carries is a real row's; the wander only
reweights which rows a week sees. Changes (:class:`Change`) replace a share of the studies from
a documented index on: a held-out room (a new detector unit), the table's DX rows (a new
modality), a shifted protocol (:class:`ProtocolShift`), or a sub-population (older AP patients).
The exchangeable variant shuffles the same rows, so it has no time structure: without changes
it is the nominal false-alarm check; with them, a change on a background free of wander.
Scores come from the simulator's score model on each row's own truth; pixel statistics, when
asked for, are independent correlated Gaussians as in :mod:`monitor.simulate.features` (they
carry no wander and no change: only the metadata are real).

Pure: the table is read by :mod:`monitor.simulate.xrv` (or handed in); nothing else is read.
Seeded: the same config and table give the same events, and a stream with a change equals the
stream without it up to the onset (the benchmark replays changes from a snapshot at the onset).
"""

from monitor.simulate.realistic.config import (
    TEMPLATES,
    Change,
    ChangeKind,
    PopulationShift,
    ProtocolShift,
    RealisticStreamConfig,
    SiteTemplate,
    TemplateSpec,
    Wander,
)
from monitor.simulate.realistic.pool import (
    HELD_OUT_TABLE,
    HeldOutTableError,
    SitePool,
    header_tables,
    load_pool,
    read_header,
)
from monitor.simulate.realistic.stream import (
    RealisticStream,
    StreamPlan,
    realistic_stream,
    shift_protocol,
)

__all__ = [
    "HELD_OUT_TABLE",
    "TEMPLATES",
    "Change",
    "ChangeKind",
    "HeldOutTableError",
    "PopulationShift",
    "ProtocolShift",
    "RealisticStream",
    "RealisticStreamConfig",
    "SitePool",
    "SiteTemplate",
    "StreamPlan",
    "TemplateSpec",
    "Wander",
    "header_tables",
    "load_pool",
    "read_header",
    "realistic_stream",
    "shift_protocol",
]
