"""Realistic demo data: `contimg-server demo-data` and `serve --demo-images`.

The model follows the pipeline's observed behaviour (numbers from the domain brief):

* Drift scans of 309 s, 110 to 279 a day in one block per day, on declination strips 16.27, 50.5,
  54.57 (about two thirds of the days) and 65.72 deg, the strip changing every few days. The
  pointing RA is the local sidereal time at OVRO at mid-scan, so it advances ~1.29 deg a scan. The
  first block starts a little before 0834+555 transits, so even a small database holds the calibrator.
* One measurement set per scan; 3 to 5 images per imaged MS (continuum, pbcor, residual, psf,
  model, sometimes dirty or clean) so that the image total is exactly what was asked for. The
  newest measurement sets are still being processed (no images or no photometry yet) and a few
  failed; everything older is PHOTOMETRY_DONE/COMPLETED.
* A fixed NVSS-like catalog (power-law fluxes from 10 mJy to a few Jy) spread uniformly over the sky
  the scans covered, plus the calibrator. Forced photometry on the continuum image of every
  finished MS measures each catalog source within ~1.73 deg of the centre (1.13 deg on 4096-px
  images: just inside the pixel grid).
  About 4 % of the sources vary (scintillation, a damped random walk, or an extreme scattering
  event); the others scatter by their errors. Source statistics are the running sums that
  incremental ingest keeps (`FluxSums`), written with the same columns as `maintenance.STATS_SET`.
* A few hundred jobs, one per recent MS plus a few extra runs, in every state, with their event
  log (CREATED, STATE_CHANGED, PROGRESS; snapshots as the server writes them) and log lines. The
  transitions go through the server's own state machine (`domain.jobs.apply`).

Every time is derived from the simulated observations (never the wall clock), so one seed and one
image count always give the same rows. The database must be empty: `fill` refuses with SystemExit
when it holds any measurement set, image, source or job (there is no append mode);
`fill_if_empty` skips a database that has data.

Speed: 100,000 images take ~15 s (0.4 GB), 1,000,000 about three minutes (4 GB, ~12 M photometry
rows); see fill.py (one transaction, no WAL during the load) and loader.py (indexes rebuilt at the end).

Modules, from the survey up to the entry points (the load runs the middle ones in this order):

  survey.py            the instrument, the strips, the calibrator, time conversions
  scans.py             the observing schedule: scans, their times and pipeline stages
  measurement_sets.py  measurement_sets rows and their calibration tables
  catalog.py           the catalog sources and their rows
  variability.py       which sources vary and their flux curves
  photometry.py        forced photometry rows, the sources' running sums, per-scan tallies
  images.py            images and image_footprints rows
  job_history.py       one job through the server's state machine, recording events and log lines
  jobs.py              which jobs, and how each ran
  loader.py            the bulk load: every table in order, indexes dropped and rebuilt
  fill.py              fill / fill_if_empty: the schema, the connection, the empty check

This package imports the server's domain and storage; the server imports it only in cli.py, when a
command asks for demo data (serving never needs it).
"""

from .fill import fill, fill_if_empty

__all__ = ["fill", "fill_if_empty"]
