"""PHI out of the DICOM headers that go to dead letters.

A dead letter keeps the header bytes of an instance the SCP refused, so that whoever reads
``radstream.deadletter`` can see why it failed. Those bytes hold the patient's name, ID,
birth date, address, the accession number, physicians and institution. :func:`strip_phi`
blanks the values of a deliberate list of such attributes (:data:`PHI_KEYWORDS`, after the
basic profile of DICOM PS3.15 Annex E, kept to what an ingest header carries) and of every
private data element, at any depth in sequences, **in place**: each value is overwritten by
filler of the same length (spaces for text, zeros otherwise), so tags, VRs, lengths and the
exact structure that made the instance fail are kept, and so is what is needed to find it
(transfer syntax, SOP class, the study, series and instance UIDs, modality, dimensions).

Input that cannot be walked is cut, never passed through: everything from the first element
whose header cannot be read or whose value runs past the end is dropped, and a deflated data
set (unreadable without inflating it) keeps only its file meta. The file meta itself (group
0002, written by the SCP from the command) holds no PHI.
"""

from __future__ import annotations

import struct

from pydicom.datadict import dictionary_VR, tag_for_keyword
from radstream.producers.structure import ITEM, ITEM_END, LONG_VRS, PIXEL_DATA_TAGS, SEQ_END, UNDEFINED

DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_DEPTH = 64

PHI_KEYWORDS: tuple[str, ...] = (
    # the patient
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName",
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
    "PatientTelephoneNumbers", "PatientTelecomInformation", "CountryOfResidence", "RegionOfResidence",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "EthnicGroup", "Occupation",
    "PatientReligiousPreference", "PatientInsurancePlanCodeSequence", "PatientPrimaryLanguageCodeSequence",
    "AdditionalPatientHistory", "PatientComments", "MedicalAlerts", "Allergies", "PatientState",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization", "ReferencedPatientSequence",
    "ReferencedPatientPhotoSequence", "PatientIdentityRemoved", "DeidentificationMethod",
    # the study, its order and visit
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyID", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "AcquisitionDateTime", "InstanceCreationDate", "StudyDescription",
    "SeriesDescription", "ImageComments", "RequestAttributesSequence", "RequestedProcedureDescription",
    "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "PerformedProcedureStepStartDate", "ReasonForStudy",
    "AdmittingDiagnosesDescription", "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID",
    "FillerOrderNumberImagingServiceRequest", "PlacerOrderNumberImagingServiceRequest",
    # people and places
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "RequestingPhysician", "ScheduledPerformingPhysicianName",
    "OperatorsName", "OperatorIdentificationSequence", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName", "DeviceSerialNumber",
    # content that can show or say who the patient is
    "ContentSequence", "TextValue", "EncapsulatedDocument", "IconImageSequence",
)
PHI_TAGS: frozenset[int] = frozenset(t for t in (tag_for_keyword(k) for k in PHI_KEYWORDS) if t is not None)

TEXT_VRS = frozenset({b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"PN", b"SH", b"ST",
                      b"TM", b"UC", b"UI", b"UR", b"UT"})
# implicit VR: the dictionary's VR of each listed tag, to blank text with spaces
_IMPLICIT_TEXT = frozenset(t for t in PHI_TAGS if dictionary_VR(t).encode()[:2] in TEXT_VRS)


class _Cut(Exception):
    """The bytes stop being walkable at ``pos``."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


class _Stripper:
    def __init__(self, data: bytearray, explicit: bool, little: bool) -> None:
        self.data = data
        self.end = len(data)
        self.explicit = explicit
        self.e = "<" if little else ">"

    def _header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, explicit VR or None, value length, value start) of the element at ``pos``."""
        d, e = self.data, self.e
        if pos + 8 > self.end:
            raise _Cut(pos)
        group, elem = struct.unpack_from(e + "HH", d, pos)
        tag = int(group) << 16 | int(elem)
        if tag in (ITEM, ITEM_END, SEQ_END):
            return tag, None, int(struct.unpack_from(e + "L", d, pos + 4)[0]), pos + 8
        if not self.explicit:
            return tag, None, int(struct.unpack_from(e + "L", d, pos + 4)[0]), pos + 8
        vr = bytes(d[pos + 4: pos + 6])
        if not (vr.isalpha() and vr.isupper()):
            raise _Cut(pos)
        if vr in LONG_VRS:
            if pos + 12 > self.end:
                raise _Cut(pos)
            return tag, vr, int(struct.unpack_from(e + "L", d, pos + 8)[0]), pos + 12
        return tag, vr, int(struct.unpack_from(e + "H", d, pos + 6)[0]), pos + 8

    def dataset(self, pos: int, explicit: bool, depth: int, blank: bool, in_item: bool) -> int:
        """Walk elements from ``pos``; blank listed (or, with ``blank``, all) values. Returns the end."""
        if depth > MAX_DEPTH:
            raise _Cut(pos)
        saved, self.explicit = self.explicit, explicit
        try:
            while pos < self.end:
                tag, vr, length, start = self._header(pos)
                if tag == ITEM_END and in_item:
                    return start
                if tag in (ITEM, ITEM_END, SEQ_END):
                    raise _Cut(pos)
                private = bool(tag >> 16 & 1) and (tag & 0xFFFF) > 0x00FF  # not a private creator
                hide = blank or private or tag in PHI_TAGS
                if length == UNDEFINED:
                    if vr in (b"OB", b"OW") or (vr is None and tag in PIXEL_DATA_TAGS):
                        pos = self.fragments(start, hide)  # encapsulated pixel data
                    else:  # a sequence (UN of undefined length holds implicit VR little endian)
                        pos = self.sequence(start, explicit and vr != b"UN", depth + 1, hide)
                    continue
                stop = start + length
                if stop > self.end:
                    raise _Cut(pos)
                if length:
                    is_sequence = vr == b"SQ" or (vr is None and _is_sequence(tag))
                    if is_sequence:
                        self._defined_sequence(start, stop, explicit, depth + 1, blank=hide)
                    elif hide:
                        text = vr in TEXT_VRS if vr is not None else tag in _IMPLICIT_TEXT
                        self.data[start:stop] = (b" " if text else b"\0") * length
                pos = stop
            if in_item:
                raise _Cut(self.end)
            return pos
        finally:
            self.explicit = saved

    def fragments(self, pos: int, blank: bool) -> int:
        """The items of encapsulated pixel data (raw bytes, not data sets), up to its delimiter."""
        while True:
            tag, _, length, start = self._header(pos)
            if tag == SEQ_END:
                return start
            if tag != ITEM or length == UNDEFINED or start + length > self.end:
                raise _Cut(pos)
            if blank:
                self.data[start:start + length] = b"\0" * length
            pos = start + length

    def _defined_sequence(self, start: int, stop: int, explicit: bool, depth: int, blank: bool) -> None:
        """The items of a sequence of known length; anything unwalkable inside it is blanked whole."""
        inner = _Stripper(self.data, explicit, self.e == "<")
        inner.end = stop
        try:
            inner.sequence(start, explicit, depth, blank, defined=True)
        except _Cut as cut:
            self.data[cut.pos:stop] = b"\0" * (stop - cut.pos)

    def sequence(self, pos: int, explicit: bool, depth: int, blank: bool, defined: bool = False) -> int:
        while pos < self.end or not defined:
            tag, _, length, start = self._header(pos)
            if tag == SEQ_END and not defined:
                return start
            if tag != ITEM:
                raise _Cut(pos)
            if length == UNDEFINED:
                pos = self.dataset(start, explicit, depth, blank, in_item=True)
            else:
                stop = start + length
                if stop > self.end:
                    raise _Cut(pos)
                inner = _Stripper(self.data, explicit, self.e == "<")
                inner.end = stop
                inner.dataset(start, explicit, depth, blank, in_item=False)
                pos = stop
        return pos


def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _file_meta(data: bytes | bytearray) -> tuple[int, str] | None:
    """(end of the file meta, transfer syntax) of Part 10 bytes; None if they are not Part 10."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    pos, ts = 132, ""
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4: pos + 6])
        if vr in LONG_VRS:
            if pos + 12 > len(data):
                return None
            length, start = int(struct.unpack_from("<L", data, pos + 8)[0]), pos + 12
        else:
            length, start = int(struct.unpack_from("<H", data, pos + 6)[0]), pos + 8
        if start + length > len(data):
            return None
        if elem == 0x0010:
            ts = bytes(data[start: start + length]).decode("ascii", "replace").strip("\0 ")
        pos = start + length
    return pos, ts


def strip_phi(data: bytes) -> bytes:
    """The header bytes of a Part 10 file with the PHI values blanked (see the module docstring)."""
    meta = _file_meta(data)
    if meta is None:
        return b""  # not even a file meta: nothing here is known not to be PHI
    offset, ts = meta
    if ts == DEFLATED or not ts:
        return bytes(data[:offset])
    buf = bytearray(data)
    stripper = _Stripper(buf, explicit=ts != "1.2.840.10008.1.2", little=ts != "1.2.840.10008.1.2.2")
    try:
        stripper.dataset(offset, stripper.explicit, 0, blank=False, in_item=False)
    except _Cut as cut:
        del buf[cut.pos:]
    except (struct.error, KeyError, ValueError):
        del buf[offset:]
    return bytes(buf)
