-- Review app: server-side sessions and sign-in throttling.
--
-- web_sessions: one row per signed-in session. The cookie carries a random session id signed with
-- web.session_secret; only the SHA-256 of that id is stored, so a copy of this table opens nothing.
-- A session ends when its row goes: sign-out, disabling the user, a password change
-- (radstream.web.sessions.revoke_user), or the absolute / idle timeouts checked on every request.
CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash       text PRIMARY KEY,                 -- hex SHA-256 of the session id in the cookie
    username      text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    data          jsonb NOT NULL DEFAULT '{}'::jsonb, -- per-result "opened at" times, the next page's message
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,             -- created_at + web.session_absolute_s, never extended
    client_addr   text,
    user_agent    text
);
CREATE INDEX IF NOT EXISTS web_sessions_username_idx ON web_sessions (username);
CREATE INDEX IF NOT EXISTS web_sessions_expires_idx ON web_sessions (expires_at);

-- login_throttle: failed sign-ins per account name (whether or not it exists, so a lock tells nothing
-- about which accounts exist) and per client address; exponential back-off once the free failures of
-- web.login_window_s are spent (radstream.web.throttle).
CREATE TABLE IF NOT EXISTS login_throttle (
    kind              text NOT NULL CHECK (kind IN ('user', 'addr')),
    subject           text NOT NULL,                -- lower-cased user name as typed, or the client address
    failures          integer NOT NULL,
    first_failure_at  timestamptz NOT NULL,
    last_failure_at   timestamptz NOT NULL,
    locked_until      timestamptz,
    PRIMARY KEY (kind, subject)
);
CREATE INDEX IF NOT EXISTS login_throttle_last_idx ON login_throttle (last_failure_at);
