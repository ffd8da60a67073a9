//! The FITS TAN-SIP world coordinate system: gnomonic (TAN) projection with the Simple Imaging
//! Polynomial distortion of Shupe et al. (2005, ASP Conf. Ser. 347, 491), as used in the headers of
//! JWST calibrated images. Here live the transform itself ([`TanSip`]: 0-based pixel <-> ICRS degrees,
//! including a true Newton inverse like astropy's `all_world2pix`), its parsing from and writing to
//! FITS header cards (held as a plain map of [`CardValue`]s), the local Jacobian and pixel area, a
//! least-squares fit of the inverse polynomials AP/BP, and the plain gnomonic helpers used by the
//! simulator and the output grid. The conventions are those of Greisen & Calabretta (2002, A&A 395,
//! 1061) and Calabretta & Greisen (2002, A&A 395, 1077). Pixels are 0-based everywhere in the API;
//! only the stored CRPIX keeps its FITS 1-based value. What deliberately does not live here: file
//! I/O (header cards come from and go to `io::fits` as plain maps), other projections or distortion
//! conventions (TPV, GWCS tables, lookup-table distortions), frame conversions (everything is ICRS),
//! and logging. The `wcs` crate is not
//! used: it evaluates SIP wrongly (see shared/BUILD-NOTES.md); this module is tested against astropy
//! through a small fixture (`tests/fixtures/wcs/astropy_wcs.json`, made by
//! `scripts/fixtures/make_wcs_fixture.py`).

use std::collections::BTreeMap;

/// Arcseconds per degree.
const ARCSEC_PER_DEG: f64 = 3600.0;
/// Newton iterations allowed in [`TanSip::sky_to_pixel`].
const NEWTON_MAX_ITER: usize = 50;
/// Newton stops when the pixel step is smaller than this (pixels).
const NEWTON_TOL_PX: f64 = 1e-10;
/// Highest SIP order accepted from a header (the SIP convention allows at most 9).
const SIP_MAX_ORDER: i64 = 9;

/// A FITS header value as far as WCS needs it.
#[derive(Clone, Debug, PartialEq)]
pub enum CardValue {
    /// A floating-point value.
    Real(f64),
    /// An integer value (accepted wherever a real is expected).
    Int(i64),
    /// A character string, without the FITS quotes (trailing blanks are ignored).
    Text(String),
}

/// Errors of WCS parsing and of the sky-to-pixel inverse.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum WcsError {
    /// A keyword the transform needs is not in the header.
    #[error("missing WCS keyword {0}")]
    MissingKey(String),
    /// A keyword is present but its value is of the wrong type or not supported.
    #[error("keyword {key} has a bad value: {reason}")]
    BadValue { key: String, reason: String },
    /// The linear part (CD, or PC times CDELT) cannot be inverted.
    #[error("the CD matrix is singular")]
    SingularCd,
    /// Newton's method did not find the pixel whose forward transform is the given sky position.
    #[error("sky-to-pixel iteration did not converge at RA {ra_deg}, Dec {dec_deg}")]
    NoConvergence { ra_deg: f64, dec_deg: f64 },
    /// The sky position is 90 degrees or more from the tangent point, so it has no gnomonic projection.
    #[error("sky position RA {ra_deg}, Dec {dec_deg} is 90 deg or more from the tangent point")]
    OutsideProjection { ra_deg: f64, dec_deg: f64 },
}

/// SIP polynomial `sum_{p+q<=order} coeffs[p][q] * u^p * v^q` (Shupe et al. 2005), in pixels.
///
/// `coeffs` is dense, `(order+1) x (order+1)`, indexed `[p][q]` (`p` = power of `u`, the column
/// offset; `q` = power of `v`, the row offset), with zeros where the header has no term. Entries with
/// `p + q > order`, and entries missing from a ragged `coeffs`, are ignored (taken as zero).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SipPoly {
    /// Polynomial order (`A_ORDER`, ...).
    pub order: usize,
    /// Coefficients, `coeffs[p][q]` multiplies `u^p v^q`.
    pub coeffs: Vec<Vec<f64>>,
}

impl SipPoly {
    /// The polynomial of the given order with all coefficients zero.
    pub fn zero(order: usize) -> Self {
        SipPoly { order, coeffs: vec![vec![0.0; order + 1]; order + 1] }
    }

    /// Coefficient of `u^p v^q`, zero when absent or beyond the order.
    fn coeff(&self, p: usize, q: usize) -> f64 {
        if p + q > self.order {
            return 0.0;
        }
        self.coeffs.get(p).and_then(|row| row.get(q)).copied().unwrap_or(0.0)
    }

    /// Value at `(u, v)`, pixel offsets from CRPIX (in the same units as the header coefficients).
    pub fn eval(&self, u: f64, v: f64) -> f64 {
        self.eval_with_gradient(u, v).0
    }

    /// Value and analytic partial derivatives `(P, dP/du, dP/dv)` at `(u, v)`, by nested Horner
    /// schemes: `P = sum_p s_p(v) u^p` with `s_p(v) = sum_q c[p][q] v^q`.
    fn eval_with_gradient(&self, u: f64, v: f64) -> (f64, f64, f64) {
        let n = self.order;
        let (mut val, mut d_u, mut d_v) = (0.0, 0.0, 0.0);
        for p in (0..=n).rev() {
            // s_p(v) and s_p'(v) by Horner in v.
            let (mut s, mut ds) = (0.0, 0.0);
            for q in (0..=n - p).rev() {
                ds = ds * v + s;
                s = s * v + self.coeff(p, q);
            }
            // Horner in u for P and dP/du; dP/dv = sum_p s_p'(v) u^p.
            d_u = d_u * u + val;
            val = val * u + s;
            d_v = d_v * u + ds;
        }
        (val, d_u, d_v)
    }
}

/// A FITS TAN-SIP world coordinate system (celestial axes RA, Dec; LONPOLE = 180).
///
/// Forward transform, for a 0-based pixel `(x, y)` (`x` = column, `y` = row, centre of the first
/// pixel = 0.0):
/// 1. `u = x + 1 - CRPIX1`, `v = y + 1 - CRPIX2` (pixels);
/// 2. `u' = u + A(u, v)`, `v' = v + B(u, v)` (SIP, Shupe et al. 2005);
/// 3. `(xi, eta) = CD . (u', v')` in degrees: gnomonic tangent-plane coordinates about CRVAL
///    (`xi` toward east = increasing RA, `eta` toward north);
/// 4. gnomonic deprojection about CRVAL (Calabretta & Greisen 2002, section 5.1.3, with the native
///    longitude of the celestial pole LONPOLE = 180 deg).
///
/// AP/BP, when present, only seed the inverse; [`TanSip::sky_to_pixel`] always refines on the exact
/// forward transform.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TanSip {
    /// FITS 1-based `[CRPIX1, CRPIX2]` exactly as in the header (pixels).
    pub crpix: [f64; 2],
    /// `[CRVAL1, CRVAL2]` = (RA, Dec) of the tangent point in degrees.
    pub crval_deg: [f64; 2],
    /// Linear part in degrees per pixel, `[[CD1_1, CD1_2], [CD2_1, CD2_2]]` (from PC*CDELT if needed).
    pub cd: [[f64; 2]; 2],
    /// Forward SIP polynomial of the column offset `u` (`A_p_q`).
    pub a: Option<SipPoly>,
    /// Forward SIP polynomial of the row offset `v` (`B_p_q`).
    pub b: Option<SipPoly>,
    /// Inverse SIP polynomial of `u'` (`AP_p_q`), optional: used as the Newton starting point.
    pub ap: Option<SipPoly>,
    /// Inverse SIP polynomial of `v'` (`BP_p_q`), optional: used as the Newton starting point.
    pub bp: Option<SipPoly>,
}

impl TanSip {
    /// Plain TAN, no distortion: tangent point `crval_deg` = (RA, Dec) in degrees, FITS 1-based
    /// reference pixel `crpix`, linear part `cd` in degrees per pixel (`[[CD1_1, CD1_2], [CD2_1,
    /// CD2_2]]`).
    pub fn tan(crval_deg: [f64; 2], crpix: [f64; 2], cd: [[f64; 2]; 2]) -> Self {
        TanSip { crpix, crval_deg, cd, a: None, b: None, ap: None, bp: None }
    }

    /// Parse from header cards (keys upper-case, as in FITS).
    ///
    /// Accepted: `CTYPE1`/`CTYPE2` = `RA---TAN`/`DEC--TAN`, with or without `-SIP` (on both or
    /// neither); `CRPIX1/2`, `CRVAL1/2`; the linear part as `CDi_j` (absent elements are zero), or
    /// as `PCi_j` (default identity) times `CDELTi`, or as `CDELTi` with the old `CROTA2`. When both
    /// `PCi_j` and `CDi_j` are present, PC wins (as in wcslib). `CUNITi` must be `deg` when present,
    /// `LONPOLE` must be 180 when present, `RADESYS` must be ICRS or FK5 when present (FK5 J2000 is
    /// taken as ICRS: they differ by a few 0.01 arcsec). SIP: `A_ORDER`, `B_ORDER`, `A_p_q`, `B_p_q` (`p + q <= order`; absent terms are
    /// zero), optionally `AP_ORDER`, `BP_ORDER`, `AP_p_q`, `BP_p_q`. As astropy does, SIP
    /// coefficients are used when present even if the CTYPEs lack `-SIP`. Integer cards are accepted
    /// where reals are expected, and text cards holding a number (also with a Fortran `D` exponent).
    /// Other keywords are ignored.
    ///
    /// # Errors
    /// [`WcsError::MissingKey`] when a required keyword is absent (CTYPEi, CRPIXi, CRVALi, the
    /// linear part reported as `CD1_1` or `CDELTi`, `A_ORDER` when the CTYPEs say `-SIP`, the partner
    /// `B_ORDER`/`A_ORDER`/`BP_ORDER`/`AP_ORDER`); [`WcsError::BadValue`] for an unsupported
    /// projection, unit, LONPOLE, frame, SIP order, a non-numeric or non-finite number, or CRVAL2
    /// outside [-90, 90) without LONPOLE; [`WcsError::SingularCd`] when the linear part is singular.
    pub fn from_cards(cards: &BTreeMap<String, CardValue>) -> Result<Self, WcsError> {
        // Projection.
        let ctype1 = required_text(cards, "CTYPE1")?;
        let ctype2 = required_text(cards, "CTYPE2")?;
        let sip1 = parse_ctype("CTYPE1", &ctype1, "RA---TAN")?;
        let sip2 = parse_ctype("CTYPE2", &ctype2, "DEC--TAN")?;
        if sip1 != sip2 {
            return Err(bad("CTYPE2", format!("'{ctype1}' and '{ctype2}' disagree on -SIP")));
        }
        check_units_and_frame(cards)?;

        // Reference point.
        let crpix = [required_real(cards, "CRPIX1")?, required_real(cards, "CRPIX2")?];
        let crval_deg = [required_real(cards, "CRVAL1")?, required_real(cards, "CRVAL2")?];
        match real(cards, "LONPOLE")? {
            Some(lonpole) if (lonpole - 180.0).abs() > 1e-9 => {
                return Err(bad("LONPOLE", format!("{lonpole} is not supported, only 180")));
            }
            Some(_) if !(-90.0..=90.0).contains(&crval_deg[1]) => {
                return Err(bad("CRVAL2", format!("{} is outside [-90, 90]", crval_deg[1])));
            }
            // The FITS default is LONPOLE = 0 when the tangent point is the north pole.
            None if !(-90.0..90.0).contains(&crval_deg[1]) => {
                return Err(bad(
                    "CRVAL2",
                    format!("{} is outside [-90, 90) (at +90 the default LONPOLE is 0)", crval_deg[1]),
                ));
            }
            _ => {}
        }

        // Linear part.
        let cd = linear_part(cards)?;
        if !det2(&cd).is_finite() || det2(&cd) == 0.0 {
            return Err(WcsError::SingularCd);
        }

        // Distortion.
        let (a, b) = sip_pair(cards, "A", "B")?;
        if sip1 && a.is_none() {
            return Err(WcsError::MissingKey("A_ORDER".into()));
        }
        let (ap, bp) = sip_pair(cards, "AP", "BP")?;

        Ok(TanSip { crpix, crval_deg, cd, a, b, ap, bp })
    }

    /// The cards to write, in order: CTYPE1/2 (with `-SIP` when `a` or `b` is present), CUNIT1/2,
    /// CRPIX1/2, CRVAL1/2, CD1_1..CD2_2, LONPOLE = 180, RADESYS = 'ICRS', then A_ORDER, A_p_q, B_ORDER,
    /// B_p_q, AP_ORDER, AP_p_q, BP_ORDER, BP_p_q (zero coefficients are not written; when only one of a
    /// pair is present the other is written as an all-zero polynomial of the same order). Values are
    /// full `f64` precision; each card comes with a short comment.
    pub fn to_cards(&self) -> Vec<(String, CardValue, String)> {
        let has_sip = self.a.is_some() || self.b.is_some();
        let suffix = if has_sip { "-SIP" } else { "" };
        let projection = if has_sip { "TAN (gnomonic) + SIP distortion" } else { "TAN (gnomonic)" };
        use CardValue::{Real, Text};
        let (crpix, crval, cd) = (self.crpix, self.crval_deg, self.cd);
        let linear = [
            ("CTYPE1", Text(format!("RA---TAN{suffix}")), projection),
            ("CTYPE2", Text(format!("DEC--TAN{suffix}")), projection),
            ("CUNIT1", Text("deg".into()), "unit of CRVAL1 and CD1_j"),
            ("CUNIT2", Text("deg".into()), "unit of CRVAL2 and CD2_j"),
            ("CRPIX1", Real(crpix[0]), "reference pixel, axis 1 (1-based)"),
            ("CRPIX2", Real(crpix[1]), "reference pixel, axis 2 (1-based)"),
            ("CRVAL1", Real(crval[0]), "[deg] RA at the reference pixel"),
            ("CRVAL2", Real(crval[1]), "[deg] Dec at the reference pixel"),
            ("CD1_1", Real(cd[0][0]), "[deg/pixel] linear transform matrix"),
            ("CD1_2", Real(cd[0][1]), "[deg/pixel] linear transform matrix"),
            ("CD2_1", Real(cd[1][0]), "[deg/pixel] linear transform matrix"),
            ("CD2_2", Real(cd[1][1]), "[deg/pixel] linear transform matrix"),
            ("LONPOLE", Real(180.0), "[deg] native longitude of celestial pole"),
            ("RADESYS", Text("ICRS".into()), "celestial reference frame"),
        ];
        let mut out: Vec<(String, CardValue, String)> =
            linear.into_iter().map(|(k, v, c)| (k.to_string(), v, c.to_string())).collect();
        let mut push = |key: String, value: CardValue, comment: &str| {
            out.push((key, value, comment.to_string()));
        };
        for (name_a, name_b, pa, pb, what) in [
            ("A", "B", &self.a, &self.b, "SIP forward distortion"),
            ("AP", "BP", &self.ap, &self.bp, "SIP inverse distortion"),
        ] {
            // A missing partner is written as the zero polynomial of the other's order.
            let Some(partner_order) = pa.as_ref().or(pb.as_ref()).map(|p| p.order) else {
                continue;
            };
            for (name, poly) in [(name_a, pa), (name_b, pb)] {
                let poly_order = poly.as_ref().map_or(partner_order, |p| p.order);
                let order_comment = format!("{what} order");
                push(format!("{name}_ORDER"), CardValue::Int(poly_order as i64), &order_comment);
                if let Some(poly) = poly {
                    for p in 0..=poly.order {
                        for q in 0..=poly.order - p {
                            let c = poly.coeff(p, q);
                            if c != 0.0 {
                                push(format!("{name}_{p}_{q}"), Real(c), what);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// 0-based pixel (`x` = column, `y` = row, centre of the first pixel = 0.0) to ICRS
    /// `(ra_deg, dec_deg)`, RA in [0, 360). Defined for any finite pixel; far outside the detector the
    /// SIP polynomial is extrapolated.
    pub fn pixel_to_sky(&self, x: f64, y: f64) -> (f64, f64) {
        let (xi_deg, eta_deg) = self.pixel_to_tangent_deg(x, y);
        let (ra, dec) = deproject_deg(self.crval_deg, xi_deg.to_radians(), eta_deg.to_radians());
        (ra, dec)
    }

    /// Inverse of [`TanSip::pixel_to_sky`]: ICRS `(ra_deg, dec_deg)` (any RA, wrapped) to the 0-based
    /// pixel `(x, y)`. The starting point is the AP/BP polynomial when present (else the linear
    /// inverse); Newton's method on the exact forward SIP, with its analytic derivative, then refines
    /// it until the step is below 1e-10 pixel, so the result is the true inverse (like astropy's
    /// `all_world2pix`), whatever the accuracy of AP/BP.
    ///
    /// # Errors
    /// [`WcsError::OutsideProjection`] for a position 90 deg or more from CRVAL,
    /// [`WcsError::SingularCd`] when the CD matrix cannot be inverted, and
    /// [`WcsError::NoConvergence`] when Newton's method fails (only far outside the region where the
    /// SIP polynomial is meaningful).
    pub fn sky_to_pixel(&self, ra_deg: f64, dec_deg: f64) -> Result<(f64, f64), WcsError> {
        let (xi, eta) =
            project_rad(self.crval_deg, ra_deg, dec_deg).ok_or(WcsError::OutsideProjection { ra_deg, dec_deg })?;
        let (xi_deg, eta_deg) = (xi.to_degrees(), eta.to_degrees());
        let inv = invert2(&self.cd).ok_or(WcsError::SingularCd)?;
        // Undistorted offsets (u', v') from CRPIX.
        let uu = inv[0][0] * xi_deg + inv[0][1] * eta_deg;
        let vv = inv[1][0] * xi_deg + inv[1][1] * eta_deg;
        let to_pixel = |u: f64, v: f64| (u + self.crpix[0] - 1.0, v + self.crpix[1] - 1.0);
        if self.a.is_none() && self.b.is_none() {
            return Ok(to_pixel(uu, vv));
        }

        let no_convergence = WcsError::NoConvergence { ra_deg, dec_deg };
        let (mut u, mut v) = self.inverse_sip_guess(uu, vv);
        let residual = |u: f64, v: f64| {
            let (fu, fv) = self.distort(u, v);
            (fu - uu, fv - vv)
        };
        let (mut ru, mut rv) = residual(u, v);
        for _ in 0..NEWTON_MAX_ITER {
            let (_, m) = self.distort_with_jacobian(u, v);
            let Some(mi) = invert2(&m) else {
                return Err(no_convergence);
            };
            let du = mi[0][0] * ru + mi[0][1] * rv;
            let dv = mi[1][0] * ru + mi[1][1] * rv;
            if !(du.is_finite() && dv.is_finite()) {
                return Err(no_convergence);
            }
            if du.hypot(dv) < NEWTON_TOL_PX {
                return Ok(to_pixel(u - du, v - dv));
            }
            // Backtrack when the full step increases the residual (only far from the solution).
            let r0 = ru.hypot(rv);
            let mut t = 1.0;
            loop {
                let (cu, cv) = (u - t * du, v - t * dv);
                let (nu, nv) = residual(cu, cv);
                if nu.hypot(nv) <= r0 || t < 1.0 / 64.0 {
                    (u, v, ru, rv) = (cu, cv, nu, nv);
                    break;
                }
                t *= 0.5;
            }
        }
        Err(no_convergence)
    }

    /// Jacobian `[[dxi/dx, dxi/dy], [deta/dx, deta/dy]]` in arcsec per pixel at the 0-based pixel
    /// `(x, y)`, where `(xi, eta)` are gnomonic tangent-plane coordinates about CRVAL (`xi` toward
    /// east = increasing RA, `eta` north). Equals `CD . (I + dSIP/d(u, v))`, times 3600.
    pub fn jacobian_arcsec(&self, x: f64, y: f64) -> [[f64; 2]; 2] {
        let (u, v) = self.offsets(x, y);
        let (_, m) = self.distort_with_jacobian(u, v);
        let j = mul2(&self.cd, &m);
        j.map(|row| row.map(|e| e * ARCSEC_PER_DEG))
    }

    /// Solid angle in steradian of the pixel at the 0-based `(x, y)`: `|det J|` of
    /// [`TanSip::jacobian_arcsec`] converted to radians, times the gnomonic area factor
    /// `(1 + xi^2 + eta^2)^(-3/2)` (xi, eta in radians) that turns tangent-plane area into sky area.
    pub fn pixel_area_sr(&self, x: f64, y: f64) -> f64 {
        let j = self.jacobian_arcsec(x, y);
        let rad_per_arcsec = (1.0 / ARCSEC_PER_DEG).to_radians();
        let (xi_deg, eta_deg) = self.pixel_to_tangent_deg(x, y);
        let (xi, eta) = (xi_deg.to_radians(), eta_deg.to_radians());
        let factor = (1.0 + xi * xi + eta * eta).powf(-1.5);
        det2(&j).abs() * rad_per_arcsec * rad_per_arcsec * factor
    }

    /// Nominal pixel scale `sqrt(|det CD|)` in arcsec (ignores the SIP distortion).
    pub fn pixel_scale_arcsec(&self) -> f64 {
        det2(&self.cd).abs().sqrt() * ARCSEC_PER_DEG
    }

    /// A copy with AP/BP of the given `order` fitted by least squares so that they invert A/B: on a
    /// 64 x 64 grid over the 0-based pixel box `[0, nx) x [0, ny)` extended by 10% on every side, the
    /// fit minimises `|u - (u' + AP(u', v'))|` and likewise for `v`, with all terms `p + q <= order`
    /// (constant and linear ones included). The fit is done in coordinates scaled to about [-1, 1] with
    /// an SVD, then scaled back. The inverse of a polynomial is not a polynomial: with a few pixels of
    /// distortion at the corners, `order` = forward order + 1 gives residuals of about 1e-3 pixel over
    /// the detector (forward order + 2 for the same over the extended box; the forward order alone
    /// leaves about 1e-2). Without A and B there is nothing to invert: the copy has no AP/BP.
    pub fn with_fitted_inverse(&self, order: usize, nx: usize, ny: usize) -> Self {
        let mut out = self.clone();
        if self.a.is_none() && self.b.is_none() {
            out.ap = None;
            out.bp = None;
            return out;
        }
        const GRID: usize = 64;
        let axis = |n: usize, k: usize| {
            let n = n.max(1) as f64;
            -0.1 * n + 1.2 * n * k as f64 / (GRID - 1) as f64
        };
        let mut samples = Vec::with_capacity(GRID * GRID);
        for j in 0..GRID {
            for i in 0..GRID {
                let (u, v) = self.offsets(axis(nx, i), axis(ny, j));
                let (uu, vv) = self.distort(u, v);
                samples.push((u, v, uu, vv));
            }
        }
        let scale = samples.iter().fold(1.0_f64, |s, &(_, _, uu, vv)| s.max(uu.abs()).max(vv.abs()));
        let terms: Vec<(usize, usize)> = (0..=order).flat_map(|p| (0..=order - p).map(move |q| (p, q))).collect();
        let design = nalgebra::DMatrix::from_fn(samples.len(), terms.len(), |r, c| {
            let (_, _, uu, vv) = samples[r];
            let (p, q) = terms[c];
            (uu / scale).powi(p as i32) * (vv / scale).powi(q as i32)
        });
        let rhs = nalgebra::DMatrix::from_fn(samples.len(), 2, |r, c| {
            let (u, v, uu, vv) = samples[r];
            if c == 0 {
                u - uu
            } else {
                v - vv
            }
        });
        let solution = design.svd(true, true).solve(&rhs, 1e-14).expect("SVD computed with U and V solves");
        let mut ap = SipPoly::zero(order);
        let mut bp = SipPoly::zero(order);
        for (c, &(p, q)) in terms.iter().enumerate() {
            let s = scale.powi((p + q) as i32);
            ap.coeffs[p][q] = solution[(c, 0)] / s;
            bp.coeffs[p][q] = solution[(c, 1)] / s;
        }
        out.ap = Some(ap);
        out.bp = Some(bp);
        out
    }

    /// The same WCS with CRVAL moved by a small sky offset and rotated about it: the new CRVAL is the
    /// point at tangent-plane offset (`dra_arcsec` east, i.e. along RA*cos(Dec), `ddec_arcsec` north)
    /// from the old one, and the CD matrix is rotated by `rot_deg` (positive = east of north: the
    /// direction that pointed north now points `rot_deg` toward east). SIP terms are unchanged (they
    /// act in pixel space). Used for pointing errors and tweaks.
    pub fn shifted(&self, dra_arcsec: f64, ddec_arcsec: f64, rot_deg: f64) -> Self {
        let (ra, dec) = tangent_arcsec_to_sky((self.crval_deg[0], self.crval_deg[1]), dra_arcsec, ddec_arcsec);
        let (s, c) = rot_deg.to_radians().sin_cos();
        let rot = [[c, s], [-s, c]];
        TanSip { crval_deg: [ra, dec], cd: mul2(&rot, &self.cd), ..self.clone() }
    }

    /// Pixel offsets `(u, v)` from CRPIX of the 0-based pixel `(x, y)`.
    fn offsets(&self, x: f64, y: f64) -> (f64, f64) {
        (x + 1.0 - self.crpix[0], y + 1.0 - self.crpix[1])
    }

    /// Tangent-plane coordinates `(xi, eta)` in degrees of the 0-based pixel `(x, y)`.
    fn pixel_to_tangent_deg(&self, x: f64, y: f64) -> (f64, f64) {
        let (u, v) = self.offsets(x, y);
        let (uu, vv) = self.distort(u, v);
        (self.cd[0][0] * uu + self.cd[0][1] * vv, self.cd[1][0] * uu + self.cd[1][1] * vv)
    }

    /// Forward SIP: `(u + A(u, v), v + B(u, v))`.
    fn distort(&self, u: f64, v: f64) -> (f64, f64) {
        let da = self.a.as_ref().map_or(0.0, |p| p.eval(u, v));
        let db = self.b.as_ref().map_or(0.0, |p| p.eval(u, v));
        (u + da, v + db)
    }

    /// Forward SIP and its Jacobian `[[1 + dA/du, dA/dv], [dB/du, 1 + dB/dv]]`.
    fn distort_with_jacobian(&self, u: f64, v: f64) -> ((f64, f64), [[f64; 2]; 2]) {
        let zero = (0.0, 0.0, 0.0);
        let (a, a_u, a_v) = self.a.as_ref().map_or(zero, |p| p.eval_with_gradient(u, v));
        let (b, b_u, b_v) = self.b.as_ref().map_or(zero, |p| p.eval_with_gradient(u, v));
        ((u + a, v + b), [[1.0 + a_u, a_v], [b_u, 1.0 + b_v]])
    }

    /// Approximate inverse SIP from AP/BP: `(u' + AP(u', v'), v' + BP(u', v'))`, or `(u', v')`.
    fn inverse_sip_guess(&self, uu: f64, vv: f64) -> (f64, f64) {
        let dap = self.ap.as_ref().map_or(0.0, |p| p.eval(uu, vv));
        let dbp = self.bp.as_ref().map_or(0.0, |p| p.eval(uu, vv));
        (uu + dap, vv + dbp)
    }
}

/// Gnomonic projection of `(ra_deg, dec_deg)` about the tangent point `center_deg` = (RA, Dec) in
/// degrees: standard coordinates `(xi, eta)` in arcsec, `xi` toward east (increasing RA), `eta`
/// toward north. Positions 90 deg or more from the centre have no projection: both are NaN.
pub fn sky_to_tangent_arcsec(center_deg: (f64, f64), ra_deg: f64, dec_deg: f64) -> (f64, f64) {
    match project_rad([center_deg.0, center_deg.1], ra_deg, dec_deg) {
        Some((xi, eta)) => (xi.to_degrees() * ARCSEC_PER_DEG, eta.to_degrees() * ARCSEC_PER_DEG),
        None => (f64::NAN, f64::NAN),
    }
}

/// Inverse of [`sky_to_tangent_arcsec`]: standard coordinates `(xi, eta)` in arcsec about the tangent
/// point `center_deg` = (RA, Dec) in degrees to `(ra_deg, dec_deg)`, RA in [0, 360).
pub fn tangent_arcsec_to_sky(center_deg: (f64, f64), xi: f64, eta: f64) -> (f64, f64) {
    let to_rad = |a: f64| (a / ARCSEC_PER_DEG).to_radians();
    deproject_deg([center_deg.0, center_deg.1], to_rad(xi), to_rad(eta))
}

/// Gnomonic projection about `center_deg`: `(xi, eta)` in radians, `None` when the position is 90 deg
/// or more from the centre (cos of the distance <= 0).
fn project_rad(center_deg: [f64; 2], ra_deg: f64, dec_deg: f64) -> Option<(f64, f64)> {
    let (sin_d0, cos_d0) = center_deg[1].to_radians().sin_cos();
    let (sin_d, cos_d) = dec_deg.to_radians().sin_cos();
    let (sin_da, cos_da) = (ra_deg - center_deg[0]).to_radians().sin_cos();
    let cos_c = sin_d0 * sin_d + cos_d0 * cos_d * cos_da;
    if cos_c <= 0.0 || cos_c.is_nan() {
        return None;
    }
    let xi = cos_d * sin_da / cos_c;
    let eta = (cos_d0 * sin_d - sin_d0 * cos_d * cos_da) / cos_c;
    Some((xi, eta))
}

/// Gnomonic deprojection about `center_deg` of `(xi, eta)` in radians (LONPOLE = 180):
/// `ra = ra0 + atan2(xi, cos d0 - eta sin d0)`,
/// `dec = atan2(eta cos d0 + sin d0, sqrt(xi^2 + (cos d0 - eta sin d0)^2))`; degrees, RA in [0, 360).
fn deproject_deg(center_deg: [f64; 2], xi: f64, eta: f64) -> (f64, f64) {
    let (sin_d0, cos_d0) = center_deg[1].to_radians().sin_cos();
    let den = cos_d0 - eta * sin_d0;
    // Adding the offset in degrees keeps CRVAL1 exact at the reference pixel.
    let ra = center_deg[0] + xi.atan2(den).to_degrees();
    let dec = (eta * cos_d0 + sin_d0).atan2(xi.hypot(den)).to_degrees();
    (wrap_360(ra), dec)
}

/// An angle in degrees wrapped into [0, 360).
pub(crate) fn wrap_360(a: f64) -> f64 {
    let r = a.rem_euclid(360.0);
    // rem_euclid of a tiny negative number rounds to 360.0.
    if r >= 360.0 {
        0.0
    } else {
        r
    }
}

pub(crate) fn det2(m: &[[f64; 2]; 2]) -> f64 {
    m[0][0] * m[1][1] - m[0][1] * m[1][0]
}

/// Inverse of a 2x2 matrix, `None` when singular or not finite.
pub(crate) fn invert2(m: &[[f64; 2]; 2]) -> Option<[[f64; 2]; 2]> {
    let d = det2(m);
    if d == 0.0 || !d.is_finite() {
        return None;
    }
    Some([[m[1][1] / d, -m[0][1] / d], [-m[1][0] / d, m[0][0] / d]])
}

fn mul2(a: &[[f64; 2]; 2], b: &[[f64; 2]; 2]) -> [[f64; 2]; 2] {
    [
        [a[0][0] * b[0][0] + a[0][1] * b[1][0], a[0][0] * b[0][1] + a[0][1] * b[1][1]],
        [a[1][0] * b[0][0] + a[1][1] * b[1][0], a[1][0] * b[0][1] + a[1][1] * b[1][1]],
    ]
}

pub(crate) fn bad(key: &str, reason: String) -> WcsError {
    WcsError::BadValue { key: key.to_string(), reason }
}

/// A real-valued card: `Real`, `Int`, or `Text` holding a number; `None` when absent.
pub(crate) fn real(cards: &BTreeMap<String, CardValue>, key: &str) -> Result<Option<f64>, WcsError> {
    let value = match cards.get(key) {
        None => return Ok(None),
        Some(CardValue::Real(r)) => *r,
        Some(CardValue::Int(i)) => *i as f64,
        Some(CardValue::Text(t)) => {
            t.trim().replace(['D', 'd'], "E").parse::<f64>().map_err(|_| bad(key, format!("'{t}' is not a number")))?
        }
    };
    if !value.is_finite() {
        return Err(bad(key, format!("{value} is not finite")));
    }
    Ok(Some(value))
}

pub(crate) fn required_real(cards: &BTreeMap<String, CardValue>, key: &str) -> Result<f64, WcsError> {
    real(cards, key)?.ok_or_else(|| WcsError::MissingKey(key.to_string()))
}

/// An integer card: `Int`, an integral `Real`, or `Text` holding an integer; `None` when absent.
fn int(cards: &BTreeMap<String, CardValue>, key: &str) -> Result<Option<i64>, WcsError> {
    match cards.get(key) {
        None => Ok(None),
        Some(CardValue::Int(i)) => Ok(Some(*i)),
        Some(CardValue::Real(r)) if r.fract() == 0.0 && r.abs() < 1e15 => Ok(Some(*r as i64)),
        Some(CardValue::Real(r)) => Err(bad(key, format!("{r} is not an integer"))),
        Some(CardValue::Text(t)) => {
            t.trim().parse::<i64>().map(Some).map_err(|_| bad(key, format!("'{t}' is not an integer")))
        }
    }
}

/// A text card with trailing blanks removed; `None` when absent.
pub(crate) fn text(cards: &BTreeMap<String, CardValue>, key: &str) -> Result<Option<String>, WcsError> {
    match cards.get(key) {
        None => Ok(None),
        Some(CardValue::Text(t)) => Ok(Some(t.trim().to_string())),
        Some(other) => Err(bad(key, format!("expected a string, found {other:?}"))),
    }
}

pub(crate) fn required_text(cards: &BTreeMap<String, CardValue>, key: &str) -> Result<String, WcsError> {
    text(cards, key)?.ok_or_else(|| WcsError::MissingKey(key.to_string()))
}

/// `CUNITi` must be `deg` and `RADESYS` ICRS or FK5 when present (shared by every projection).
pub(crate) fn check_units_and_frame(cards: &BTreeMap<String, CardValue>) -> Result<(), WcsError> {
    for key in ["CUNIT1", "CUNIT2"] {
        if let Some(unit) = text(cards, key)? {
            if !unit.eq_ignore_ascii_case("deg") {
                return Err(bad(key, format!("unit '{unit}' is not supported, expected 'deg'")));
            }
        }
    }
    if let Some(frame) = text(cards, "RADESYS")? {
        let f = frame.to_ascii_uppercase();
        if f != "ICRS" && f != "FK5" {
            return Err(bad("RADESYS", format!("frame '{frame}' is not supported (ICRS or FK5)")));
        }
    }
    Ok(())
}

/// Checks a CTYPE against `base` (`RA---TAN` or `DEC--TAN`); returns whether it carries `-SIP`.
fn parse_ctype(key: &str, value: &str, base: &str) -> Result<bool, WcsError> {
    let v = value.to_ascii_uppercase();
    if v == base {
        Ok(false)
    } else if v.strip_suffix("-SIP") == Some(base) {
        Ok(true)
    } else {
        Err(bad(key, format!("'{value}' is not supported, expected {base} or {base}-SIP")))
    }
}

/// The linear part in degrees per pixel from CDi_j, PCi_j x CDELTi, or CDELTi with CROTA2.
pub(crate) fn linear_part(cards: &BTreeMap<String, CardValue>) -> Result<[[f64; 2]; 2], WcsError> {
    let key = |prefix: &str, i: usize, j: usize| format!("{prefix}{i}_{j}");
    let present = |prefix: &str| (1..=2).any(|i| (1..=2).any(|j| cards.contains_key(&key(prefix, i, j))));
    let (has_pc, has_cd) = (present("PC"), present("CD"));
    let mut m = [[0.0; 2]; 2];
    if has_cd && !has_pc {
        for (i, row) in m.iter_mut().enumerate() {
            for (j, e) in row.iter_mut().enumerate() {
                *e = real(cards, &key("CD", i + 1, j + 1))?.unwrap_or(0.0);
            }
        }
        return Ok(m);
    }
    if !has_pc && !cards.contains_key("CDELT1") && !cards.contains_key("CDELT2") {
        return Err(WcsError::MissingKey("CD1_1".into()));
    }
    let cdelt = [required_real(cards, "CDELT1")?, required_real(cards, "CDELT2")?];
    let mut pc = [[1.0, 0.0], [0.0, 1.0]];
    if has_pc {
        for (i, row) in pc.iter_mut().enumerate() {
            for (j, e) in row.iter_mut().enumerate() {
                if let Some(value) = real(cards, &key("PC", i + 1, j + 1))? {
                    *e = value;
                }
            }
        }
    } else if let Some(rho_deg) = real(cards, "CROTA2")? {
        // Old AIPS convention (Calabretta & Greisen 2002, eq. 189).
        let (s, c) = rho_deg.to_radians().sin_cos();
        pc = [[c, -s * cdelt[1] / cdelt[0]], [s * cdelt[0] / cdelt[1], c]];
    }
    for i in 0..2 {
        for j in 0..2 {
            m[i][j] = cdelt[i] * pc[i][j];
        }
    }
    Ok(m)
}

/// One SIP polynomial `NAME_ORDER`, `NAME_p_q`; `None` when `NAME_ORDER` is absent.
fn sip_poly(cards: &BTreeMap<String, CardValue>, name: &str) -> Result<Option<SipPoly>, WcsError> {
    let order_key = format!("{name}_ORDER");
    let Some(order) = int(cards, &order_key)? else {
        return Ok(None);
    };
    if !(0..=SIP_MAX_ORDER).contains(&order) {
        return Err(bad(&order_key, format!("{order} is outside 0..={SIP_MAX_ORDER}")));
    }
    let order = order as usize;
    let mut poly = SipPoly::zero(order);
    for p in 0..=order {
        for q in 0..=order - p {
            if let Some(c) = real(cards, &format!("{name}_{p}_{q}"))? {
                poly.coeffs[p][q] = c;
            }
        }
    }
    Ok(Some(poly))
}

/// A pair of SIP polynomials (A/B or AP/BP): both or neither.
fn sip_pair(
    cards: &BTreeMap<String, CardValue>,
    first: &str,
    second: &str,
) -> Result<(Option<SipPoly>, Option<SipPoly>), WcsError> {
    match (sip_poly(cards, first)?, sip_poly(cards, second)?) {
        (Some(_), None) => Err(WcsError::MissingKey(format!("{second}_ORDER"))),
        (None, Some(_)) => Err(WcsError::MissingKey(format!("{first}_ORDER"))),
        pair => Ok(pair),
    }
}

#[cfg(test)]
mod tests {
    //! Checks against astropy (`tests/fixtures/wcs/astropy_wcs.json`, written by
    //! `scripts/fixtures/make_wcs_fixture.py`), round trips, header cards and errors.

    use super::*;
    use serde_json::Value;

    const FIXTURE: &str = include_str!("../../tests/fixtures/wcs/astropy_wcs.json");

    /// One header of the fixture with astropy's answers.
    struct Case {
        name: String,
        nx: usize,
        ny: usize,
        cards: BTreeMap<String, CardValue>,
        /// `[x, y, ra_deg, dec_deg]` from `all_pix2world(origin=0)`.
        pix2world: Vec<[f64; 4]>,
        /// `[ra_deg, dec_deg, x, y]` from `all_world2pix(origin=0, tolerance=1e-10)`.
        world2pix: Vec<[f64; 4]>,
    }

    fn rows(v: &Value) -> Vec<[f64; 4]> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let r = r.as_array().unwrap();
                [0, 1, 2, 3].map(|k| r[k].as_f64().unwrap())
            })
            .collect()
    }

    fn cases() -> Vec<Case> {
        let doc: Value = serde_json::from_str(FIXTURE).unwrap();
        doc["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let cards = c["cards"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| {
                        let value = match v {
                            Value::String(s) => CardValue::Text(s.clone()),
                            Value::Number(n) if n.is_i64() => CardValue::Int(n.as_i64().unwrap()),
                            Value::Number(n) => CardValue::Real(n.as_f64().unwrap()),
                            other => panic!("unexpected card value {other}"),
                        };
                        (k.clone(), value)
                    })
                    .collect();
                Case {
                    name: c["name"].as_str().unwrap().to_string(),
                    nx: c["nx"].as_u64().unwrap() as usize,
                    ny: c["ny"].as_u64().unwrap() as usize,
                    cards,
                    pix2world: rows(&c["pix2world"]),
                    world2pix: rows(&c["world2pix"]),
                }
            })
            .collect()
    }

    fn case(name: &str) -> Case {
        cases().into_iter().find(|c| c.name == name).unwrap()
    }

    fn card_map(cards: Vec<(String, CardValue, String)>) -> BTreeMap<String, CardValue> {
        cards.into_iter().map(|(k, v, _)| (k, v)).collect()
    }

    /// Angular separation in degrees (haversine).
    fn separation_deg(ra1: f64, dec1: f64, ra2: f64, dec2: f64) -> f64 {
        let (a1, d1, a2, d2) = (ra1.to_radians(), dec1.to_radians(), ra2.to_radians(), dec2.to_radians());
        let s = ((d2 - d1) / 2.0).sin().powi(2) + d1.cos() * d2.cos() * ((a2 - a1) / 2.0).sin().powi(2);
        (2.0 * s.sqrt().asin()).to_degrees()
    }

    /// RA difference in degrees wrapped into [-180, 180).
    fn dra_wrapped(ra1: f64, ra2: f64) -> f64 {
        (ra1 - ra2 + 180.0).rem_euclid(360.0) - 180.0
    }

    /// A grid of 0-based pixels over the detector and 10% beyond on every side.
    fn grid(nx: usize, ny: usize, n: usize) -> Vec<(f64, f64)> {
        let axis = |len: usize, k: usize| -0.1 * len as f64 + 1.2 * len as f64 * k as f64 / (n - 1) as f64;
        (0..n).flat_map(|j| (0..n).map(move |i| (axis(nx, i), axis(ny, j)))).collect()
    }

    #[test]
    fn fixture_has_the_expected_cases() {
        let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["nircam_sw_lmc_apbp", "nircam_lw_wrap", "miri_pc_rot37", "plain_tan_m31"]);
        for c in cases() {
            assert!(c.pix2world.len() >= 40 && c.world2pix.len() >= 40, "{}", c.name);
        }
    }

    #[test]
    fn pixel_to_sky_matches_astropy() {
        let mut worst = 0.0_f64;
        for c in cases() {
            let w = TanSip::from_cards(&c.cards).unwrap();
            let mut case_worst = 0.0_f64;
            for &[x, y, ra_ref, dec_ref] in &c.pix2world {
                let (ra, dec) = w.pixel_to_sky(x, y);
                assert!((0.0..360.0).contains(&ra), "{}: RA {ra} not in [0, 360)", c.name);
                let sep = separation_deg(ra, dec, ra_ref, dec_ref);
                let dra = dra_wrapped(ra, ra_ref) * dec_ref.to_radians().cos();
                let ddec = dec - dec_ref;
                assert!(sep < 1e-9, "{}: pixel ({x}, {y}) off by {sep:e} deg", c.name);
                assert!(dra.abs() < 1e-9 && ddec.abs() < 1e-9, "{}: ({x}, {y}) {dra:e} {ddec:e}", c.name);
                case_worst = case_worst.max(sep).max(dra.abs()).max(ddec.abs());
            }
            eprintln!("pix->sky vs astropy, {}: max {case_worst:.3e} deg", c.name);
            worst = worst.max(case_worst);
        }
        eprintln!("pix->sky vs astropy: max {worst:.3e} deg = {:.3e} arcsec", worst * 3600.0);
    }

    #[test]
    fn sky_to_pixel_matches_astropy() {
        let mut worst = 0.0_f64;
        for c in cases() {
            let w = TanSip::from_cards(&c.cards).unwrap();
            let mut case_worst = 0.0_f64;
            for &[ra, dec, x_ref, y_ref] in &c.world2pix {
                let (x, y) = w.sky_to_pixel(ra, dec).unwrap();
                let err = (x - x_ref).hypot(y - y_ref);
                assert!(err < 1e-6, "{}: sky ({ra}, {dec}) off by {err:e} px", c.name);
                case_worst = case_worst.max(err);
            }
            eprintln!("sky->pix vs astropy, {}: max {case_worst:.3e} px", c.name);
            worst = worst.max(case_worst);
        }
        eprintln!("sky->pix vs astropy: max {worst:.3e} px");
    }

    #[test]
    fn round_trip_over_detector_and_beyond() {
        for c in cases() {
            let w = TanSip::from_cards(&c.cards).unwrap();
            let mut worst = 0.0_f64;
            for (x, y) in grid(c.nx, c.ny, 61) {
                let (ra, dec) = w.pixel_to_sky(x, y);
                let (x2, y2) = w.sky_to_pixel(ra, dec).unwrap();
                worst = worst.max((x2 - x).hypot(y2 - y));
            }
            eprintln!("pix->sky->pix, {}: max {worst:.3e} px", c.name);
            assert!(worst < 1e-6, "{}: round trip off by {worst:e} px", c.name);
        }
    }

    #[test]
    fn newton_inverse_does_not_depend_on_ap_bp() {
        // The LMC header has AP/BP; without them the answer must be the same.
        let c = case("nircam_sw_lmc_apbp");
        let with = TanSip::from_cards(&c.cards).unwrap();
        assert!(with.ap.is_some() && with.bp.is_some());
        let without = TanSip { ap: None, bp: None, ..with.clone() };
        for &[ra, dec, _, _] in &c.world2pix {
            let (x1, y1) = with.sky_to_pixel(ra, dec).unwrap();
            let (x2, y2) = without.sky_to_pixel(ra, dec).unwrap();
            assert!((x1 - x2).hypot(y1 - y2) < 1e-8);
        }
    }

    #[test]
    fn cards_round_trip() {
        for c in cases() {
            let w = TanSip::from_cards(&c.cards).unwrap();
            let cards = w.to_cards();
            for (key, _, comment) in &cards {
                assert!(key.len() <= 8, "{key}");
                assert!(comment.len() <= 47, "{key}: comment too long for a card");
            }
            let w2 = TanSip::from_cards(&card_map(cards)).unwrap();
            assert_eq!(w, w2, "{}", c.name);
        }
        // A struct with only A (no B) is written with a zero B and reads back as the same transform.
        let mut a = SipPoly::zero(2);
        a.coeffs[2][0] = 1e-6;
        let w = TanSip { a: Some(a), ..TanSip::tan([10.0, 20.0], [50.0, 60.0], [[-1e-5, 0.0], [0.0, 1e-5]]) };
        let w2 = TanSip::from_cards(&card_map(w.to_cards())).unwrap();
        assert_eq!(w2.b, Some(SipPoly::zero(2)));
        assert_eq!(w.pixel_to_sky(300.0, -40.0), w2.pixel_to_sky(300.0, -40.0));
    }

    #[test]
    fn to_cards_contents() {
        let c = case("miri_pc_rot37");
        let w = TanSip::from_cards(&c.cards).unwrap();
        let m = card_map(w.to_cards());
        assert_eq!(m["CTYPE1"], CardValue::Text("RA---TAN-SIP".into()));
        assert_eq!(m["CTYPE2"], CardValue::Text("DEC--TAN-SIP".into()));
        assert_eq!(m["RADESYS"], CardValue::Text("ICRS".into()));
        assert_eq!(m["A_ORDER"], CardValue::Int(3));
        assert_eq!(m["CD1_1"], CardValue::Real(w.cd[0][0]));
        assert!(!m.contains_key("PC1_1") && !m.contains_key("AP_ORDER"));
        let plain = TanSip::from_cards(&case("plain_tan_m31").cards).unwrap();
        let m = card_map(plain.to_cards());
        assert_eq!(m["CTYPE1"], CardValue::Text("RA---TAN".into()));
        assert!(!m.contains_key("A_ORDER"));
    }

    #[test]
    fn header_variants_parse() {
        // Integer CRPIX cards.
        let w = TanSip::from_cards(&case("nircam_lw_wrap").cards).unwrap();
        assert_eq!(w.crpix, [1024.0, 1030.0]);
        assert_eq!(w.a.as_ref().unwrap().order, 3);
        assert!(w.ap.is_none());
        // PC + CDELT.
        let c = case("miri_pc_rot37");
        let w = TanSip::from_cards(&c.cards).unwrap();
        let get = |k: &str| match &c.cards[k] {
            CardValue::Real(r) => *r,
            other => panic!("{other:?}"),
        };
        assert_eq!(w.cd[0][1], get("CDELT1") * get("PC1_2"));
        assert_eq!(w.cd[1][0], get("CDELT2") * get("PC2_1"));
        assert!((w.pixel_scale_arcsec() - 0.11).abs() < 1e-12);
        // CDELT + CROTA2, and numbers in text cards.
        let mut m = BTreeMap::new();
        m.insert("CTYPE1".to_string(), CardValue::Text("RA---TAN  ".into()));
        m.insert("CTYPE2".to_string(), CardValue::Text("DEC--TAN".into()));
        m.insert("CRPIX1".to_string(), CardValue::Text("100.5".into()));
        m.insert("CRPIX2".to_string(), CardValue::Int(90));
        m.insert("CRVAL1".to_string(), CardValue::Real(30.0));
        m.insert("CRVAL2".to_string(), CardValue::Text("-1.5D+1".into()));
        m.insert("CDELT1".to_string(), CardValue::Real(-2e-5));
        m.insert("CDELT2".to_string(), CardValue::Real(2e-5));
        m.insert("CROTA2".to_string(), CardValue::Real(30.0));
        let w = TanSip::from_cards(&m).unwrap();
        assert_eq!(w.crpix, [100.5, 90.0]);
        assert_eq!(w.crval_deg, [30.0, -15.0]);
        let (s, co) = 30f64.to_radians().sin_cos();
        let expect = [[-2e-5 * co, -2e-5 * s], [-2e-5 * s, 2e-5 * co]];
        for (row, expect_row) in w.cd.iter().zip(expect) {
            for (e, x) in row.iter().zip(expect_row) {
                assert!((e - x).abs() < 1e-20);
            }
        }
        // CDELT alone: diagonal.
        m.remove("CROTA2");
        assert_eq!(TanSip::from_cards(&m).unwrap().cd, [[-2e-5, 0.0], [0.0, 2e-5]]);
    }

    #[test]
    fn wraparound_near_ra_zero() {
        let c = case("nircam_lw_wrap");
        let w = TanSip::from_cards(&c.cards).unwrap();
        let ras: Vec<f64> = grid(c.nx, c.ny, 21).into_iter().map(|(x, y)| w.pixel_to_sky(x, y).0).collect();
        assert!(ras.iter().all(|ra| (0.0..360.0).contains(ra)));
        assert!(ras.iter().any(|&ra| ra < 1.0) && ras.iter().any(|&ra| ra > 359.0));
        for &[ra, dec, x, y] in &c.world2pix {
            for ra_alias in [ra - 360.0, ra + 360.0, ra + 720.0] {
                let (x2, y2) = w.sky_to_pixel(ra_alias, dec).unwrap();
                assert!((x2 - x).hypot(y2 - y) < 1e-6);
            }
        }
        assert_eq!(wrap_360(-1e-17), 0.0);
        assert_eq!(wrap_360(360.0), 0.0);
    }

    /// Largest distance in pixels between the AP/BP-only inverse of `fitted` and Newton's inverse of
    /// `w`, over a 41 x 41 grid of the detector extended by `margin` (a fraction) on every side.
    fn fitted_inverse_error(w: &TanSip, fitted: &TanSip, nx: usize, ny: usize, margin: f64) -> f64 {
        let inv = invert2(&w.cd).unwrap();
        let mut worst = 0.0_f64;
        for j in 0..41 {
            for i in 0..41 {
                let x = nx as f64 * (-margin + (1.0 + 2.0 * margin) * i as f64 / 40.0);
                let y = ny as f64 * (-margin + (1.0 + 2.0 * margin) * j as f64 / 40.0);
                let (ra, dec) = w.pixel_to_sky(x, y);
                let (xn, yn) = w.sky_to_pixel(ra, dec).unwrap();
                // The polynomial inverse alone, from the undistorted offsets (u', v').
                let (xi, eta) = project_rad(w.crval_deg, ra, dec).unwrap();
                let (xi, eta) = (xi.to_degrees(), eta.to_degrees());
                let uu = inv[0][0] * xi + inv[0][1] * eta;
                let vv = inv[1][0] * xi + inv[1][1] * eta;
                let (u, v) = fitted.inverse_sip_guess(uu, vv);
                let (xp, yp) = (u + w.crpix[0] - 1.0, v + w.crpix[1] - 1.0);
                worst = worst.max((xp - xn).hypot(yp - yn));
            }
        }
        worst
    }

    #[test]
    fn fitted_inverse_reproduces_newton() {
        for c in cases() {
            let w = TanSip::from_cards(&c.cards).unwrap();
            let Some(order) = w.a.as_ref().map(|a| a.order) else {
                let fitted = w.with_fitted_inverse(3, c.nx, c.ny);
                assert!(fitted.ap.is_none() && fitted.bp.is_none());
                continue;
            };
            // The inverse of a polynomial is not one: one order more than the forward polynomial
            // for the detector, two more for the detector and its 10% margin.
            for (extra, margin) in [(1, 0.0), (2, 0.1)] {
                let fitted = w.with_fitted_inverse(order + extra, c.nx, c.ny);
                assert_eq!(fitted.ap.as_ref().unwrap().order, order + extra);
                assert_eq!(fitted.bp.as_ref().unwrap().order, order + extra);
                let worst = fitted_inverse_error(&w, &fitted, c.nx, c.ny, margin);
                eprintln!(
                    "fitted AP/BP (order {}) vs Newton, {}, margin {margin}: max {worst:.3e} px",
                    order + extra,
                    c.name
                );
                assert!(worst < 0.01, "{}: fitted inverse off by {worst} px", c.name);
                // The fitted copy round-trips through cards.
                let w2 = TanSip::from_cards(&card_map(fitted.to_cards())).unwrap();
                assert_eq!(w2, fitted);
            }
        }
        // The header's own AP/BP (fitted by numpy in the fixture script) is as good.
        let c = case("nircam_sw_lmc_apbp");
        let w = TanSip::from_cards(&c.cards).unwrap();
        let worst = fitted_inverse_error(&w, &w, c.nx, c.ny, 0.0);
        eprintln!("header AP/BP (order 4) vs Newton, {}: max {worst:.3e} px", c.name);
        assert!(worst < 0.01);
    }

    #[test]
    fn jacobian_matches_finite_differences() {
        for c in cases() {
            let w = TanSip::from_cards(&c.cards).unwrap();
            let centre = (w.crval_deg[0], w.crval_deg[1]);
            let tangent = |x: f64, y: f64| {
                let (ra, dec) = w.pixel_to_sky(x, y);
                sky_to_tangent_arcsec(centre, ra, dec)
            };
            for (x, y) in grid(c.nx, c.ny, 5) {
                let j = w.jacobian_arcsec(x, y);
                let h = 0.5;
                let (px, mx) = (tangent(x + h, y), tangent(x - h, y));
                let (py, my) = (tangent(x, y + h), tangent(x, y - h));
                let num = [
                    [(px.0 - mx.0) / (2.0 * h), (py.0 - my.0) / (2.0 * h)],
                    [(px.1 - mx.1) / (2.0 * h), (py.1 - my.1) / (2.0 * h)],
                ];
                let scale = w.pixel_scale_arcsec();
                for r in 0..2 {
                    for k in 0..2 {
                        assert!((j[r][k] - num[r][k]).abs() < 1e-7 * scale, "{} {r}{k}", c.name);
                    }
                }
            }
        }
    }

    #[test]
    fn jacobian_axes_point_east_and_north() {
        // RA increases to the left (CD1_1 < 0) and Dec upward for an unrotated image.
        let w = TanSip::tan([150.0, 2.0], [100.0, 100.0], [[-1e-5, 0.0], [0.0, 1e-5]]);
        let j = w.jacobian_arcsec(99.0, 99.0);
        assert!((j[0][0] + 0.036).abs() < 1e-15 && (j[1][1] - 0.036).abs() < 1e-15);
        let (ra_left, _) = w.pixel_to_sky(50.0, 99.0);
        assert!(ra_left > 150.0);
    }

    #[test]
    fn pixel_area() {
        let rad_per_arcsec = (1.0_f64 / 3600.0).to_radians();
        let plain = TanSip::from_cards(&case("plain_tan_m31").cards).unwrap();
        // At the reference pixel the area is |det CD|.
        let (x0, y0) = (plain.crpix[0] - 1.0, plain.crpix[1] - 1.0);
        let expect = (plain.pixel_scale_arcsec() * rad_per_arcsec).powi(2);
        assert!((plain.pixel_area_sr(x0, y0) / expect - 1.0).abs() < 1e-12);
        // Far from CRVAL (about 1 deg) the gnomonic factor matters: compare with the area measured
        // in a tangent plane about the pixel itself, where the projection is locally isometric.
        for w in [plain, TanSip::from_cards(&case("miri_pc_rot37").cards).unwrap()] {
            for (x, y) in [(18000.0, -3000.0), (300.0, 200.0)] {
                let centre = w.pixel_to_sky(x, y);
                let local = |x: f64, y: f64| {
                    let (ra, dec) = w.pixel_to_sky(x, y);
                    sky_to_tangent_arcsec(centre, ra, dec)
                };
                let h = 0.25;
                let (px, mx) = (local(x + h, y), local(x - h, y));
                let (py, my) = (local(x, y + h), local(x, y - h));
                let det = ((px.0 - mx.0) * (py.1 - my.1) - (py.0 - my.0) * (px.1 - mx.1)) / (4.0 * h * h);
                let numeric = det.abs() * rad_per_arcsec * rad_per_arcsec;
                let area = w.pixel_area_sr(x, y);
                assert!((area / numeric - 1.0).abs() < 1e-8, "{area} vs {numeric}");
            }
        }
    }

    #[test]
    fn pixel_scale() {
        let plain = TanSip::from_cards(&case("plain_tan_m31").cards).unwrap();
        assert!((plain.pixel_scale_arcsec() - 0.2).abs() < 1e-12);
        let sw = TanSip::from_cards(&case("nircam_sw_lmc_apbp").cards).unwrap();
        assert!((sw.pixel_scale_arcsec() - 0.031).abs() < 1e-4);
    }

    #[test]
    fn shifted_moves_and_rotates() {
        let w = TanSip::from_cards(&case("miri_pc_rot37").cards).unwrap();
        assert_eq!(w.shifted(0.0, 0.0, 0.0), w);
        let centre = (w.crval_deg[0], w.crval_deg[1]);
        let s = w.shifted(1.5, -2.0, 0.0);
        let (dx, dy) = sky_to_tangent_arcsec(centre, s.crval_deg[0], s.crval_deg[1]);
        assert!((dx - 1.5).abs() < 1e-9 && (dy + 2.0).abs() < 1e-9);
        assert_eq!(s.cd, w.cd);
        // The reference pixel follows CRVAL; other pixels move by about the same offset.
        let (ra, dec) = w.pixel_to_sky(100.0, 900.0);
        let (ra2, dec2) = s.pixel_to_sky(100.0, 900.0);
        let (ox, oy) = sky_to_tangent_arcsec((ra, dec), ra2, dec2);
        assert!((ox - 1.5).abs() < 1e-3 && (oy + 2.0).abs() < 1e-3, "{ox} {oy}");
        // Rotation: scale kept, position angle of the +y axis grows by rot_deg (east of north).
        let r = w.shifted(0.0, 0.0, 30.0);
        assert_eq!(r.crval_deg, w.crval_deg);
        assert!((r.pixel_scale_arcsec() - w.pixel_scale_arcsec()).abs() < 1e-14);
        let pa = |t: &TanSip| {
            let j = t.jacobian_arcsec(t.crpix[0] - 1.0, t.crpix[1] - 1.0);
            j[0][1].atan2(j[1][1]).to_degrees()
        };
        let dpa = (pa(&r) - pa(&w) + 180.0).rem_euclid(360.0) - 180.0;
        assert!((dpa - 30.0).abs() < 1e-9, "{dpa}");
        // The reference pixel stays on CRVAL.
        let (ra0, dec0) = r.pixel_to_sky(r.crpix[0] - 1.0, r.crpix[1] - 1.0);
        assert!(separation_deg(ra0, dec0, w.crval_deg[0], w.crval_deg[1]) < 1e-12);
    }

    #[test]
    fn tangent_helpers() {
        for centre in [(10.0, 41.0), (359.99, 0.5), (80.9, -69.8), (123.0, 89.9)] {
            for (xi, eta) in [(0.0, 0.0), (30.0, -12.0), (-200.0, 150.0), (3600.0, 1800.0)] {
                let (ra, dec) = tangent_arcsec_to_sky(centre, xi, eta);
                assert!((0.0..360.0).contains(&ra));
                let (xi2, eta2) = sky_to_tangent_arcsec(centre, ra, dec);
                assert!((xi2 - xi).abs() < 1e-8 && (eta2 - eta).abs() < 1e-8, "{centre:?} {xi} {eta}");
            }
            // East is increasing RA, north increasing Dec.
            let (xi, eta) = sky_to_tangent_arcsec(centre, centre.0 + 1e-4, centre.1);
            assert!(xi > 0.0 && eta.abs() < xi);
            let (xi, eta) = sky_to_tangent_arcsec(centre, centre.0, centre.1 - 1e-4);
            assert!(eta < 0.0 && xi.abs() < 1e-12);
        }
        // Exact at the centre; a small offset at the equator is an arc length.
        assert_eq!(tangent_arcsec_to_sky((359.99, 0.5), 0.0, 0.0), (359.99, 0.5));
        // (xi is tan of the angle: 1 arcsec + 7.8e-12 arcsec).
        let (xi, _) = sky_to_tangent_arcsec((0.0, 0.0), 1.0 / 3600.0, 0.0);
        let one_arcsec = (1.0_f64 / 3600.0).to_radians();
        assert!((xi - one_arcsec.tan() / one_arcsec).abs() < 1e-14);
        assert!((xi - 1.0).abs() < 1e-11);
        // The far hemisphere has no projection.
        let (xi, eta) = sky_to_tangent_arcsec((10.0, 20.0), 190.0, -20.0);
        assert!(xi.is_nan() && eta.is_nan());
    }

    #[test]
    fn sip_poly_eval() {
        let mut p = SipPoly::zero(3);
        assert_eq!(p.coeffs.len(), 4);
        assert_eq!(p.eval(12.0, -7.0), 0.0);
        p.coeffs[0][0] = 0.5;
        p.coeffs[2][0] = 2.0;
        p.coeffs[1][1] = -3.0;
        p.coeffs[0][3] = 0.25;
        p.coeffs[3][3] = 1e9; // beyond the order: ignored
        let (u, v) = (1.5, -2.0);
        let expect = 0.5 + 2.0 * u * u - 3.0 * u * v + 0.25 * v * v * v;
        assert!((p.eval(u, v) - expect).abs() < 1e-12);
        let (val, du, dv) = p.eval_with_gradient(u, v);
        assert!((val - expect).abs() < 1e-12);
        assert!((du - (4.0 * u - 3.0 * v)).abs() < 1e-12);
        assert!((dv - (-3.0 * u + 0.75 * v * v)).abs() < 1e-12);
        // A ragged coefficient table reads as zeros.
        let ragged = SipPoly { order: 2, coeffs: vec![vec![1.0]] };
        assert_eq!(ragged.eval(3.0, 4.0), 1.0);
    }

    fn minimal_cards() -> BTreeMap<String, CardValue> {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("CTYPE1", CardValue::Text("RA---TAN-SIP".into())),
            ("CTYPE2", CardValue::Text("DEC--TAN-SIP".into())),
            ("CRPIX1", CardValue::Real(1024.5)),
            ("CRPIX2", CardValue::Real(1024.5)),
            ("CRVAL1", CardValue::Real(150.1)),
            ("CRVAL2", CardValue::Real(2.2)),
            ("CD1_1", CardValue::Real(-8.6e-6)),
            ("CD2_2", CardValue::Real(8.6e-6)),
            ("A_ORDER", CardValue::Int(2)),
            ("A_2_0", CardValue::Real(1e-6)),
            ("B_ORDER", CardValue::Int(2)),
            ("B_0_2", CardValue::Real(-1e-6)),
        ] {
            m.insert(k.to_string(), v);
        }
        m
    }

    fn with(mut m: BTreeMap<String, CardValue>, key: &str, v: Option<CardValue>) -> BTreeMap<String, CardValue> {
        match v {
            Some(v) => m.insert(key.to_string(), v),
            None => m.remove(key),
        };
        m
    }

    #[test]
    fn errors_for_missing_keys() {
        let base = minimal_cards();
        let w = TanSip::from_cards(&base).unwrap();
        assert_eq!(w.cd, [[-8.6e-6, 0.0], [0.0, 8.6e-6]]);
        for key in ["CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "A_ORDER", "B_ORDER"] {
            let err = TanSip::from_cards(&with(base.clone(), key, None)).unwrap_err();
            assert_eq!(err, WcsError::MissingKey(key.into()), "{key}");
        }
        // No linear part at all.
        let mut m = base.clone();
        m.remove("CD1_1");
        m.remove("CD2_2");
        assert_eq!(TanSip::from_cards(&m).unwrap_err(), WcsError::MissingKey("CD1_1".into()));
        // PC without CDELT.
        let m2 = with(m.clone(), "PC1_1", Some(CardValue::Real(1.0)));
        assert_eq!(TanSip::from_cards(&m2).unwrap_err(), WcsError::MissingKey("CDELT1".into()));
        let m3 = with(m, "CDELT1", Some(CardValue::Real(-8.6e-6)));
        assert_eq!(TanSip::from_cards(&m3).unwrap_err(), WcsError::MissingKey("CDELT2".into()));
        // AP without BP, and the reverse.
        let m = with(base.clone(), "AP_ORDER", Some(CardValue::Int(2)));
        assert_eq!(TanSip::from_cards(&m).unwrap_err(), WcsError::MissingKey("BP_ORDER".into()));
        let m = with(base.clone(), "BP_ORDER", Some(CardValue::Int(2)));
        assert_eq!(TanSip::from_cards(&m).unwrap_err(), WcsError::MissingKey("AP_ORDER".into()));
        // Without -SIP the SIP keywords are optional (and used when present, like astropy).
        let mut m = with(base.clone(), "CTYPE1", Some(CardValue::Text("RA---TAN".into())));
        m.insert("CTYPE2".into(), CardValue::Text("DEC--TAN".into()));
        assert!(TanSip::from_cards(&m).unwrap().a.is_some());
        for key in ["A_ORDER", "A_2_0", "B_ORDER", "B_0_2"] {
            m.remove(key);
        }
        assert!(TanSip::from_cards(&m).unwrap().a.is_none());
    }

    #[test]
    fn errors_for_bad_values() {
        use CardValue::{Int, Real, Text};
        let base = minimal_cards();
        let text = |s: &str| Text(s.into());
        // (keyword, replacement value, keyword the error must name)
        let cases = [
            ("CTYPE1", text("RA---SIN"), "CTYPE1"),
            ("CTYPE1", text("GLON-TAN"), "CTYPE1"),
            ("CTYPE1", text("RA---TPV"), "CTYPE1"),
            ("CTYPE1", text("RA---TAN-TPV"), "CTYPE1"),
            ("CTYPE1", text("DEC--TAN-SIP"), "CTYPE1"),
            ("CTYPE1", text(""), "CTYPE1"),
            ("CTYPE1", Real(1.0), "CTYPE1"),
            ("CTYPE2", text("RA---TAN-SIP"), "CTYPE2"),
            ("CTYPE2", text("DEC--TAN"), "CTYPE2"), // -SIP on one axis only
            ("CRVAL1", text("abc"), "CRVAL1"),
            ("CRPIX1", Real(f64::NAN), "CRPIX1"),
            ("CUNIT1", text("arcsec"), "CUNIT1"),
            ("LONPOLE", Real(0.0), "LONPOLE"),
            ("RADESYS", text("FK4"), "RADESYS"),
            ("CRVAL2", Real(90.0), "CRVAL2"), // default LONPOLE would be 0
            ("CRVAL2", Real(-91.0), "CRVAL2"),
            ("A_ORDER", Int(12), "A_ORDER"),
            ("A_ORDER", Real(2.5), "A_ORDER"),
            ("B_ORDER", Int(-1), "B_ORDER"),
            ("A_2_0", text("x"), "A_2_0"),
        ];
        for (key, value, expect) in cases {
            match TanSip::from_cards(&with(base.clone(), key, Some(value.clone()))) {
                Err(WcsError::BadValue { key: k, .. }) => {
                    assert_eq!(k, expect, "{key} = {value:?}")
                }
                other => panic!("{key} = {value:?}: expected BadValue, got {other:?}"),
            }
        }
        // Accepted variants.
        for (key, value) in [
            ("CUNIT2", text("deg     ")),
            ("LONPOLE", Int(180)),
            ("RADESYS", text("FK5")),
            ("A_ORDER", Real(2.0)),
            ("CTYPE1", text("ra---tan-sip")),
        ] {
            assert!(TanSip::from_cards(&with(base.clone(), key, Some(value))).is_ok(), "{key}");
        }
        // With LONPOLE = 180 given, a tangent point on the north pole is fine.
        let m = with(base.clone(), "LONPOLE", Some(Real(180.0)));
        assert!(TanSip::from_cards(&with(m, "CRVAL2", Some(Real(90.0)))).is_ok());
    }

    #[test]
    fn errors_for_singular_cd() {
        let base = minimal_cards();
        let real = |x: f64| Some(CardValue::Real(x));
        let m = with(base.clone(), "CD2_2", real(0.0));
        assert_eq!(TanSip::from_cards(&m).unwrap_err(), WcsError::SingularCd);
        // Proportional rows: (-8.6e-6, -4.3e-6) and (1.72e-5, 8.6e-6).
        let m = with(base.clone(), "CD1_2", real(-4.3e-6));
        let m = with(with(m, "CD2_1", real(1.72e-5)), "CD2_2", real(8.6e-6));
        assert_eq!(TanSip::from_cards(&m).unwrap_err(), WcsError::SingularCd);
        // CDELT1 = 0.
        let m = with(with(base, "CD1_1", None), "CD2_2", None);
        let m = with(with(m, "CDELT1", real(0.0)), "CDELT2", real(1e-5));
        assert_eq!(TanSip::from_cards(&m).unwrap_err(), WcsError::SingularCd);
        // A hand-built singular WCS cannot be inverted.
        let w = TanSip::tan([10.0, 10.0], [1.0, 1.0], [[1e-5, 2e-5], [1e-5, 2e-5]]);
        let err = w.sky_to_pixel(10.0, 10.0).unwrap_err();
        assert_eq!(err, WcsError::SingularCd);
    }

    #[test]
    fn errors_from_sky_to_pixel() {
        let w = TanSip::from_cards(&case("nircam_sw_lmc_apbp").cards).unwrap();
        let (ra, dec) = (w.crval_deg[0] + 180.0, -w.crval_deg[1]);
        assert_eq!(w.sky_to_pixel(ra, dec).unwrap_err(), WcsError::OutsideProjection { ra_deg: ra, dec_deg: dec });
        // Degrees away from a 1-arcmin detector the order-4 polynomial has no real inverse.
        let (ra, dec) = tangent_arcsec_to_sky((w.crval_deg[0], w.crval_deg[1]), 30000.0, 30000.0);
        match w.sky_to_pixel(ra, dec) {
            Err(WcsError::NoConvergence { .. }) => {}
            Ok((x, y)) => {
                // If Newton found a root it must be a genuine one.
                let (ra2, dec2) = w.pixel_to_sky(x, y);
                assert!(separation_deg(ra, dec, ra2, dec2) < 1e-9);
            }
            Err(other) => panic!("{other:?}"),
        }
        // u + 1e-3 u^2 = U has no real root for U < -250: Newton must give up, not loop or panic.
        let mut a = SipPoly::zero(2);
        a.coeffs[2][0] = 1e-3;
        let w = TanSip {
            a: Some(a),
            b: Some(SipPoly::zero(2)),
            ..TanSip::tan([10.0, 10.0], [1.0, 1.0], [[-1e-5, 0.0], [0.0, 1e-5]])
        };
        let (ra, dec) = w.pixel_to_sky(100.0, 0.0); // u = 100 maps to U = 110: fine
        let (x, _) = w.sky_to_pixel(ra, dec).unwrap();
        assert!((x - 100.0).abs() < 1e-9);
        let (ra, dec) = tangent_arcsec_to_sky((10.0, 10.0), 1000.0 * 0.036, 0.0); // U = -1000
        assert_eq!(w.sky_to_pixel(ra, dec).unwrap_err(), WcsError::NoConvergence { ra_deg: ra, dec_deg: dec });
        let msg = WcsError::MissingKey("CRVAL1".into()).to_string();
        assert_eq!(msg, "missing WCS keyword CRVAL1");
    }

    #[test]
    fn reference_pixel_maps_to_crval() {
        for c in cases() {
            let w = TanSip::from_cards(&c.cards).unwrap();
            let (ra, dec) = w.pixel_to_sky(w.crpix[0] - 1.0, w.crpix[1] - 1.0);
            assert_eq!((ra, dec), (wrap_360(w.crval_deg[0]), w.crval_deg[1]), "{}", c.name);
            let (x, y) = w.sky_to_pixel(w.crval_deg[0], w.crval_deg[1]).unwrap();
            assert!((x - (w.crpix[0] - 1.0)).abs() < 1e-9 && (y - (w.crpix[1] - 1.0)).abs() < 1e-9);
        }
    }
}
