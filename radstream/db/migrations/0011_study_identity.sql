-- Study identity on the tables (study time, description, institution, station, referring
-- physician: carried on every event since the dispatcher passes the study's attributes on), and
-- longitudinal order by study date, then study time. Arrival time orders a timepoint only where
-- its study has no date; the views say so (ordered_by = 'arrival').
ALTER TABLE studies
    ADD COLUMN study_time time,
    ADD COLUMN study_description text,
    ADD COLUMN institution_name text,
    ADD COLUMN station_name text,
    ADD COLUMN referring_physician_name text;
ALTER TABLE results
    ADD COLUMN study_time time,
    ADD COLUMN modality text;

CREATE OR REPLACE VIEW v_timepoints AS
SELECT DISTINCT ON (r.patient_key, r.pipeline, r.study_instance_uid)
    r.result_id,
    r.patient_key,
    r.pipeline,
    r.study_instance_uid,
    COALESCE(r.accession_number, s.accession_number) AS accession_number,
    r.model_name,
    r.model_version,
    COALESCE(r.study_date, s.study_date) AS study_date,
    COALESCE(r.study_date, s.study_date, (r.last_received_at AT TIME ZONE 'UTC')::date) AS timepoint_date,
    r.last_received_at,
    r.finished_at,
    r.stored_at,
    COALESCE(r.study_time, s.study_time) AS study_time,
    s.study_description,
    CASE WHEN COALESCE(r.study_date, s.study_date) IS NULL THEN 'arrival' ELSE 'study_date' END AS ordered_by
FROM results r
LEFT JOIN studies s ON s.study_instance_uid = r.study_instance_uid
WHERE r.status = 'completed' AND NOT r.shadow
ORDER BY r.patient_key, r.pipeline, r.study_instance_uid, r.finished_at DESC, r.stored_at DESC;

DROP VIEW v_longitudinal_latest;

CREATE OR REPLACE VIEW v_longitudinal AS
WITH ordered AS (
    SELECT
        t.*,
        m.name AS measurement,
        m.label,
        m.value AS volume_ml,
        row_number() OVER w AS timepoint,
        count(*) OVER (PARTITION BY t.patient_key, t.pipeline, m.name, m.label) AS timepoints,
        first_value(m.value) OVER w AS baseline_ml,
        first_value(t.study_instance_uid) OVER w AS baseline_study_instance_uid,
        first_value(t.timepoint_date) OVER w AS baseline_date,
        lag(m.value) OVER w AS prior_ml,
        lag(t.study_instance_uid) OVER w AS prior_study_instance_uid,
        lag(t.timepoint_date) OVER w AS prior_date
    FROM v_timepoints t
    JOIN measurements m ON m.result_id = t.result_id AND m.unit = 'mL'
    WINDOW w AS (
        PARTITION BY t.patient_key, t.pipeline, m.name, m.label
        ORDER BY t.timepoint_date, t.study_time NULLS LAST, t.last_received_at, t.study_instance_uid
    )
)
SELECT
    o.patient_key,
    o.pipeline,
    o.measurement,
    o.label,
    o.timepoint,
    o.timepoints,
    o.timepoint = o.timepoints AS is_latest,
    o.result_id,
    o.study_instance_uid,
    o.accession_number,
    o.study_date,
    o.timepoint_date,
    o.last_received_at,
    o.stored_at,
    o.model_name,
    o.model_version,
    o.volume_ml,
    o.baseline_study_instance_uid,
    o.baseline_date,
    o.baseline_ml,
    o.prior_study_instance_uid,
    o.prior_date,
    o.prior_ml,
    CASE WHEN o.timepoint > 1 THEN o.volume_ml - o.baseline_ml END AS change_from_baseline_ml,
    CASE WHEN o.timepoint > 1 THEN 100.0 * (o.volume_ml - o.baseline_ml) / NULLIF(o.baseline_ml, 0) END
        AS change_from_baseline_pct,
    o.volume_ml - o.prior_ml AS change_from_prior_ml,
    100.0 * (o.volume_ml - o.prior_ml) / NULLIF(o.prior_ml, 0) AS change_from_prior_pct,
    p.progression_threshold_pct,
    CASE
        WHEN p.progression_threshold_pct IS NULL THEN NULL
        WHEN o.timepoint = 1 THEN false
        WHEN o.baseline_ml = 0 THEN o.volume_ml > 0
        ELSE 100.0 * (o.volume_ml - o.baseline_ml) / o.baseline_ml > p.progression_threshold_pct
    END AS progression,
    o.study_time,
    o.study_description,
    o.ordered_by
FROM ordered o
LEFT JOIN pipelines p ON p.name = o.pipeline;

-- The newest timepoint per patient, pipeline and measurement: what a dashboard lists.
CREATE VIEW v_longitudinal_latest AS
SELECT * FROM v_longitudinal WHERE is_latest;

-- The worklist with the study's identity and which result amends which.
CREATE OR REPLACE VIEW v_worklist AS
SELECT
    r.result_id,
    r.patient_key,
    r.study_instance_uid,
    COALESCE(r.accession_number, s.accession_number) AS accession_number,
    COALESCE(r.study_date, s.study_date) AS study_date,
    r.pipeline,
    r.model_name,
    r.model_version,
    r.blinding_hash,
    r.seg_uri,
    r.sr_uri,
    r.last_received_at,
    r.stored_at,
    COALESCE(p.qc_required, false) AS qc_required,
    q.decision AS qc_decision,
    q.reviewer AS qc_reviewer,
    q.decided_at AS qc_decided_at,
    CASE
        WHEN NOT COALESCE(p.qc_required, false) THEN 'not_required'
        WHEN q.decision IS NULL THEN 'pending'
        ELSE lower(q.decision)
    END AS qc_status,
    (NOT COALESCE(p.qc_required, false) OR q.decision IS NOT DISTINCT FROM 'APPROVED') AS visible_to_readers,
    COALESCE(rv.review_count, 0) AS review_count,
    rv.reviewers,
    rv.last_reviewed_at,
    c.claimed_by,
    CASE
        WHEN COALESCE(rv.review_count, 0) > 0 THEN 'done'
        WHEN c.claimed_by IS NOT NULL THEN 'in review'
        ELSE 'new'
    END AS status,
    COALESCE(r.study_time, s.study_time) AS study_time,
    s.study_description,
    r.modality,
    s.institution_name,
    s.station_name,
    (COALESCE(r.study_date, s.study_date) IS NOT NULL) AS study_date_known,
    prev.result_id AS amends_result_id,
    prev.stored_at AS amends_stored_at,
    nxt.result_id AS superseded_by_result_id
FROM results r
LEFT JOIN studies s ON s.study_instance_uid = r.study_instance_uid
LEFT JOIN pipelines p ON p.name = r.pipeline
LEFT JOIN LATERAL (
    SELECT qd.decision, qd.reviewer, qd.decided_at
    FROM qc_decisions qd
    WHERE qd.result_id = r.result_id
    ORDER BY qd.decided_at DESC, qd.stored_at DESC
    LIMIT 1
) q ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS review_count, array_agg(DISTINCT rw.reviewer) AS reviewers,
           max(rw.submitted_at) AS last_reviewed_at
    FROM reviews rw
    WHERE rw.result_id = r.result_id
) rv ON true
LEFT JOIN LATERAL (
    SELECT array_agg(wc.username ORDER BY wc.claimed_at) AS claimed_by
    FROM worklist_claims wc
    WHERE wc.result_id = r.result_id
) c ON true
-- a study's results of one pipeline, newest first as v_timepoints picks them: a result made again
-- (late instances gave the series a new revision, or a replay) amends the one before it, which it
-- supersedes; the worklist lists only results that nothing supersedes
LEFT JOIN LATERAL (
    SELECT r2.result_id, r2.stored_at
    FROM results r2
    WHERE r2.study_instance_uid = r.study_instance_uid AND r2.pipeline = r.pipeline
      AND r2.status = 'completed' AND NOT r2.shadow AND r2.result_id <> r.result_id
      AND (r2.finished_at, r2.stored_at) < (r.finished_at, r.stored_at)
    ORDER BY r2.finished_at DESC, r2.stored_at DESC
    LIMIT 1
) prev ON true
LEFT JOIN LATERAL (
    SELECT r3.result_id
    FROM results r3
    WHERE r3.study_instance_uid = r.study_instance_uid AND r3.pipeline = r.pipeline
      AND r3.status = 'completed' AND NOT r3.shadow AND r3.result_id <> r.result_id
      AND (r3.finished_at, r3.stored_at) > (r.finished_at, r.stored_at)
    ORDER BY r3.finished_at DESC, r3.stored_at DESC
    LIMIT 1
) nxt ON true
WHERE r.status = 'completed' AND NOT r.shadow;

-- The newest corrected segmentation per result (a reader's upload, its volume recalculated from the
-- SEG), who gave it and when. The corrected volume is the SEG's total: it stands for the result's
-- volume where the result has one mL measurement (measurements_ml = 1).
CREATE VIEW v_corrections AS
SELECT DISTINCT ON (rv.result_id)
    rv.result_id,
    rv.corrected_volume_ml,
    rv.corrected_seg_uri,
    rv.reviewer AS corrected_by,
    rv.submitted_at AS corrected_at,
    (SELECT count(*) FROM measurements m WHERE m.result_id = rv.result_id AND m.unit = 'mL') AS measurements_ml
FROM reviews rv
WHERE rv.corrected_volume_ml IS NOT NULL
ORDER BY rv.result_id, rv.submitted_at DESC;
