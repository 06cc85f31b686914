"""Optional LDAP / Active Directory bind (settings.web.ldap); off by default.

The password is checked by binding as the user's DN; the role still comes from the local
``users`` table (an account made with ``radstream users add NAME --role R --ldap``), so a
directory account alone grants nothing.
"""

from __future__ import annotations

import logging
import ssl

from ldap3 import Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import escape_rdn

from radstream.settings import LdapSettings

log = logging.getLogger(__name__)


def user_dn(cfg: LdapSettings, username: str) -> str:
    """The DN (or UPN) to bind as; the user name is RDN-escaped so it cannot add DN parts."""
    return cfg.user_dn_template.format(username=escape_rdn(username))


def server_for(cfg: LdapSettings) -> Server:
    tls = None
    if cfg.server_uri.startswith("ldaps://") or cfg.start_tls:
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(cfg.ca_file) if cfg.ca_file else None)
    return Server(cfg.server_uri, use_ssl=cfg.server_uri.startswith("ldaps://"), tls=tls,
                  connect_timeout=cfg.timeout_s)


def ldap_bind(cfg: LdapSettings, username: str, password: str) -> bool:
    """True when the directory accepts this user's password; any failure (or an empty password) is False."""
    if not cfg.enabled or not password:
        return False  # an empty password would be an unauthenticated bind, which servers accept
    conn = Connection(server_for(cfg), user=user_dn(cfg, username), password=password,
                      receive_timeout=cfg.timeout_s, raise_exceptions=False)
    try:
        if not conn.open():
            return False
        if cfg.start_tls and not cfg.server_uri.startswith("ldaps://") and not conn.start_tls():
            return False
        return bool(conn.bind())
    except LDAPException as exc:
        log.warning("LDAP bind failed: %s", type(exc).__name__)
        return False
    finally:
        conn.unbind()
