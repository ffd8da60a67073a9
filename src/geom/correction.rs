//! Rigid astrometric corrections of a WCS on the sky: a shift in arcsec and a rotation, both in the
//! standard coordinates `(xi, eta)` (east, north; arcsec) of a common tangent point, as the `align`
//! and `astrometry` stages measure them. [`SkyCorrection::apply`] moves a [`TanSip`] so that every
//! position it gives moves by the correction: the reference point (CRVAL) is carried through the
//! transform and the CD matrix is rotated; SIP terms act in pixel space and are kept.
//!
//! Accuracy: the transform is exact at CRVAL; elsewhere on a detector the departure is second
//! order (shift or rotation times the distance in radians): 0.04 mas for a 0.3" shift and a 0.01 deg
//! rotation over a 2048 px LW detector 3' from the tangent point (tested).
//!
//! What does not live here: measuring the correction (`kernels::matching`), files, the config.

use super::wcs::{sky_to_tangent_arcsec, tangent_arcsec_to_sky, TanSip};
use serde::{Deserialize, Serialize};

/// `p -> c + R(theta) (p - c) + d` on the tangent plane about `tangent_deg`, with `p = (xi, eta)`
/// arcsec, `c = centre_arcsec`, `d = shift_arcsec`, and `theta = rotation_deg` counter-clockwise from
/// `+xi` (east) towards `+eta` (north).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkyCorrection {
    /// Tangent point (RA, Dec) of the frame, deg.
    pub tangent_deg: [f64; 2],
    /// Shift `[dxi, deta]` (east, north), arcsec.
    pub shift_arcsec: [f64; 2],
    /// Rotation, deg, counter-clockwise from east towards north.
    pub rotation_deg: f64,
    /// Centre of the rotation in the frame, arcsec.
    pub centre_arcsec: [f64; 2],
}

impl SkyCorrection {
    /// A pure shift in the frame about `tangent_deg`.
    pub fn shift(tangent_deg: [f64; 2], shift_arcsec: [f64; 2]) -> Self {
        Self { tangent_deg, shift_arcsec, rotation_deg: 0.0, centre_arcsec: [0.0, 0.0] }
    }

    /// True when the correction moves nothing.
    pub fn is_identity(&self) -> bool {
        self.shift_arcsec == [0.0, 0.0] && self.rotation_deg == 0.0
    }

    /// The corrected frame position of `(xi, eta)`, arcsec.
    pub fn apply_tangent(&self, p: [f64; 2]) -> [f64; 2] {
        let (s, c) = self.rotation_deg.to_radians().sin_cos();
        let [cx, cy] = self.centre_arcsec;
        let (u, v) = (p[0] - cx, p[1] - cy);
        [cx + c * u - s * v + self.shift_arcsec[0], cy + s * u + c * v + self.shift_arcsec[1]]
    }

    /// The corrected sky position of `(ra_deg, dec_deg)`.
    pub fn apply_sky(&self, ra_deg: f64, dec_deg: f64) -> (f64, f64) {
        let t = (self.tangent_deg[0], self.tangent_deg[1]);
        let (xi, eta) = sky_to_tangent_arcsec(t, ra_deg, dec_deg);
        let q = self.apply_tangent([xi, eta]);
        tangent_arcsec_to_sky(t, q[0], q[1])
    }

    /// `wcs` moved by the correction: CRVAL carried through it, CD rotated by `theta`.
    pub fn apply(&self, wcs: &TanSip) -> TanSip {
        if self.is_identity() {
            return wcs.clone();
        }
        let (ra, dec) = self.apply_sky(wcs.crval_deg[0], wcs.crval_deg[1]);
        let (s, c) = self.rotation_deg.to_radians().sin_cos();
        // CD maps pixel offsets to (xi, eta) at CRVAL: rotate the image of every pixel vector
        let r = [[c, -s], [s, c]];
        let cd = wcs.cd;
        let row = |i: usize| [r[i][0] * cd[0][0] + r[i][1] * cd[1][0], r[i][0] * cd[0][1] + r[i][1] * cd[1][1]];
        let out = [row(0), row(1)];
        TanSip { crval_deg: [ra, dec], cd: out, ..wcs.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wcs() -> TanSip {
        let s = 0.063 / 3600.0;
        let pa = 25f64.to_radians();
        TanSip::tan([24.18, 15.79], [128.5, 128.5], [[-s * pa.cos(), s * pa.sin()], [s * pa.sin(), s * pa.cos()]])
    }

    #[test]
    fn every_pixel_moves_by_the_correction() {
        // a 2048 px LW detector 3' from the tangent point, 0.3" shift, 0.01 deg rotation: < 0.05 mas
        let s = 0.063 / 3600.0;
        let pa = 25f64.to_radians();
        let cd = [[-s * pa.cos(), s * pa.sin()], [s * pa.sin(), s * pa.cos()]];
        let w = TanSip::tan([24.174 + 0.05 / 15.783f64.to_radians().cos(), 15.783], [1024.5, 1024.5], cd);
        let worst = departure(&w, [0.3, -0.2], 0.01, 2047.0);
        assert!(worst < 5e-5, "worst departure {worst} arcsec");
        // the small detector near the tangent point
        let worst = departure(&wcs(), [0.17, -0.23], 0.004, 255.0);
        assert!(worst < 5e-6, "worst departure {worst} arcsec");
    }

    /// Largest distance between the corrected WCS's positions and the correction applied by hand, arcsec.
    fn departure(w: &TanSip, shift: [f64; 2], rot: f64, n: f64) -> f64 {
        let tp = [24.174, 15.783];
        let corr =
            SkyCorrection { tangent_deg: tp, shift_arcsec: shift, rotation_deg: rot, centre_arcsec: [3.0, -2.0] };
        let moved = corr.apply(w);
        let t = (tp[0], tp[1]);
        let mut worst = 0f64;
        for &(x, y) in &[(0.0, 0.0), (n, 0.0), (0.0, n), (n, n), (0.5 * n, 0.5 * n)] {
            let (ra, dec) = w.pixel_to_sky(x, y);
            let (xi, eta) = sky_to_tangent_arcsec(t, ra, dec);
            // independent: the rotation and shift by hand
            let (s, c) = rot.to_radians().sin_cos();
            let (u, v) = (xi - 3.0, eta + 2.0);
            let want = [3.0 + c * u - s * v + shift[0], -2.0 + s * u + c * v + shift[1]];
            let (ra2, dec2) = moved.pixel_to_sky(x, y);
            let got = sky_to_tangent_arcsec(t, ra2, dec2);
            worst = worst.max((got.0 - want[0]).hypot(got.1 - want[1]));
        }
        eprintln!("departure {worst:e} arcsec");
        worst
    }

    #[test]
    fn identity_keeps_the_wcs() {
        let w = wcs();
        assert_eq!(SkyCorrection::shift([24.0, 15.0], [0.0, 0.0]).apply(&w), w);
    }
}
