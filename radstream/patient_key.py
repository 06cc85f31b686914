"""The patient key: a keyed hash of issuer + Patient ID, so raw identifiers never leave the SCP."""

from __future__ import annotations

import hashlib
import hmac


def patient_key(site_secret: bytes, patient_id: str | None, issuer: str | None = None) -> str:
    """HMAC-SHA-256(site secret, issuer + NUL + Patient ID), lowercase hex.

    Instances without a Patient ID share one key per issuer (they still need a partition);
    the NUL separator keeps ``("A", "BC")`` and ``("AB", "C")`` apart.
    """
    msg = f"{(issuer or '').strip()}\x00{(patient_id or '').strip()}".encode()
    return hmac.new(site_secret, msg, hashlib.sha256).hexdigest()
