"""The three secrets radstream keys things with, resolved one way for every process.

* ``site_secret``: the HMAC key of every patient key (``radstream.patient_key``). Permanent: the
  store root keeps its fingerprint, and a process refuses to key new data with another one.
* ``web_session_secret`` (``web.session_secret``): signs the review app's session cookies.
* ``blinding_salt`` (``inference.blinding_salt``): the HMAC key of the blinding hash.

Each ships with a public placeholder (``radstream.settings.DEFAULT_*``). With
``environment=production`` (the default) a placeholder or an empty value is refused: the process
stops with :class:`PlaceholderSecret`, naming the setting and how to set it. With
``environment=development`` (``radstream dev up``, ``radstream demo``) it is replaced by a random
secret made once and kept in ``<home>/secrets/<name>`` (mode 0600), so a development machine
keeps its keys across restarts while no two machines share one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets as _random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from radstream.settings import DEFAULT_BLINDING_SALT, DEFAULT_SESSION_SECRET, DEFAULT_SITE_SECRET, Settings

log = logging.getLogger(__name__)

SecretName = Literal["site_secret", "web_session_secret", "blinding_salt"]

# the fingerprint is the HMAC of this label under the secret: it identifies the secret, never reveals it
FINGERPRINT_LABEL = b"radstream site-secret fingerprint v1"
FINGERPRINT_FILE = "site-secret.fingerprint.json"
_MIN_GENERATED = 32


@dataclass(frozen=True)
class SecretSpec:
    name: SecretName
    setting: str  # where it lives in the settings, dotted
    env: str  # the environment variable that sets it (``<env>_FILE`` names a file holding it)
    placeholder: str
    read: Callable[[Settings], SecretStr | str]
    purpose: str


SPECS: dict[SecretName, SecretSpec] = {
    "site_secret": SecretSpec(
        "site_secret", "site_secret", "RADSTREAM_SITE_SECRET", DEFAULT_SITE_SECRET, lambda s: s.site_secret,
        "the HMAC key of every patient key; keep it for the life of the site's data"),
    "web_session_secret": SecretSpec(
        "web_session_secret", "web.session_secret", "RADSTREAM_WEB__SESSION_SECRET", DEFAULT_SESSION_SECRET,
        lambda s: s.web.session_secret, "signs the review app's session cookies; one value for all app replicas"),
    "blinding_salt": SecretSpec(
        "blinding_salt", "inference.blinding_salt", "RADSTREAM_INFERENCE__BLINDING_SALT", DEFAULT_BLINDING_SALT,
        lambda s: s.inference.blinding_salt, "the HMAC key of the blinded reading hash"),
}


class SecretError(RuntimeError):
    """A secret a process needs is unusable: the process does not start."""


class PlaceholderSecret(SecretError):
    """In production, a secret is still the shipped (public) placeholder, or empty."""


class SiteSecretChanged(SecretError):
    """The site secret differs from the one the existing data was keyed with."""


@dataclass(frozen=True)
class Resolved:
    value: str
    generated: Path | None  # the file under <home>/secrets it came from, when radstream made it


def _given(settings: Settings, spec: SecretSpec) -> str:
    raw = spec.read(settings)
    # tolerate a plain str (model_copy(update=...) skips validation)
    return raw.get_secret_value() if isinstance(raw, SecretStr) else str(raw)


def is_placeholder(value: str, spec: SecretSpec) -> bool:
    return not value.strip() or value.strip() == spec.placeholder


def how_to_set(spec: SecretSpec) -> str:
    return (f"set {spec.env}=<value>, or {spec.env}_FILE=<path of a file holding it> (Docker/Kubernetes "
            f"secrets), or {spec.setting} in the config file; make one with "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`")


def placeholder_message(spec: SecretSpec, given: str) -> str:
    state = "empty" if not given.strip() else "still the shipped placeholder, which is public"
    return (f"refusing to start: {spec.setting} is {state} ({spec.setting} is {spec.purpose}). "
            "With environment=production (the default) it must be set: "
            f"{how_to_set(spec)}. On a development machine RADSTREAM_ENVIRONMENT=development makes radstream "
            "generate a random one under <home>/secrets/ instead.")


def generated_path(settings: Settings, name: SecretName) -> Path:
    return Path(settings.home) / "secrets" / name


def _make_once(path: Path) -> str:
    """The random secret in ``path``, made (atomically, mode 0600) when the file does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for _ in range(40):
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = None
        if value is not None:
            if len(value) >= _MIN_GENERATED:
                return value
            time.sleep(0.05)  # a writer from before atomic creation may still be writing it
            continue
        # write a private temporary file in full, then link it into place: another process starting at
        # the same moment either wins the link (and we read its value) or loses it; nobody reads half a key
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(_random.token_urlsafe(48) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    raise SecretError(f"{path} holds no usable secret: remove it (a new one is made) or set the secret explicitly")


def resolve(settings: Settings, name: SecretName) -> Resolved:
    """The secret ``name`` as this process must use it.

    A value set in the settings (environment, ``*_FILE``, config file) is used as given. A placeholder or
    empty value raises :class:`PlaceholderSecret` in production and is replaced by the random secret of
    ``<home>/secrets/<name>`` in development.
    """
    spec = SPECS[name]
    given = _given(settings, spec)
    if not is_placeholder(given, spec):
        return Resolved(given, None)
    if settings.environment != "development":
        raise PlaceholderSecret(placeholder_message(spec, given))
    path = generated_path(settings, name)
    return Resolved(_make_once(path), path)


def require(settings: Settings, *names: SecretName) -> None:
    """Refuse at once when any of ``names`` cannot be resolved (all problems in one message)."""
    problems = []
    for name in names:
        try:
            resolve(settings, name)
        except SecretError as exc:
            problems.append(str(exc))
    if problems:
        raise PlaceholderSecret("\n".join(problems))


def fingerprint(secret: bytes) -> str:
    """HMAC-SHA-256 of a fixed label under ``secret``: tells two secrets apart, reveals neither."""
    return hmac.new(secret, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def fingerprint_path(settings: Settings) -> Path:
    return Path(settings.store_root) / FINGERPRINT_FILE


def check_site_fingerprint(settings: Settings, secret: bytes, *, accept_new: bool = False) -> Path:
    """Record the site secret's fingerprint next to the data on first start; refuse another secret later.

    Patient keys are HMACs under the site secret: data keyed with another secret no longer links to the
    same patients (priors, longitudinal changes). ``accept_new`` (``accept_new_site_secret``, ``radstream
    ingest --accept-new-site-secret``) records the new fingerprint instead, keeping the old ones in the
    file's history.
    """
    path = fingerprint_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = fingerprint(secret)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for _ in range(3):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:
            raise SiteSecretChanged(f"{path} is not readable JSON ({exc}); it records which site secret the "
                                    "data was keyed with: restore it, or remove it to record the current one"
                                    ) from exc
        if data is None:
            record = {"fingerprint": mine, "algorithm": "HMAC-SHA-256(site_secret, label)",
                      "label": FINGERPRINT_LABEL.decode(), "recorded_at": now, "history": []}
            if _write_new(path, record):
                log.info("recorded the site secret's fingerprint in %s", path)
                return path
            continue  # another process recorded one at the same moment: check against it
        if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
            raise SiteSecretChanged(f"{path} holds no fingerprint: restore it, or remove it to record the "
                                    "current site secret")
        if hmac.compare_digest(data["fingerprint"], mine):
            return path
        if not accept_new:
            raise SiteSecretChanged(
                f"refusing to start: the site secret is not the one the data under {path.parent} was keyed with "
                f"(fingerprint recorded {data.get('recorded_at', '?')} in {path}). Patient keys made with it would "
                "not match the existing patients. Set the original secret (RADSTREAM_SITE_SECRET or "
                "RADSTREAM_SITE_SECRET_FILE), or, to start a new key space on purpose, start once with "
                "RADSTREAM_ACCEPT_NEW_SITE_SECRET=true (radstream ingest --accept-new-site-secret).")
        history = list(data.get("history") or [])
        history.append({"fingerprint": data["fingerprint"], "recorded_at": data.get("recorded_at"),
                        "replaced_at": now})
        record = {**data, "fingerprint": mine, "recorded_at": now, "history": history}
        _write_replace(path, record)
        log.warning("the site secret changed (accepted): new fingerprint recorded in %s; patient keys made from "
                    "now on do not match older data", path)
        return path
    raise SiteSecretChanged(f"{path} could not be read or written consistently")


def _write_new(path: Path, record: Mapping[str, object]) -> bool:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _write_replace(path: Path, record: Mapping[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def site_secret(settings: Settings, *, check_fingerprint: bool = True) -> bytes:
    """The patient-key secret; with ``check_fingerprint``, checked against (or recorded in) the store root."""
    value = resolve(settings, "site_secret").value.encode()
    if check_fingerprint:
        check_site_fingerprint(settings, value, accept_new=settings.accept_new_site_secret)
    return value


def blinding_salt(settings: Settings) -> bytes:
    return resolve(settings, "blinding_salt").value.encode()


def session_secret(settings: Settings) -> Resolved:
    return resolve(settings, "web_session_secret")


TRITON_TOKEN_FILE = "triton_access_token"


def triton_access_token(settings: Settings, *, create: bool = False) -> str | None:
    """The token of Triton's restricted endpoints (shared memory): ``triton.access_token`` when set; else the
    one a local managed server was started with, ``<home>/secrets/triton_access_token`` (made when
    ``create``, by whoever starts that server); else None."""
    raw = settings.triton.access_token  # a plain str after model_copy(update=...), which skips validation
    given = (raw.get_secret_value() if isinstance(raw, SecretStr) else str(raw or "")).strip()
    if given:
        return given
    path = Path(settings.home) / "secrets" / TRITON_TOKEN_FILE
    if create:
        return _make_once(path)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
