-- radstream core schema: patients, studies, series, requests, results, measurements,
-- detections, QC decisions, reviews, users, audit trail, blinding map.
-- Identifiers are DICOM UIDs and event ids; patient_key is the keyed hash, never a raw Patient ID.

CREATE TABLE patients (
    patient_key     text PRIMARY KEY,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE studies (
    study_instance_uid  text PRIMARY KEY,
    patient_key         text NOT NULL REFERENCES patients (patient_key),
    accession_number    text,
    study_date          date,
    first_received_at   timestamptz,
    last_received_at    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX studies_patient_idx ON studies (patient_key);
CREATE INDEX studies_accession_idx ON studies (accession_number);

CREATE TABLE series (
    series_instance_uid text PRIMARY KEY,
    study_instance_uid  text NOT NULL REFERENCES studies (study_instance_uid),
    revision            integer,
    modality            text,
    series_description  text,
    instance_count      integer,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX series_study_idx ON series (study_instance_uid);

-- Per pipeline rules the views read: the progression threshold and whether QC gates readers.
CREATE TABLE pipelines (
    name                       text PRIMARY KEY,
    progression_threshold_pct  double precision,
    qc_required                boolean NOT NULL DEFAULT false,
    updated_at                 timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pipelines (name, progression_threshold_pct, qc_required) VALUES
    ('brain-tumour', 25.0, false),
    ('liver', NULL, false),
    ('hip-fracture', NULL, true);

-- Every InferenceRequested seen: the exams each pipeline received.
CREATE TABLE requests (
    request_id          text PRIMARY KEY,
    event_id            text NOT NULL,
    patient_key         text NOT NULL,
    study_instance_uid  text NOT NULL,
    accession_number    text,
    pipeline            text NOT NULL,
    pipeline_version    text NOT NULL,
    model_name          text NOT NULL,
    model_version       text NOT NULL,
    shadow              boolean NOT NULL DEFAULT false,
    replay_id           text,
    trigger             text NOT NULL,
    series_count        integer NOT NULL,
    instance_count      integer NOT NULL,
    study_date          date,
    last_received_at    timestamptz NOT NULL,
    requested_at        timestamptz NOT NULL,
    stored_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX requests_pipeline_idx ON requests (pipeline, requested_at);
CREATE INDEX requests_study_idx ON requests (study_instance_uid);

-- One row per result id (InferenceCompleted or InferenceFailed). A completed result is never
-- overwritten by a failure of the same id; duplicates leave stored_at as first stored.
CREATE TABLE results (
    result_id             text PRIMARY KEY,
    event_id              text NOT NULL,
    request_id            text NOT NULL,
    producer              text NOT NULL,
    patient_key           text NOT NULL REFERENCES patients (patient_key),
    study_instance_uid    text NOT NULL REFERENCES studies (study_instance_uid),
    accession_number      text,
    pipeline              text NOT NULL,
    pipeline_version      text NOT NULL,
    model_name            text NOT NULL,
    model_version         text NOT NULL,
    shadow                boolean NOT NULL DEFAULT false,
    replay_id             text,
    status                text NOT NULL CHECK (status IN ('completed', 'failed')),
    stage                 text,
    reason                text,
    retriable             boolean,
    attempts              integer,
    series_instance_uids  text[] NOT NULL DEFAULT '{}',
    outputs               jsonb NOT NULL DEFAULT '{}'::jsonb,
    seg_uri               text,
    sr_uri                text,
    blinding_hash         text,
    timings_ms            jsonb NOT NULL DEFAULT '{}'::jsonb,
    study_date            date,
    started_at            timestamptz,
    finished_at           timestamptz NOT NULL,
    last_received_at      timestamptz NOT NULL,
    stored_at             timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX results_patient_idx ON results (patient_key, pipeline);
CREATE INDEX results_study_idx ON results (study_instance_uid);
CREATE INDEX results_pipeline_idx ON results (pipeline, stored_at);
CREATE INDEX results_request_idx ON results (request_id);
-- the web app's name for the same thing
CREATE VIEW pipeline_runs AS SELECT * FROM results;

CREATE TABLE measurements (
    result_id  text NOT NULL REFERENCES results (result_id) ON DELETE CASCADE,
    name       text NOT NULL,
    label      text NOT NULL,
    value      double precision NOT NULL,
    unit       text NOT NULL,
    PRIMARY KEY (result_id, name, label)
);

CREATE TABLE detections (
    result_id         text NOT NULL REFERENCES results (result_id) ON DELETE CASCADE,
    idx               integer NOT NULL,
    label             text NOT NULL,
    finding           text NOT NULL,
    score             double precision NOT NULL,
    box               double precision[] NOT NULL,
    sop_instance_uid  text,
    PRIMARY KEY (result_id, idx)
);

-- Feedback. No foreign key to results: the feedback topic may be replayed before the results one.
CREATE TABLE qc_decisions (
    decision_id         text PRIMARY KEY,
    event_id            text NOT NULL,
    producer            text NOT NULL,
    result_id           text NOT NULL,
    study_instance_uid  text NOT NULL,
    pipeline            text NOT NULL,
    reviewer            text NOT NULL,
    decision            text NOT NULL CHECK (decision IN ('APPROVED', 'REJECTED')),
    reason              text,
    decided_at          timestamptz NOT NULL,
    stored_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX qc_decisions_result_idx ON qc_decisions (result_id, decided_at);

CREATE TABLE reviews (
    review_id            text PRIMARY KEY,
    event_id             text NOT NULL,
    producer             text NOT NULL,
    result_id            text NOT NULL,
    study_instance_uid   text NOT NULL,
    pipeline             text NOT NULL,
    reviewer             text NOT NULL,
    comment              text,
    time_spent_s         double precision NOT NULL,
    blinding_hash        text,
    corrected_seg_uri    text,
    corrected_volume_ml  double precision,
    submitted_at         timestamptz NOT NULL,
    stored_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reviews_result_idx ON reviews (result_id);
CREATE INDEX reviews_reviewer_idx ON reviews (reviewer, pipeline);

CREATE TABLE review_findings (
    review_id     text NOT NULL REFERENCES reviews (review_id) ON DELETE CASCADE,
    idx           integer NOT NULL,
    finding       text NOT NULL,
    agree         boolean,
    reader_label  text,
    comment       text,
    PRIMARY KEY (review_id, idx)
);

-- Web app: accounts, worklist claims, audit trail, blinding map (admins only).
CREATE TABLE users (
    username       text PRIMARY KEY,
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('reader', 'qc', 'admin')),
    display_name   text,
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz
);

CREATE TABLE worklist_claims (
    result_id   text NOT NULL,
    username    text NOT NULL REFERENCES users (username),
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (result_id, username)
);

CREATE TABLE audit_log (
    id                  bigserial PRIMARY KEY,
    at                  timestamptz NOT NULL DEFAULT now(),
    username            text,
    action              text NOT NULL,
    target_type         text,
    target_id           text,
    patient_key         text,
    study_instance_uid  text,
    client_addr         text,
    detail              jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_user_idx ON audit_log (username, at);
CREATE INDEX audit_log_study_idx ON audit_log (study_instance_uid);

CREATE TABLE blinding_map (
    blinding_hash  text PRIMARY KEY,
    source         text NOT NULL,
    result_id      text,
    seg_uri        text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
