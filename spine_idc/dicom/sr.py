"""DICOM Structured Report of the vertebra measurements, built with highdicom.

One Comprehensive 3D SR per series holding a TID 1500 "Measurement Report":

* TID 1001 observation context with a TID 1002/1004 *device* observer: the algorithm;
* Procedure Reported from CID 100 (:data:`spine_idc.coding.PROCEDURE_CT`);
* one TID 1411 "Volumetric ROI Measurements and Qualitative Evaluations" group per measured
  segment, referencing its segment in the SEG (Referenced Segment + Source Series for
  Segmentation), with the SEG's tracking identifier/UID, Finding Category "Anatomical Structure"
  (the SEG's segmented property category), Finding Type "Vertebra" (CID 7151; for a structure
  that is not a vertebra, its own code) and Finding Site = the level (CID 7603; "Spine" when
  unknown), a TID 4019 algorithm identification and TID 1419 measurements (concept names from
  CID 7469, units from CID 7181):

  - Volume (SCT 118565006) in mm3 (CID 7181 has no ml);
  - Attenuation Coefficient (DCM 112031) in [hnsf'U] twice, told apart by Derivation
    (DCM 121401, CID 7464) Mean and Median; Measurement Method = the local concept "Trabecular
    core of vertebral body";
  - Height (DCM 121207) in mm three times, told apart by the finding site's topographical
    modifier (CID 2: Anterior, Central, Posterior);
  - the local concept "Vertebral body height ratio", unit "1";

  and Yes/No (CID 230) qualitative evaluations of per-vertebra QC;
* series-level QC (``qc``) as a TID 1501 group whose finding site is the spine.

Missing values (a body too small for a trabecular core, say) are left out rather than coded as
NUM items without a value; the QC evaluations say why.  UIDs are deterministic, as for the SEG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from .. import coding
from .identity import (
    MANUFACTURER,
    AlgorithmInfo,
    deterministic_uid,
    output_uid,
    pin_volatile,
    save_dataset,
    tracking_uid,
)
from ..measure import VertebraMeasurement, sr_items
from ..volume import SeriesInfo

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 902


def _yes_no(flag: bool):
    return coding.YES if flag else coding.NO


def _segment_numbers(seg: Dataset) -> dict[str, int]:
    return {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}


def build_sr(
    measurements: Sequence[VertebraMeasurement],
    seg_dataset: Dataset,
    info: SeriesInfo,
    algorithm: AlgorithmInfo,
    qc: Mapping[str, bool] | None = None,
    *,
    series_number: int = SR_SERIES_NUMBER,
):
    """Build the TID 1500 Measurement Report of one series as a Comprehensive 3D SR.

    Parameters
    ----------
    measurements:
        Output of :func:`spine_idc.measure.measure_vertebrae`; every ``level`` must be a segment
        label of ``seg_dataset``.  Groups follow the SEG's segment (cranio-caudal) order.
    seg_dataset:
        The SEG from :func:`spine_idc.dicom.seg.build_seg` (or read back from disk); it is the
        SR's evidence and supplies patient and study attributes.
    info:
        The source CT series.
    algorithm:
        Recorded as the device observer (TID 1004) and per group (TID 4019).
    qc:
        Series-level QC answers, keys from :data:`spine_idc.coding.QC_CONCEPTS` (for instance
        ``{"labels_contiguous": True}``), recorded as Yes/No evaluations of a TID 1501 group.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    ValueError
        If a measurement has no segment in the SEG, or a ``qc`` key is unknown.
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes

    t0 = time.perf_counter()
    segment_of = _segment_numbers(seg_dataset)
    missing = [m.level for m in measurements if m.level not in segment_of]
    if missing:
        raise ValueError(f"no SEG segment for measured vertebrae {missing}")
    unknown = sorted(set(qc or {}) - set(coding.QC_CONCEPTS))
    if unknown:
        raise ValueError(f"unknown QC keys {unknown}; known: {sorted(coding.QC_CONCEPTS)}")

    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"{k}={v}" for k, v in algorithm.parameters.items()] or None,
    )
    groups = []
    for m in sorted(measurements, key=lambda m: segment_of[m.level]):
        level = coding.level_for_value(m.label_value)
        unidentified = coding.is_unidentified_vertebra(m.label_value)
        site = coding.SPINE if unidentified else level.code
        evaluations = [
            hd.sr.QualitativeEvaluation(coding.QC_TOUCHES_BORDER, _yes_no(m.touches_border))
        ]
        if level.is_vertebra:
            evaluations += [
                hd.sr.QualitativeEvaluation(
                    coding.QC_LEVEL_IDENTIFIED, _yes_no(not unidentified)
                ),
                hd.sr.QualitativeEvaluation(
                    coding.QC_TRABECULAR_CORE, _yes_no(m.trabecular_mean_hu is not None)
                ),
            ]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uid(info, algorithm, m.level), identifier=m.level
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg_dataset.SOPClassUID,
                    sop_instance_uid=seg_dataset.SOPInstanceUID,
                    segment_number=segment_of[m.level],
                    source_series=hd.sr.SourceSeriesForSegmentation(info.series_instance_uid),
                ),
                finding_category=coding.CATEGORY_ANATOMICAL_STRUCTURE,
                finding_type=coding.VERTEBRA_GENERIC if level.is_vertebra else level.code,
                finding_sites=[hd.sr.FindingSite(site)],
                algorithm_id=algorithm_id,
                measurements=sr_items(m, site),
                qualitative_evaluations=evaluations,
            )
        )
    if qc:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uid(info, algorithm, "series-qc"), identifier="series QC"
                ),
                finding_sites=[hd.sr.FindingSite(coding.SPINE)],
                algorithm_id=algorithm_id,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(coding.QC_CONCEPTS[k], _yes_no(bool(v)))
                    for k, v in qc.items()
                ],
            )
        )
    if not groups:
        raise ValueError("nothing to report: no measurements and no QC")

    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=deterministic_uid(MANUFACTURER, algorithm.name, algorithm.version, "device"),
            name=algorithm.name,
            manufacturer_name=MANUFACTURER,
            model_name=f"{algorithm.name} {algorithm.version}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=coding.PROCEDURE_CT,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg_dataset, *_source_evidence(info)],
        content=report,
        series_instance_uid=output_uid(info, algorithm, "sr", "series"),
        series_number=series_number,
        sop_instance_uid=output_uid(info, algorithm, "sr", "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # Complete and final as produced; nobody has verified it (VerificationFlag UNVERIFIED).
        is_complete=True,
        is_final=True,
        series_description=f"Vertebra measurements ({algorithm.name})"[:64],
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=coding.LOCAL_SCHEME,
                name=coding.LOCAL_SCHEME_NAME,
                responsible_organization=MANUFACTURER,
            )
        ],
    )
    # Dates and times from the SEG it reports on (themselves the source series'), so an
    # unchanged input gives identical bytes.
    when = (str(getattr(seg_dataset, "ContentDate", "") or ""),
            str(getattr(seg_dataset, "ContentTime", "") or ""))
    pin_volatile(sr, info, algorithm, "sr", when if when[0] else ("19700101", "000000"))
    log.info("%s: SR with %d groups built in %.2f s", info.series_key, len(groups),
             time.perf_counter() - t0)
    return sr


def _source_evidence(info: SeriesInfo) -> list[Dataset]:
    """The CT instances as evidence items (only the four UIDs the evidence sequence needs).

    The measurement groups reference the source *series* (a UIDREF), which highdicom does not
    collect as evidence; listing the instances in the Current Requested Procedure Evidence
    Sequence lets a reader find the CT the report is about without opening the SEG.
    """
    items = []
    for uid in info.sop_instance_uids:
        ds = Dataset()
        ds.SOPClassUID = info.sop_class_uid
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = info.study_instance_uid
        ds.SeriesInstanceUID = info.series_instance_uid
        items.append(ds)
    return items


def write_sr(
    measurements: Sequence[VertebraMeasurement],
    seg_dataset: Dataset,
    info: SeriesInfo,
    algorithm: AlgorithmInfo,
    path: str | Path,
    qc: Mapping[str, bool] | None = None,
    **kwargs,
) -> Path:
    """:func:`build_sr` and write the result to ``path`` atomically; returns ``path``."""
    sr = build_sr(measurements, seg_dataset, info, algorithm, qc, **kwargs)
    return save_dataset(sr, path)
