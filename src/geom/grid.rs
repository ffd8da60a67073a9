//! The output mosaic grid: a north-up TAN projection with a pixel scale and a size, covering the
//! union of the exposure footprints (or given by the user).
//!
//! Chunking of the grid and who owns which chunk live in `plan`, not here.

use super::wcs::{sky_to_tangent_arcsec, tangent_arcsec_to_sky, TanSip};
use super::SkyCoord;
use serde::{Deserialize, Serialize};

/// A celestial output grid: `nx` x `ny` pixels of a plain TAN WCS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputGrid {
    /// Tangent point (CRVAL) in degrees.
    pub crval_deg: [f64; 2],
    /// FITS 1-based reference pixel (CRPIX1, CRPIX2).
    pub crpix: [f64; 2],
    /// Pixel scale in arcsec.
    pub pixscale_arcsec: f64,
    /// Position angle of the grid's +y axis east of north, in degrees (0 = north up).
    pub rotation_deg: f64,
    pub nx: usize,
    pub ny: usize,
}

impl OutputGrid {
    /// The WCS of the grid (CD matrix with east to the left for rotation 0).
    pub fn wcs(&self) -> TanSip {
        let s = self.pixscale_arcsec / 3600.0;
        let (c, si) = (self.rotation_deg.to_radians().cos(), self.rotation_deg.to_radians().sin());
        // rotation of a north-up, east-left grid by `rotation_deg` east of north
        let cd = [[-s * c, s * si], [s * si, s * c]];
        TanSip::tan(self.crval_deg, self.crpix, cd)
    }

    /// Number of pixels.
    pub fn npix(&self) -> usize {
        self.nx * self.ny
    }

    /// The north-up grid at `pixscale_arcsec` that covers all `points` (sky positions of footprint
    /// vertices) with `margin_px` pixels to spare on every side. The tangent point is the centre of
    /// the points' bounding box in the tangent plane about their mean direction, so the grid is
    /// symmetric about it.
    pub fn covering(points: &[SkyCoord], pixscale_arcsec: f64, margin_px: usize) -> Option<OutputGrid> {
        if points.is_empty() || pixscale_arcsec.is_nan() || pixscale_arcsec <= 0.0 {
            return None;
        }
        // mean direction as a provisional tangent point
        let (mut sx, mut sy, mut sz) = (0.0, 0.0, 0.0);
        for p in points {
            let (ra, de) = (p.ra_deg.to_radians(), p.dec_deg.to_radians());
            sx += de.cos() * ra.cos();
            sy += de.cos() * ra.sin();
            sz += de.sin();
        }
        let ra0 = sy.atan2(sx).to_degrees().rem_euclid(360.0);
        let de0 = sz.atan2((sx * sx + sy * sy).sqrt()).to_degrees();
        let bbox = |c: (f64, f64)| {
            let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
            for p in points {
                let (xi, eta) = sky_to_tangent_arcsec(c, p.ra_deg, p.dec_deg);
                b = [b[0].min(xi), b[1].min(eta), b[2].max(xi), b[3].max(eta)];
            }
            b
        };
        let b0 = bbox((ra0, de0));
        let centre = tangent_arcsec_to_sky((ra0, de0), 0.5 * (b0[0] + b0[2]), 0.5 * (b0[1] + b0[3]));
        let b = bbox(centre);
        // east is -x: the span in xi maps onto x reversed, symmetric about the tangent point
        let half_x = b[0].abs().max(b[2].abs()) / pixscale_arcsec + margin_px as f64;
        let half_y = b[1].abs().max(b[3].abs()) / pixscale_arcsec + margin_px as f64;
        let nx = (2.0 * half_x).ceil() as usize + 1;
        let ny = (2.0 * half_y).ceil() as usize + 1;
        Some(OutputGrid {
            crval_deg: [centre.0, centre.1],
            crpix: [(nx as f64 + 1.0) / 2.0, (ny as f64 + 1.0) / 2.0],
            pixscale_arcsec,
            rotation_deg: 0.0,
            nx,
            ny,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_grid_contains_all_points_north_up() {
        let pts: Vec<SkyCoord> = [(10.0, -30.0), (10.02, -30.0), (10.0, -29.98), (10.02, -29.98)]
            .iter()
            .map(|&(ra_deg, dec_deg)| SkyCoord { ra_deg, dec_deg })
            .collect();
        let g = OutputGrid::covering(&pts, 0.1, 5).unwrap();
        let w = g.wcs();
        for p in &pts {
            let (x, y) = w.sky_to_pixel(p.ra_deg, p.dec_deg).unwrap();
            assert!(x >= 4.0 && x <= g.nx as f64 - 5.0, "x {x} nx {}", g.nx);
            assert!(y >= 4.0 && y <= g.ny as f64 - 5.0, "y {y} ny {}", g.ny);
        }
        // 0.02 deg of Dec = 72 arcsec = 720 px, plus 2x5 margin
        assert!((g.ny as i64 - 731).abs() <= 2, "ny {}", g.ny);
        // north up: moving +y increases Dec at constant RA; east (+RA) is -x
        // (on the central column meridians are straight: RA is constant along +y)
        let xc = g.crpix[0] - 1.0;
        let (ra_a, de_a) = w.pixel_to_sky(xc, 100.0);
        let (ra_b, de_b) = w.pixel_to_sky(xc, 101.0);
        assert!(de_b > de_a && (ra_b - ra_a).abs() < 1e-9);
        let (ra_c, _) = w.pixel_to_sky(xc + 1.0, 100.0);
        assert!(ra_c < ra_a);
    }
}
