"""Versioned schema. Append new migrations; never edit one that has shipped."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial schema",
        """
CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;

CREATE TABLE measurement_sets (
    path TEXT PRIMARY KEY,
    group_id TEXT NOT NULL DEFAULT '',
    field_name TEXT NOT NULL DEFAULT '',
    start_mjd REAL NOT NULL DEFAULT 0,
    mid_mjd REAL NOT NULL DEFAULT 0,
    end_mjd REAL NOT NULL DEFAULT 0,
    pointing_ra_deg REAL NOT NULL DEFAULT 0,
    pointing_dec_deg REAL NOT NULL DEFAULT 0,
    phase_center_ra_deg REAL NOT NULL DEFAULT 0,
    phase_center_dec_deg REAL NOT NULL DEFAULT 0,
    stage INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL DEFAULT 0,
    cal_applied INTEGER NOT NULL DEFAULT 0,
    calibration_tables TEXT NOT NULL DEFAULT '[]',
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    stage_update_time INTEGER NOT NULL DEFAULT 0,
    process_time INTEGER NOT NULL DEFAULT 0,
    image_count INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX ms_by_start ON measurement_sets (start_mjd, path);
CREATE INDEX ms_by_mid ON measurement_sets (mid_mjd, path);
CREATE INDEX ms_by_dec ON measurement_sets (pointing_dec_deg, path);
CREATE INDEX ms_by_stage ON measurement_sets (stage, start_mjd, path);
CREATE INDEX ms_by_create ON measurement_sets (create_time, path);
CREATE INDEX ms_by_update ON measurement_sets (update_time, path);

CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids are never reused: names stay unambiguous
    path TEXT NOT NULL UNIQUE,
    ms_path TEXT NOT NULL REFERENCES measurement_sets (path),
    type INTEGER NOT NULL DEFAULT 0,
    format TEXT NOT NULL DEFAULT 'fits',
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    mid_mjd REAL NOT NULL DEFAULT 0,
    beam_major_arcsec REAL NOT NULL DEFAULT 0,
    beam_minor_arcsec REAL NOT NULL DEFAULT 0,
    beam_pa_deg REAL NOT NULL DEFAULT 0,
    noise_jy REAL NOT NULL DEFAULT 0,
    dynamic_range REAL NOT NULL DEFAULT 0,
    pbcor INTEGER NOT NULL DEFAULT 0,
    field_name TEXT NOT NULL DEFAULT '',
    center_ra_deg REAL NOT NULL DEFAULT 0,
    center_dec_deg REAL NOT NULL DEFAULT 0,
    size_x_px INTEGER NOT NULL DEFAULT 0,
    size_y_px INTEGER NOT NULL DEFAULT 0,
    cell_size_arcsec REAL NOT NULL DEFAULT 0,
    frequency_ghz REAL NOT NULL DEFAULT 0,
    bandwidth_mhz REAL NOT NULL DEFAULT 0,
    integration_s REAL NOT NULL DEFAULT 0,
    qa_grade INTEGER NOT NULL DEFAULT 0,
    qa_summary TEXT NOT NULL DEFAULT '',
    qa_metrics TEXT NOT NULL DEFAULT '{}',
    qa_source_count INTEGER NOT NULL DEFAULT 0,
    qa_peak_flux_jy REAL NOT NULL DEFAULT 0,
    photometry_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX images_by_ms ON images (ms_path, id);
CREATE INDEX images_by_create ON images (create_time, id);
CREATE INDEX images_by_mid ON images (mid_mjd, id);
CREATE INDEX images_by_noise ON images (noise_jy, id);
CREATE INDEX images_by_dr ON images (dynamic_range, id);
CREATE INDEX images_by_dec ON images (center_dec_deg, id);
CREATE INDEX images_by_ra ON images (center_ra_deg, id);
CREATE INDEX images_by_type ON images (type, create_time, id);
CREATE INDEX images_by_grade ON images (qa_grade, create_time, id);
-- Bounding boxes (unit-vector space) of image footprints for SearchImages.
CREATE VIRTUAL TABLE image_footprints USING rtree (id, x0, x1, y0, y1, z0, z1);

CREATE TABLE sources (
    sid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    designation TEXT NOT NULL DEFAULT '',
    ra_deg REAL NOT NULL,
    dec_deg REAL NOT NULL,
    catalog TEXT NOT NULL DEFAULT '',
    catalog_flux_mjy REAL NOT NULL DEFAULT 0,
    first_detection_mjd REAL NOT NULL DEFAULT 0,
    last_detection_mjd REAL NOT NULL DEFAULT 0,
    detection_count INTEGER NOT NULL DEFAULT 0,
    -- variability (derived from the sums below, stored so it can be filtered and sorted)
    epoch_count INTEGER NOT NULL DEFAULT 0,
    mean_flux_jy REAL NOT NULL DEFAULT 0,
    std_flux_jy REAL NOT NULL DEFAULT 0,
    min_flux_jy REAL NOT NULL DEFAULT 0,
    max_flux_jy REAL NOT NULL DEFAULT 0,
    chi2_reduced REAL NOT NULL DEFAULT 0,
    eta REAL NOT NULL DEFAULT 0,
    v REAL NOT NULL DEFAULT 0,
    sigma_deviation REAL NOT NULL DEFAULT 0,
    last_mjd REAL NOT NULL DEFAULT 0,
    is_variable INTEGER NOT NULL DEFAULT 0,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    -- running sums of peak flux f and weight w = 1/err^2
    sum_f REAL NOT NULL DEFAULT 0,
    sum_f2 REAL NOT NULL DEFAULT 0,
    sum_w REAL NOT NULL DEFAULT 0,
    sum_wf REAL NOT NULL DEFAULT 0,
    sum_wf2 REAL NOT NULL DEFAULT 0
);
CREATE INDEX sources_by_eta ON sources (eta, id);
CREATE INDEX sources_by_v ON sources (v, id);
CREATE INDEX sources_by_chi2 ON sources (chi2_reduced, id);
CREATE INDEX sources_by_sigma ON sources (sigma_deviation, id);
CREATE INDEX sources_by_mean ON sources (mean_flux_jy, id);
CREATE INDEX sources_by_max ON sources (max_flux_jy, id);
CREATE INDEX sources_by_epochs ON sources (epoch_count, id);
CREATE INDEX sources_by_dec ON sources (dec_deg, id);
CREATE INDEX sources_by_ra ON sources (ra_deg, id);
CREATE INDEX sources_by_last ON sources (last_detection_mjd, id);
CREATE VIRTUAL TABLE source_positions USING rtree (sid, x0, x1, y0, y1, z0, z1);

CREATE TABLE photometry (
    source_sid INTEGER NOT NULL REFERENCES sources (sid),
    observation_mjd REAL NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images (id),
    ra_deg REAL NOT NULL,
    dec_deg REAL NOT NULL,
    catalog_flux_mjy REAL NOT NULL,
    peak_flux_jy REAL NOT NULL,
    peak_flux_err_jy REAL NOT NULL,
    integrated_flux_jy REAL NOT NULL,
    integrated_flux_err_jy REAL NOT NULL,
    normalized_flux REAL NOT NULL,
    normalized_flux_err REAL NOT NULL,
    snr REAL NOT NULL,
    local_rms_jy REAL NOT NULL,
    separation_from_center_deg REAL NOT NULL,
    quality_flag TEXT NOT NULL,
    measure_time INTEGER NOT NULL,
    PRIMARY KEY (source_sid, observation_mjd, image_id)
) WITHOUT ROWID;
CREATE INDEX photometry_by_image ON photometry (image_id);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    type INTEGER NOT NULL,
    ms_path TEXT REFERENCES measurement_sets (path) ON DELETE SET NULL,
    target_path TEXT NOT NULL DEFAULT '',
    parameters TEXT NOT NULL DEFAULT '{}',
    state INTEGER NOT NULL,
    stage INTEGER NOT NULL DEFAULT 0,
    progress_percent REAL NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    create_time INTEGER NOT NULL,
    start_time INTEGER NOT NULL DEFAULT 0,
    end_time INTEGER NOT NULL DEFAULT 0,
    update_time INTEGER NOT NULL,
    error_message TEXT NOT NULL DEFAULT '',
    artifacts TEXT NOT NULL DEFAULT '[]',
    log_line_count INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX jobs_by_create ON jobs (create_time, id);
CREATE INDEX jobs_by_update ON jobs (update_time, id);
CREATE INDEX jobs_by_state ON jobs (state, create_time, id);
CREATE INDEX jobs_by_ms ON jobs (ms_path, create_time, id);

CREATE TABLE job_events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    type INTEGER NOT NULL,
    from_state INTEGER NOT NULL,
    to_state INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    message TEXT NOT NULL,
    time INTEGER NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, sequence);

CREATE TABLE job_logs (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    line_number INTEGER NOT NULL,
    time INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (job_id, line_number)
) WITHOUT ROWID;

CREATE TABLE request_ids (
    request_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    create_time INTEGER NOT NULL
) WITHOUT ROWID;
""",
    ),
    (
        2,
        "photometry by image without an index entry per row",
        """
-- Which sources each image measured, one row per image, instead of the photometry_by_image index:
-- that index cost ~15 % of every ingested row (bench/README.md), and only deleting an image reads it.
-- Its photometry then goes by primary-key prefix, source by source (storage/sqlite/maintenance.py).
CREATE TABLE image_photometry (
    image_id INTEGER PRIMARY KEY REFERENCES images (id),
    source_sids TEXT NOT NULL  -- JSON array of the sources measured (photometry.source_sid)
);
INSERT INTO image_photometry (image_id, source_sids)
    SELECT image_id, json_group_array(source_sid) FROM photometry GROUP BY image_id;

-- The table again without its foreign key to images: with it, deleting an image would scan all
-- photometry for rows naming it (SQLite checks a deleted parent against the child table, which no
-- longer has an index by image). image_photometry holds that reference now.
CREATE TABLE photometry_new (
    source_sid INTEGER NOT NULL REFERENCES sources (sid),
    observation_mjd REAL NOT NULL,
    image_id INTEGER NOT NULL,
    ra_deg REAL NOT NULL,
    dec_deg REAL NOT NULL,
    catalog_flux_mjy REAL NOT NULL,
    peak_flux_jy REAL NOT NULL,
    peak_flux_err_jy REAL NOT NULL,
    integrated_flux_jy REAL NOT NULL,
    integrated_flux_err_jy REAL NOT NULL,
    normalized_flux REAL NOT NULL,
    normalized_flux_err REAL NOT NULL,
    snr REAL NOT NULL,
    local_rms_jy REAL NOT NULL,
    separation_from_center_deg REAL NOT NULL,
    quality_flag TEXT NOT NULL,
    measure_time INTEGER NOT NULL,
    PRIMARY KEY (source_sid, observation_mjd, image_id)
) WITHOUT ROWID;
INSERT INTO photometry_new SELECT * FROM photometry ORDER BY source_sid, observation_mjd, image_id;
DROP TABLE photometry;
ALTER TABLE photometry_new RENAME TO photometry;
""",
    ),
    (
        3,
        "request ids expire",
        """
-- request_ids kept every write's request_id forever; they now expire after a retention period
-- (database.REQUEST_ID_RETENTION_US), removed oldest first through this index.
CREATE INDEX request_ids_by_time ON request_ids (create_time);
""",
    ),
    (
        4,
        "a row changed without a new update_time gets one",
        """
-- The server keeps each image's and source's serialized message under (id, update_time)
-- (server/readcache.py: items), so any change to such a row must move its update_time. The
-- server's writes always set it; a program writing the file directly (a pipeline script, the
-- sqlite3 shell) may not. Then these move it on by one microsecond: a new version, still in
-- order, and the same result for the same writes (the demo data are reproducible from a seed).
-- Only rows whose update_time did not change pay more than the test.
CREATE TRIGGER images_update_time AFTER UPDATE ON images WHEN NEW.update_time = OLD.update_time
BEGIN
    UPDATE images SET update_time = OLD.update_time + 1 WHERE id = NEW.id;
END;
CREATE TRIGGER sources_update_time AFTER UPDATE ON sources WHEN NEW.update_time = OLD.update_time
BEGIN
    UPDATE sources SET update_time = OLD.update_time + 1 WHERE sid = NEW.sid;
END;
""",
    ),
    (
        5,
        "writes name their caller",
        """
-- Who made each job transition, who registered each image and measurement set and who last
-- changed it: the caller name of the call's bearer token (the tokens file's `write NAME TOKEN`,
-- else `anonymous` or `unnamed-token`; never the token). Rows written before this migration have
-- '' (unknown).
ALTER TABLE job_events ADD COLUMN actor TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN creator TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN last_modifier TEXT NOT NULL DEFAULT '';
ALTER TABLE measurement_sets ADD COLUMN creator TEXT NOT NULL DEFAULT '';
ALTER TABLE measurement_sets ADD COLUMN last_modifier TEXT NOT NULL DEFAULT '';
""",
    ),
    (
        6,
        "job claims and leases",
        """
-- Jobs are claimed by priority (higher first), then age (ClaimJob), and a RUNNING job may hold a
-- lease: its holder, expiry, length (us) and the SHA-256 of its token (never the token). Existing
-- jobs: priority 0, no lease.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease_holder TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN lease_expire_time INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease_duration INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease_token_hash TEXT NOT NULL DEFAULT '';
-- The next claimable job: one probe of this index (state = PENDING, its order).
CREATE INDEX jobs_by_claim ON jobs (state, priority DESC, create_time, id);
""",
    ),
]
