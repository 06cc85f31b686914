"""The one set of facts routing rules see: what the events carry, read the same way live and from disk.

A rule may name exactly the attributes a ``SeriesCompleted`` event carries:

* the **event fields** (:data:`EVENT_FIELDS`: Modality, SeriesDescription, Manufacturer, the AE titles …),
  always present on the events;
* the **routing tags**: further header attributes the ingest SCP collects into the events'
  ``attributes`` map — :data:`DEFAULT_ROUTING_TAGS`, the site's ``ingest.routing_tags`` and every
  keyword a pipeline file's ``tags:`` names (read when the SCP starts).

A rule naming anything else (a keyword pydicom does not know, a sequence, bulk or binary data) is
refused when its pipeline file is loaded, by the dispatcher and by ``radstream rules test`` alike.
Both evaluate :class:`radstream.pipelines.rules.SeriesFacts`; live ones come from the events, the
tester's from files on disk through :func:`attributes_of` and :func:`event_fields_of`, the functions the
SCP uses to fill the events, so the two cannot disagree on what an attribute's value is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

# keyword -> event field (SeriesCompleted), the attributes every event carries
EVENT_FIELDS: dict[str, str] = {
    "Modality": "modality",
    "BodyPartExamined": "body_part_examined",
    "SeriesDescription": "series_description",
    "SeriesNumber": "series_number",
    "ImageOrientationPatient": "image_orientation_patient",
    "SliceThickness": "slice_thickness",
    "StationName": "station_name",
    "Manufacturer": "manufacturer",
    "AccessionNumber": "accession_number",
    "StudyDescription": "study_description",
    "InstitutionName": "institution_name",
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "CalledAETitle": "called_ae_title",  # of the association, not of the header
    "CallingAETitle": "calling_ae_title",
}

# collected into the events' ``attributes`` without any configuration
DEFAULT_ROUTING_TAGS: tuple[str, ...] = (
    "ProtocolName", "SequenceName", "ImageType", "ScanningSequence", "SequenceVariant", "MRAcquisitionType",
    "ManufacturerModelName", "MagneticFieldStrength", "EchoTime", "RepetitionTime", "InversionTime",
    "FlipAngle", "ContrastBolusAgent", "ConvolutionKernel", "KVP", "ViewPosition", "Laterality",
    "ImageLaterality", "PatientPosition", "SpacingBetweenSlices", "PhotometricInterpretation", "Rows",
    "Columns", "NumberOfFrames", "SOPClassUID",
)

# value representations a rule cannot name: nested, binary or bulk data
_REFUSED_VR = {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW", "US or SS or OW"}
MAX_VALUES = 16  # values kept per attribute
MAX_VALUE_CHARS = 256  # characters kept per value


def refusal(keyword: str) -> str | None:
    """Why a rule cannot name ``keyword`` (None: it can, given it is collected)."""
    if keyword in EVENT_FIELDS:
        return None
    if not keyword.isidentifier() or tag_for_keyword(keyword) is None:
        return f"{keyword!r} is not a DICOM keyword (write it as pydicom spells it, e.g. ProtocolName)"
    tag = tag_for_keyword(keyword)
    assert tag is not None
    if tag >> 16 == 0x7FE0 or dictionary_VR(tag) in _REFUSED_VR:
        return f"{keyword} holds {dictionary_VR(tag)} data, which events do not carry"
    return None


def routing_keywords(extra: Iterable[str] = (), named: Iterable[str] = ()) -> frozenset[str]:
    """The keywords collected into ``attributes``: defaults, the site's extra ones, those rules name."""
    wanted = set(DEFAULT_ROUTING_TAGS) | set(extra) | set(named)
    return frozenset(k for k in wanted if k not in EVENT_FIELDS and refusal(k) is None)


def _text(value: Any) -> str:
    return str(value).strip("\0 ")[:MAX_VALUE_CHARS]


def attributes_of(ds: Dataset, keywords: Iterable[str]) -> dict[str, list[str]]:
    """The routing tags of one header as the events carry them: each present keyword -> its values as text.

    An element that cannot be decoded is left out (the rule then sees it as missing), never an error:
    the instance has been validated already and must not be refused for a routing attribute.
    """
    out: dict[str, list[str]] = {}
    for kw in sorted(keywords):
        try:
            elem = ds.data_element(kw)
            if elem is None or elem.VR in _REFUSED_VR:
                continue
            value = elem.value
        except Exception:  # a corrupt value in a header that passed validation: missing for rules
            continue
        if value is None or isinstance(value, bytes | bytearray):
            continue
        items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        texts = [t for t in (_text(v) for v in items[:MAX_VALUES]) if t]
        if texts:
            out[kw] = texts
    return out


def plain(values: list[str]) -> Any:
    """An ``attributes`` entry as a rule sees it: one value, or a list (a rule passes if any value does)."""
    return values[0] if len(values) == 1 else list(values)
