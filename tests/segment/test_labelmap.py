"""The QC that network backends share (spine_idc.segment.networks.labelmap.finish_labels), on phantom
truth: right names pass, names that do not fit the spacing of the vertebrae are flagged."""

from __future__ import annotations

import numpy as np
import pytest

from spine_idc import coding
from spine_idc.phantom import make_phantom, spec_for_seed
from spine_idc.segment.base import FLAG_IMPLAUSIBLE_SPACING
from spine_idc.segment.networks.labelmap import finish_labels


def _value(name: str) -> int:
    return next(lv.value for lv in coding.LEVELS if lv.name == name)


def _qc(phantom, labels):
    return finish_labels(phantom.ct, labels, series_key="k", backend="test", version="0").qc


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_true_names_are_not_flagged_for_spacing(seed):
    phantom = make_phantom(spec_for_seed(seed, size="test"))
    qc = _qc(phantom, phantom.labels.array.copy())
    assert len(qc.vertebrae) >= 4
    assert not [r.name for r in qc.vertebrae if FLAG_IMPLAUSIBLE_SPACING in r.flags]


def test_lumbar_vertebrae_named_as_cervical_ones_are_flagged():
    """A network that calls the five lumbar vertebrae C3..C7: each mask is fine, the order is
    fine, but 36 mm between neighbours is twice a cervical pitch."""
    phantom = make_phantom(spec_for_seed(0, size="test", levels=("L1", "sacrum")))
    truth = phantom.labels.array
    renamed = truth.copy()
    for lumbar, cervical in zip(("L1", "L2", "L3", "L4", "L5"), ("C3", "C4", "C5", "C6", "C7")):
        renamed[truth == _value(lumbar)] = _value(cervical)
    right, wrong = _qc(phantom, truth.copy()), _qc(phantom, renamed)
    flagged = {r.name for r in wrong.vertebrae if FLAG_IMPLAUSIBLE_SPACING in r.flags}
    assert flagged == {"C3", "C4", "C5", "C6", "C7"}  # the sacrum is not judged
    assert wrong.confidence < right.confidence
    np.testing.assert_array_equal(wrong.vertebrae[0].centroid_lps, right.vertebrae[0].centroid_lps)
