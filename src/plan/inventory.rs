//! The exposure table: what `io::fits` reads from a cal file's headers ([`CalMeta`]) and the
//! per-exposure record the plan keeps ([`ExposureRecord`]: visit, dither group, detector, band,
//! times, footprint).

use crate::geom::TanSip;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The identifiers of a JWST exposure, as strings exactly as in the primary header
/// (PROGRAM, OBSERVTN, VISIT, VISITGRP, SEQ_ID, ACT_ID, EXPOSURE).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExposureId {
    pub program: String,
    pub observation: String,
    pub visit: String,
    pub visit_group: String,
    pub sequence: String,
    pub activity: String,
    pub exposure: String,
}

impl ExposureId {
    /// The visit: program + observation + visit (`jw02107001001`).
    pub fn visit_key(&self) -> String {
        format!("jw{}{}{}", self.program, self.observation, self.visit)
    }
    /// The dither group: the visit plus visit group, sequence and activity (`jw02107001001_02101`).
    pub fn dither_group_key(&self) -> String {
        format!("{}_{}{}{}", self.visit_key(), self.visit_group, self.sequence, self.activity)
    }
}

/// Everything tessera needs from a cal file's headers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalMeta {
    pub path: PathBuf,
    /// INSTRUME (NIRCAM, MIRI)
    pub instrument: String,
    /// DETECTOR (NRCA1 ... NRCB5, NRCALONG, MIRIMAGE)
    pub detector: String,
    pub filter: String,
    pub pupil: String,
    /// TARGPROP
    pub target: String,
    pub id: ExposureId,
    pub expstart_mjd: f64,
    pub expmid_mjd: f64,
    pub expend_mjd: f64,
    /// EFFEXPTM, seconds.
    pub effexptm_s: f64,
    pub subarray: String,
    /// `[ny, nx]` of SCI.
    pub shape: [usize; 2],
    pub bunit: String,
    /// The TAN-SIP WCS of the SCI header.
    pub wcs: TanSip,
    /// DT_BGR: mid-time of the exposure minus that of the off-source backgrounds subtracted from it,
    /// days (written by `prep` or the JWST pipeline; `None` when no background was subtracted).
    #[serde(default)]
    pub dt_bgr_days: Option<f64>,
}

impl CalMeta {
    /// The band name: the filter, with the pupil when it is a filter itself (F164N behind F150W2).
    pub fn band(&self) -> String {
        let p = self.pupil.trim();
        if p.starts_with('F') && p.len() > 3 {
            p.to_string()
        } else {
            self.filter.clone()
        }
    }

    /// The file name of the exposure (`jw..._cal.fits`), for reports and messages.
    pub fn file_name(&self) -> String {
        self.path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned())
    }

    /// The MIRI Lyot-coronagraph box `[y0, y1, x0, x1]` (0-based, half-open) of a full-frame MIRI
    /// imager exposure: rows 735-1023 and columns 0-289 of the 1024 x 1032 frame (scaled to the frame
    /// when the frame is smaller, as in simulated small scenes). `None` for other instruments and for
    /// subarrays, which pass through.
    pub fn lyot_box(&self) -> Option<[usize; 4]> {
        let full = self.subarray.trim().eq_ignore_ascii_case("FULL");
        (self.instrument.trim().eq_ignore_ascii_case("MIRI") && full).then(|| miri_lyot_box(self.shape))
    }

    /// Sky positions along the outer edge of the detector (pixel edges, `per_edge` points per side).
    pub fn footprint_sky(&self, per_edge: usize) -> Vec<[f64; 2]> {
        let [ny, nx] = self.shape;
        let (x0, y0, x1, y1) = (-0.5, -0.5, nx as f64 - 0.5, ny as f64 - 0.5);
        let mut pts = vec![];
        let n = per_edge.max(1);
        for i in 0..n {
            let t = i as f64 / n as f64;
            pts.push((x0 + t * (x1 - x0), y0));
        }
        for i in 0..n {
            let t = i as f64 / n as f64;
            pts.push((x1, y0 + t * (y1 - y0)));
        }
        for i in 0..n {
            let t = i as f64 / n as f64;
            pts.push((x1 - t * (x1 - x0), y1));
        }
        for i in 0..n {
            let t = i as f64 / n as f64;
            pts.push((x0, y1 - t * (y1 - y0)));
        }
        pts.into_iter()
            .map(|(x, y)| {
                let (ra, dec) = self.wcs.pixel_to_sky(x, y);
                [ra, dec]
            })
            .collect()
    }
}

/// One row of the plan's exposure table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExposureRecord {
    /// Position in the table (sorted by visit, dither group, exposure, detector).
    pub index: usize,
    pub path: PathBuf,
    pub instrument: String,
    pub detector: String,
    pub band: String,
    pub visit: String,
    pub dither_group: String,
    pub exposure: String,
    pub expmid_mjd: f64,
    pub effexptm_s: f64,
    pub shape: [usize; 2],
    /// Footprint on the sky: (RA, Dec) in degrees along the detector edge.
    pub footprint_sky: Vec<[f64; 2]>,
    /// Footprint in 0-based output-grid pixel coordinates.
    pub footprint_px: Vec<[f64; 2]>,
    /// Rank that owns this exposure for per-exposure work.
    pub owner: usize,
}

/// The MIRI Lyot box `[y0, y1, x0, x1]` of a full frame of `shape` `[ny, nx]`: rows 735-1023 and
/// columns 0-289 of the real 1024 x 1032 frame, scaled to `shape`.
pub fn miri_lyot_box(shape: [usize; 2]) -> [usize; 4] {
    let [ny, nx] = shape;
    let y0 = (735.0 / 1024.0 * ny as f64).round() as usize;
    let x1 = (290.0 / 1032.0 * nx as f64).round() as usize;
    [y0.min(ny), ny, 0, x1.min(nx)]
}
