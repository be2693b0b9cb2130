"""One DICOMweb client, shared by the dicomweb source (:mod:`spine_idc.sources.dicomweb.series`)
and by publishing (:mod:`spine_idc.publish`).

========================  ===================================================================
:mod:`.client`            the session: credentials from the environment, timeouts, retries,
                          what an answer's status means, the store's name without credentials
:mod:`.limit`             :class:`AttemptLimit`, one attempt's wall-clock limit on every
                          connection it opens
:mod:`.search`            QIDO-RS, a page at a time; reading DICOM JSON records
:mod:`.retrieve`          WADO-RS of a series into a folder, resuming a broken response
:mod:`.multipart`         multipart/related bodies, read as they stream and written
:mod:`.store`             STOW-RS of one instance, its look-up and deletion; STOW-RS answers
========================  ===================================================================

Nothing here knows the manifest, the pipeline or the configuration file.
"""

from .client import (
    AUTH_HINT,
    AUTH_MODES,
    GOOGLE_SCOPES,
    PASSWORD_ENV,
    RETRY_STATUSES,
    TOKEN_ENV,
    USER_ENV,
    make_client,
    server_name,
)
from .limit import AttemptLimit
from .retrieve import retrieve_series
from .search import count_instances, find_series
from .store import Instance, Lost, Store, StowAnswer

__all__ = [
    "AUTH_HINT", "AUTH_MODES", "GOOGLE_SCOPES", "PASSWORD_ENV", "RETRY_STATUSES", "TOKEN_ENV",
    "USER_ENV", "AttemptLimit", "Instance", "Lost", "Store", "StowAnswer", "count_instances",
    "find_series", "make_client", "retrieve_series", "server_name",
]
