-- A patient row is written once and never rewritten. Its first/last-seen times were widened on
-- every batch that named the patient (a patient's requests and results come in batch after
-- batch), so each batch rewrote its patients' rows, and sink replicas queued behind each other
-- on those row locks, for two columns that nothing read. The times are now computed when read,
-- from the patient's studies (which keep their own first/last received times).
ALTER TABLE patients RENAME COLUMN first_seen_at TO created_at;
ALTER TABLE patients DROP COLUMN last_seen_at;

CREATE VIEW v_patients AS
SELECT
    p.patient_key,
    p.created_at,
    LEAST(min(s.first_received_at), min(s.last_received_at)) AS first_seen_at,
    max(s.last_received_at) AS last_seen_at,
    count(s.study_instance_uid) AS studies
FROM patients p
LEFT JOIN studies s ON s.patient_key = p.patient_key
GROUP BY p.patient_key, p.created_at;
