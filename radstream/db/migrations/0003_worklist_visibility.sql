-- v_worklist.visible_to_readers was NULL (not false) for a QC pipeline's result without a decision.
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
    END AS status
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
WHERE r.status = 'completed' AND NOT r.shadow;
