//! What a detector adds on top of the sky, for the simulator: NIRCam-style 1/f stripes per
//! amplifier with a slow ripple, cosmic-ray hits, Poisson and read noise with the variance arrays
//! the JWST pipeline writes (VAR_POISSON, VAR_RNOISE, VAR_FLAT, ERR), and DQ arrays with the JWST
//! flag bits (module [`dq`]). Every random draw comes from an explicit RNG; per-row work derives
//! its own ChaCha stream with [`rng_for`], so results do not depend on the thread count.
//!
//! What does not live here: the sky itself (`kernels::scene`), saturation, MIRI Lyot and
//! background offsets (plain additions the simulator stage makes), file output and configuration.

use ndarray::{Array1, Array2, ArrayViewMut2, Axis, Zip};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};
use rayon::prelude::*;
use rustfft::{num_complex::Complex, FftPlanner};
use serde::{Deserialize, Serialize};

/// JWST pixel data-quality flag bits, as in `stdatamodels.jwst.datamodels.dqflags.pixel` and the
/// JWST pipeline documentation ("Data Quality Flags").
pub mod dq {
    /// Bad pixel, do not use.
    pub const DO_NOT_USE: u32 = 1 << 0;
    /// Pixel saturated during the exposure.
    pub const SATURATED: u32 = 1 << 1;
    /// Jump (cosmic ray) detected during the exposure.
    pub const JUMP_DET: u32 = 1 << 2;
    /// Data lost in transmission.
    pub const DROPOUT: u32 = 1 << 3;
    /// Flagged by outlier detection.
    pub const OUTLIER: u32 = 1 << 4;
    /// High persistence.
    pub const PERSISTENCE: u32 = 1 << 5;
    /// Below the A/D floor.
    pub const AD_FLOOR: u32 = 1 << 6;
    /// Charge migration.
    pub const CHARGELOSS: u32 = 1 << 7;
    /// Uncertainty exceeds the quoted error (named RESERVED in older stdatamodels).
    pub const UNRELIABLE_ERROR: u32 = 1 << 8;
    /// Pixel not on the science portion of the detector.
    pub const NON_SCIENCE: u32 = 1 << 9;
    /// Dead pixel.
    pub const DEAD: u32 = 1 << 10;
    /// Hot pixel.
    pub const HOT: u32 = 1 << 11;
    /// Warm pixel.
    pub const WARM: u32 = 1 << 12;
    /// Low quantum efficiency.
    pub const LOW_QE: u32 = 1 << 13;
    /// RC pixel.
    pub const RC: u32 = 1 << 14;
    /// Telegraph pixel.
    pub const TELEGRAPH: u32 = 1 << 15;
    /// Pixel highly non-linear.
    pub const NONLINEAR: u32 = 1 << 16;
    /// Reference pixel cannot be used.
    pub const BAD_REF_PIXEL: u32 = 1 << 17;
    /// Flat field cannot be measured.
    pub const NO_FLAT_FIELD: u32 = 1 << 18;
    /// Gain cannot be measured.
    pub const NO_GAIN_VALUE: u32 = 1 << 19;
    /// Linearity correction not available.
    pub const NO_LIN_CORR: u32 = 1 << 20;
    /// Saturation check not available.
    pub const NO_SAT_CHECK: u32 = 1 << 21;
    /// Bias variance large.
    pub const UNRELIABLE_BIAS: u32 = 1 << 22;
    /// Dark variance large.
    pub const UNRELIABLE_DARK: u32 = 1 << 23;
    /// Slope variance large (i.e. noisy pixel).
    pub const UNRELIABLE_SLOPE: u32 = 1 << 24;
    /// Flat variance large.
    pub const UNRELIABLE_FLAT: u32 = 1 << 25;
    /// Open pixel (counts move to an adjacent pixel).
    pub const OPEN: u32 = 1 << 26;
    /// Adjacent to an open pixel.
    pub const ADJ_OPEN: u32 = 1 << 27;
    /// Pixel flux estimated from neighbours.
    pub const FLUX_ESTIMATED: u32 = 1 << 28;
    /// NIRSpec MSA shutter failed open.
    pub const MSA_FAILED_OPEN: u32 = 1 << 29;
    /// A catch-all flag.
    pub const OTHER_BAD_PIXEL: u32 = 1 << 30;
    /// Pixel is a reference pixel.
    pub const REFERENCE_PIXEL: u32 = 1 << 31;
}

/// Fraction of the per-amplifier 1/f variance that is common to all amplifiers.
const COMMON_FRAC: f64 = 0.5;

/// A portable, seekable random stream for (seed, stream id): ChaCha8 seeded with `seed`
/// (`seed_from_u64`) on stream `stream` (`set_stream`). Use one stream per row, exposure or part
/// so that results do not depend on threads or on the order work is done.
pub fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// 1/f stripe parameters of one exposure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StripeParams {
    /// Rms of the per-row offsets of each amplifier (1/f part, without the ripple), MJy/sr.
    pub row_rms_mjysr: f64,
    /// Rms of the per-column offsets (1/f), MJy/sr.
    pub col_rms_mjysr: f64,
    /// Amplitude of the slow sinusoidal ripple along y, MJy/sr.
    pub ripple_amp_mjysr: f64,
    /// Period of the ripple, rows.
    pub ripple_period_rows: f64,
    /// Number of amplifiers, each `nx / n_amps` columns wide (NIRCam full frame 4, subarrays 1).
    pub n_amps: usize,
}

impl Default for StripeParams {
    /// NIRCam-like: 1/f rows of ~0.02 MJy/sr rms (a few times the 1-ks sky noise of the LW
    /// channel), weaker columns, a 0.01 MJy/sr ripple with a ~700-row period, 4 amplifiers.
    fn default() -> Self {
        StripeParams {
            row_rms_mjysr: 0.02,
            col_rms_mjysr: 0.005,
            ripple_amp_mjysr: 0.01,
            ripple_period_rows: 700.0,
            n_amps: 4,
        }
    }
}

/// The stripe pattern of one exposure: per-amplifier row offsets plus per-column offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StripeModel {
    /// Row offsets `[amp, y]`, MJy/sr (1/f per amp + common 1/f + ripple).
    pub rows: Array2<f32>,
    /// Column offsets `[x]`, MJy/sr.
    pub cols: Array1<f32>,
}

impl StripeModel {
    /// Number of amplifiers.
    pub fn n_amps(&self) -> usize {
        self.rows.nrows()
    }

    /// Amplifier reading column `x` (amplifiers of `nx / n_amps` columns; the last takes any rest).
    pub fn amp_of(&self, x: usize) -> usize {
        let w = (self.cols.len() / self.n_amps().max(1)).max(1);
        (x / w).min(self.n_amps() - 1)
    }

    /// Stripe value at pixel (y, x), MJy/sr.
    ///
    /// # Panics
    /// If (y, x) is outside the model.
    pub fn value(&self, y: usize, x: usize) -> f32 {
        self.rows[(self.amp_of(x), y)] + self.cols[x]
    }

    /// Add the stripes to `out` (`[y, x]`, MJy/sr).
    ///
    /// # Panics
    /// If `out` does not have the model's shape.
    pub fn apply(&self, mut out: ArrayViewMut2<f32>) {
        assert_eq!(out.dim(), (self.rows.ncols(), self.cols.len()), "stripe model shape");
        let amps: Vec<usize> = (0..self.cols.len()).map(|x| self.amp_of(x)).collect();
        out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(y, mut row)| {
            for (x, v) in row.iter_mut().enumerate() {
                *v += self.rows[(amps[x], y)] + self.cols[x];
            }
        });
    }

    /// The stripes as an image `[ny, nx]`, MJy/sr.
    ///
    /// # Panics
    /// If (ny, nx) is not the model's shape.
    pub fn to_image(&self, ny: usize, nx: usize) -> Array2<f32> {
        let mut a = Array2::zeros((ny, nx));
        self.apply(a.view_mut());
        a
    }
}

/// A zero-mean, unit-rms series of length `n` with power spectrum ∝ 1/f: complex Gaussian Fourier
/// coefficients with amplitude ∝ f^-1/2 (random phases) on a grid of length 2n (so the series is
/// not forced to be periodic), inverse FFT, first n samples, normalised.
pub fn one_over_f_series(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    one_over_f_series_with(n, 0.0, || StandardNormal.sample(rng))
}

/// [`one_over_f_series`] with no power below `fmin` cycles per sample, drawing its standard normal
/// deviates from `normal` (two per frequency, real part first, drawn for every frequency).
pub fn one_over_f_series_with(n: usize, fmin: f64, mut normal: impl FnMut() -> f64) -> Vec<f64> {
    if n < 2 {
        return vec![0.0; n];
    }
    let m = 2 * n;
    let mut spec = vec![Complex::new(0.0f64, 0.0); m];
    for k in 1..=m / 2 {
        let a = if (k as f64) / (m as f64) < fmin { 0.0 } else { (k as f64).powf(-0.5) };
        let re = normal();
        let im = normal();
        spec[k] = Complex::new(a * re, a * im);
        if k < m - k {
            spec[m - k] = spec[k].conj();
        }
    }
    spec[m / 2].im = 0.0;
    FftPlanner::new().plan_fft_inverse(m).process(&mut spec);
    let mut s: Vec<f64> = spec[..n].iter().map(|c| c.re).collect();
    let mean = s.iter().sum::<f64>() / n as f64;
    s.iter_mut().for_each(|v| *v -= mean);
    let rms = (s.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
    if rms > 0.0 {
        s.iter_mut().for_each(|v| *v /= rms);
    }
    s
}

/// Draw the stripe pattern of one exposure of `ny` x `nx` pixels.
///
/// Per amplifier the row offsets are a 1/f series along y (`one_over_f_series`) made of a part
/// common to all amplifiers (half the variance: 1/f noise is correlated between amplifiers) and an
/// independent part, scaled to `row_rms_mjysr`, plus one slow ripple
/// `ripple_amp * sin(2 pi y / period + phase)` with a random phase, the same for all amplifiers.
/// Columns get a 1/f series along x scaled to `col_rms_mjysr`. Deterministic in the RNG state.
///
/// # Panics
/// If `p.n_amps` is 0.
pub fn make_stripes(rng: &mut impl Rng, ny: usize, nx: usize, p: &StripeParams) -> StripeModel {
    assert!(p.n_amps > 0, "n_amps must be positive");
    let common = one_over_f_series(rng, ny);
    let phase: f64 = rng.random_range(0.0..std::f64::consts::TAU);
    let mut rows = Array2::<f32>::zeros((p.n_amps, ny));
    let (wc, wi) = (COMMON_FRAC.sqrt(), (1.0 - COMMON_FRAC).sqrt());
    for mut r in rows.axis_iter_mut(Axis(0)) {
        let own = one_over_f_series(rng, ny);
        for (y, v) in r.iter_mut().enumerate() {
            let ripple = if p.ripple_period_rows > 0.0 {
                p.ripple_amp_mjysr * (std::f64::consts::TAU * y as f64 / p.ripple_period_rows + phase).sin()
            } else {
                0.0
            };
            *v = (p.row_rms_mjysr * (wc * common[y] + wi * own[y]) + ripple) as f32;
        }
    }
    let cols = one_over_f_series(rng, nx).into_iter().map(|v| (v * p.col_rms_mjysr) as f32).collect();
    StripeModel { rows, cols }
}

/// One cosmic-ray hit: where it starts and what it adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CosmicRay {
    /// Column of the first (brightest) pixel.
    pub x: usize,
    /// Row of the first (brightest) pixel.
    pub y: usize,
    /// Affected pixels `(y, x, added MJy/sr)`, all inside the image.
    pub pixels: Vec<(usize, usize, f32)>,
}

/// Share of cosmic-ray hits that are single pixels, and of those that are compact blobs; the rest
/// are streaks ([`make_cosmic_rays`]).
const CR_SINGLE_FRAC: f64 = 0.4;
const CR_BLOB_FRAC: f64 = 0.35;
/// Fraction of a pixel's deposit that spills into each of its four neighbours (range).
const CR_SPILL_FRAC: (f64, f64) = (0.01, 0.04);

/// Draw the cosmic rays of one exposure: a Poisson number with mean `rate_per_pix * ny * nx`, at
/// uniform positions, with the shapes HgCdTe and Si:As detectors show after ramp fitting:
/// - 40% single pixels;
/// - 35% compact blobs of 2-5 pixels (a random walk of 4-neighbours from the hit pixel), each
///   pixel 30-100% of the peak;
/// - 25% streaks of 4-12 pixels at a random angle (oblique tracks), each pixel 50-100% of the peak;
/// - then every deposited pixel spills 1-4% of its charge into each of its four neighbours
///   (interpixel capacitance and charge diffusion: the JWST `jump` step flags the four neighbours
///   of every jump for this reason (`flag_4_neighbors`), and its documentation describes the
///   faint halo around large events; NIRCam and MIRI IPC is ~0.5-2% per neighbour, more around
///   large deposits).
///
/// Peaks are log-uniform in `peak_mjysr_range`. Spill pixels are listed as pixels of the hit (they
/// carry charge), after its deposit pixels. Deterministic in the RNG state.
pub fn make_cosmic_rays(
    rng: &mut impl Rng,
    ny: usize,
    nx: usize,
    rate_per_pix: f64,
    peak_mjysr_range: (f64, f64),
) -> Vec<CosmicRay> {
    let mean = rate_per_pix * (ny * nx) as f64;
    if ny == 0 || nx == 0 || mean.is_nan() || mean <= 0.0 {
        return Vec::new();
    }
    let n = Poisson::new(mean).map(|d| d.sample(rng) as usize).unwrap_or(0);
    let (lo, hi) =
        (peak_mjysr_range.0.max(f64::MIN_POSITIVE), peak_mjysr_range.1.max(peak_mjysr_range.0.max(f64::MIN_POSITIVE)));
    let inside = |y: i64, x: i64| y >= 0 && x >= 0 && (y as usize) < ny && (x as usize) < nx;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let x = rng.random_range(0..nx);
        let y = rng.random_range(0..ny);
        let peak = lo * (hi / lo).powf(rng.random::<f64>());
        let kind = rng.random::<f64>();
        let mut deposit: Vec<(usize, usize, f64)> = vec![(y, x, peak)];
        let has = |d: &[(usize, usize, f64)], py: usize, px: usize| d.iter().any(|&(a, b, _)| a == py && b == px);
        if kind < CR_SINGLE_FRAC {
            // one pixel
        } else if kind < CR_SINGLE_FRAC + CR_BLOB_FRAC {
            let want = rng.random_range(2..=5usize);
            let mut tries = 0;
            while deposit.len() < want && tries < 50 {
                tries += 1;
                let (by, bx, _) = deposit[rng.random_range(0..deposit.len())];
                let (dy, dx) = [(0i64, 1i64), (0, -1), (1, 0), (-1, 0)][rng.random_range(0..4usize)];
                let (py, px) = (by as i64 + dy, bx as i64 + dx);
                if inside(py, px) && !has(&deposit, py as usize, px as usize) {
                    deposit.push((py as usize, px as usize, peak * rng.random_range(0.3..1.0)));
                }
            }
        } else {
            let len = rng.random_range(4..=12usize);
            let ang: f64 = rng.random_range(0.0..std::f64::consts::TAU);
            let (dx, dy) = (ang.cos(), ang.sin());
            let mut t = 0.0;
            while deposit.len() < len && t < 4.0 * len as f64 {
                t += 0.5;
                let (py, px) = ((y as f64 + t * dy).round() as i64, (x as f64 + t * dx).round() as i64);
                if !inside(py, px) {
                    break;
                }
                if !has(&deposit, py as usize, px as usize) {
                    deposit.push((py as usize, px as usize, peak * rng.random_range(0.5..1.0)));
                }
            }
        }
        // spill into the four neighbours (accumulated where neighbours are shared)
        let mut spill: Vec<(usize, usize, f64)> = vec![];
        for &(py, px, v) in &deposit {
            for (dy, dx) in [(0i64, 1i64), (0, -1), (1, 0), (-1, 0)] {
                let (qy, qx) = (py as i64 + dy, px as i64 + dx);
                let f = rng.random_range(CR_SPILL_FRAC.0..CR_SPILL_FRAC.1);
                if !inside(qy, qx) || has(&deposit, qy as usize, qx as usize) {
                    continue;
                }
                let (qy, qx) = (qy as usize, qx as usize);
                match spill.iter_mut().find(|(a, b, _)| *a == qy && *b == qx) {
                    Some(s) => s.2 += f * v,
                    None => spill.push((qy, qx, f * v)),
                }
            }
        }
        let pixels = deposit.into_iter().chain(spill).map(|(a, b, v)| (a, b, v as f32)).collect();
        out.push(CosmicRay { x, y, pixels });
    }
    out
}

/// Noise of one exposure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NoiseParams {
    /// Electrons collected per (MJy/sr) of signal in this exposure (∝ exposure time).
    pub gain_e_per_mjysr: f64,
    /// Read noise of the slope, electrons.
    pub read_noise_e: f64,
    /// Relative flat-field error (VAR_FLAT = (flat_err_frac * signal)^2).
    pub flat_err_frac: f64,
}

impl Default for NoiseParams {
    /// Roughly NIRCam LW in ~1 ks: ~1e4 e per MJy/sr, 15 e read noise (the effective noise of
    /// the up-the-ramp slope), 0.5% flat error.
    fn default() -> Self {
        NoiseParams { gain_e_per_mjysr: 1.0e4, read_noise_e: 15.0, flat_err_frac: 0.005 }
    }
}

/// The variance arrays of one exposure, `[y, x]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseOut {
    /// Poisson variance, (MJy/sr)^2.
    pub var_poisson: Array2<f32>,
    /// Read-noise variance, (MJy/sr)^2.
    pub var_rnoise: Array2<f32>,
    /// Flat-field variance, (MJy/sr)^2.
    pub var_flat: Array2<f32>,
    /// Total error, sqrt of the sum of the three variances, MJy/sr.
    pub err: Array2<f32>,
}

/// Add Poisson and read noise to the noiseless `sci` (`[y, x]`, MJy/sr) and return the variances as
/// the JWST pipeline defines them: VAR_POISSON = max(signal, 0) / gain, VAR_RNOISE = (rn / gain)^2,
/// VAR_FLAT = (flat_err * signal)^2, ERR = sqrt of their sum, all from the noiseless signal.
/// Poisson noise is the Gaussian approximation of the electron count of the non-negative signal.
/// Non-finite pixels (e.g. saturated NaN) are left alone and get NaN in all four arrays. Each row
/// draws from its own stream `rng_for(s, y)` with `s` taken from `rng`, so the result does not
/// depend on threads.
///
/// # Panics
/// If `gain_e_per_mjysr` is not positive.
pub fn add_noise(rng: &mut impl Rng, mut sci: ArrayViewMut2<f32>, p: &NoiseParams) -> NoiseOut {
    assert!(p.gain_e_per_mjysr > 0.0, "gain must be positive");
    let seed: u64 = rng.random();
    let dim = sci.dim();
    let mut var_poisson = Array2::<f32>::zeros(dim);
    let mut var_rnoise = Array2::<f32>::zeros(dim);
    let mut var_flat = Array2::<f32>::zeros(dim);
    let mut err = Array2::<f32>::zeros(dim);
    let g = p.gain_e_per_mjysr;
    let vr = (p.read_noise_e / g).powi(2);
    Zip::indexed(sci.axis_iter_mut(Axis(0)))
        .and(var_poisson.axis_iter_mut(Axis(0)))
        .and(var_rnoise.axis_iter_mut(Axis(0)))
        .and(var_flat.axis_iter_mut(Axis(0)))
        .and(err.axis_iter_mut(Axis(0)))
        .par_for_each(|y, mut s, mut vp, mut vrn, mut vf, mut e| {
            let mut r = rng_for(seed, y as u64);
            for x in 0..s.len() {
                let sig = s[x] as f64;
                if !sig.is_finite() {
                    vp[x] = f32::NAN;
                    vrn[x] = f32::NAN;
                    vf[x] = f32::NAN;
                    e[x] = f32::NAN;
                    continue;
                }
                let electrons = sig.max(0.0) * g;
                let n1: f64 = StandardNormal.sample(&mut r);
                let n2: f64 = StandardNormal.sample(&mut r);
                let noise_e = electrons.sqrt() * n1 + p.read_noise_e * n2;
                s[x] = (sig + noise_e / g) as f32;
                let v_p = sig.max(0.0) / g;
                let v_f = (p.flat_err_frac * sig).powi(2);
                vp[x] = v_p as f32;
                vrn[x] = vr as f32;
                vf[x] = v_f as f32;
                e[x] = (v_p + vr + v_f).sqrt() as f32;
            }
        });
    NoiseOut { var_poisson, var_rnoise, var_flat, err }
}

/// Flag a reference-pixel border in `dq` (`[y, x]`): `rows_px` rows at the top and bottom and
/// `cols_px` columns at the left and right get DO_NOT_USE | REFERENCE_PIXEL. (NIRCam: 4 and 4;
/// MIRI imager: 0 rows and 4 columns.)
pub fn flag_reference_border(mut dq: ArrayViewMut2<u32>, rows_px: usize, cols_px: usize) {
    let (ny, nx) = dq.dim();
    let f = dq::DO_NOT_USE | dq::REFERENCE_PIXEL;
    for ((y, x), v) in dq.indexed_iter_mut() {
        if y < rows_px || y + rows_px >= ny || x < cols_px || x + cols_px >= nx {
            *v |= f;
        }
    }
}

/// DQ of a detector `[ny, nx]`: a reference-pixel border of `refpix` pixels on every side
/// (DO_NOT_USE | REFERENCE_PIXEL) and, inside it, bad pixels with probability `bad_frac` each:
/// 40% hot (HOT | DO_NOT_USE), 20% dead (DEAD | DO_NOT_USE), 40% warm (WARM). Rows draw from
/// their own streams (seeded from `rng`), so the result is deterministic and thread independent.
pub fn make_dq(rng: &mut impl Rng, ny: usize, nx: usize, refpix: usize, bad_frac: f64) -> Array2<u32> {
    let seed: u64 = rng.random();
    let mut dq = Array2::<u32>::zeros((ny, nx));
    dq.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(y, mut row)| {
        if y < refpix || y + refpix >= ny {
            return;
        }
        let mut r = rng_for(seed, y as u64);
        for x in refpix..nx.saturating_sub(refpix) {
            if r.random::<f64>() < bad_frac {
                let u: f64 = r.random();
                row[x] = if u < 0.4 {
                    dq::HOT | dq::DO_NOT_USE
                } else if u < 0.6 {
                    dq::DEAD | dq::DO_NOT_USE
                } else {
                    dq::WARM
                };
            }
        }
    });
    flag_reference_border(dq.view_mut(), refpix, refpix);
    dq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> StripeParams {
        StripeParams {
            row_rms_mjysr: 0.03,
            col_rms_mjysr: 0.01,
            ripple_amp_mjysr: 0.0,
            ripple_period_rows: 500.0,
            n_amps: 4,
        }
    }

    /// Least-squares slope of log power vs log frequency over mid frequencies, averaged spectra.
    fn spectral_slope(series: &[Vec<f64>]) -> f64 {
        let n = series[0].len();
        let mut pow = vec![0.0; n / 2];
        let mut planner = FftPlanner::new();
        let fft = planner.plan_fft_forward(n);
        for s in series {
            let mut buf: Vec<Complex<f64>> = s.iter().map(|v| Complex::new(*v, 0.0)).collect();
            fft.process(&mut buf);
            for k in 1..n / 2 {
                pow[k] += buf[k].norm_sqr();
            }
        }
        let (mut sx, mut sy, mut sxx, mut sxy, mut m) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (k, p) in pow.iter().enumerate().take(n / 4).skip(4) {
            let (x, y) = ((k as f64).ln(), p.ln());
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
            m += 1.0;
        }
        (m * sxy - sx * sy) / (m * sxx - sx * sx)
    }

    #[test]
    fn one_over_f_slope() {
        let mut r = rng_for(3, 0);
        let series: Vec<Vec<f64>> = (0..200).map(|_| one_over_f_series(&mut r, 1024)).collect();
        let slope = spectral_slope(&series);
        assert!((slope + 1.0).abs() < 0.2, "slope {slope}");
    }

    #[test]
    fn stripes_rms_reproducible_and_shaped() {
        let p = params();
        let a = make_stripes(&mut rng_for(5, 1), 2048, 2048, &p);
        let b = make_stripes(&mut rng_for(5, 1), 2048, 2048, &p);
        let c = make_stripes(&mut rng_for(6, 1), 2048, 2048, &p);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.rows.dim(), (4, 2048));
        for r in a.rows.axis_iter(Axis(0)) {
            let rms = (r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 2048.0).sqrt();
            assert!(rms > 0.5 * p.row_rms_mjysr && rms < 1.6 * p.row_rms_mjysr, "{rms}");
        }
        let crms = (a.cols.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 2048.0).sqrt();
        assert!((crms / p.col_rms_mjysr - 1.0).abs() < 1e-3);
        // Amplifiers are correlated through the common part, but not identical.
        let r0 = a.rows.row(0);
        let r1 = a.rows.row(1);
        let cc: f64 = r0.iter().zip(r1.iter()).map(|(u, v)| *u as f64 * *v as f64).sum::<f64>()
            / (r0.iter().map(|u| (*u as f64).powi(2)).sum::<f64>()
                * r1.iter().map(|u| (*u as f64).powi(2)).sum::<f64>())
            .sqrt();
        assert!(cc > 0.1 && cc < 0.95, "corr {cc}");
        // value / to_image agree, amps are 512 wide.
        let img = a.to_image(2048, 2048);
        assert_eq!(img[(10, 600)], a.rows[(1, 10)] + a.cols[600]);
        assert_eq!(img[(10, 600)], a.value(10, 600));
        assert_eq!(a.amp_of(511), 0);
        assert_eq!(a.amp_of(512), 1);
        assert_eq!(a.amp_of(2047), 3);
    }

    #[test]
    fn stripe_row_spectrum_is_one_over_f() {
        let p = params();
        let mut r = rng_for(9, 0);
        let series: Vec<Vec<f64>> = (0..50)
            .flat_map(|_| {
                let m = make_stripes(&mut r, 1024, 64, &p);
                m.rows.axis_iter(Axis(0)).map(|row| row.iter().map(|v| *v as f64).collect()).collect::<Vec<_>>()
            })
            .collect();
        let slope = spectral_slope(&series);
        assert!((slope + 1.0).abs() < 0.2, "slope {slope}");
    }

    #[test]
    fn ripple_present() {
        let p = StripeParams {
            row_rms_mjysr: 0.0,
            col_rms_mjysr: 0.0,
            ripple_amp_mjysr: 0.05,
            ripple_period_rows: 300.0,
            n_amps: 1,
        };
        let m = make_stripes(&mut rng_for(1, 1), 1200, 10, &p);
        let max = m.rows.iter().cloned().fold(f32::MIN, f32::max);
        let min = m.rows.iter().cloned().fold(f32::MAX, f32::min);
        assert!((max - 0.05).abs() < 1e-3 && (min + 0.05).abs() < 1e-3);
        assert!((m.rows[(0, 0)] - m.rows[(0, 300)]).abs() < 1e-5);
    }

    #[test]
    fn cosmic_rays_count_and_shape() {
        let (ny, nx, rate) = (1000, 1000, 2e-3);
        let crs = make_cosmic_rays(&mut rng_for(4, 0), ny, nx, rate, (10.0, 1000.0));
        let again = make_cosmic_rays(&mut rng_for(4, 0), ny, nx, rate, (10.0, 1000.0));
        assert_eq!(crs, again);
        let expect = rate * (ny * nx) as f64;
        assert!(((crs.len() as f64) - expect).abs() < 5.0 * expect.sqrt(), "{}", crs.len());
        // deposit pixels: at least 30% of the peak; spill pixels: 1-4% of a deposit, summed over at
        // most 4 deposit neighbours
        let deposits = |c: &CosmicRay| c.pixels.iter().filter(|p| p.2 >= 0.29 * c.pixels[0].2).count();
        let singles = crs.iter().filter(|c| deposits(c) == 1).count();
        let blobs = crs.iter().filter(|c| (2..=5).contains(&deposits(c))).count();
        let streaks = crs.iter().filter(|c| deposits(c) >= 6).count();
        let n = crs.len() as f64;
        assert!((singles as f64 / n - 0.4).abs() < 0.05, "{singles} singles of {n}");
        assert!(blobs as f64 / n > 0.35 && blobs as f64 / n < 0.55, "{blobs} blobs of {n}");
        assert!(streaks as f64 / n > 0.1 && (streaks as f64 / n) < 0.25, "{streaks} long streaks of {n}");
        for c in &crs {
            assert_eq!((c.pixels[0].0, c.pixels[0].1), (c.y, c.x));
            let peak = c.pixels[0].2;
            assert!((10.0..=1000.0).contains(&peak));
            let nd = deposits(c);
            assert!(nd <= 12);
            let mut seen = std::collections::BTreeSet::new();
            for (i, &(y, x, v)) in c.pixels.iter().enumerate() {
                assert!(y < ny && x < nx && v > 0.0);
                assert!(seen.insert((y, x)), "pixel listed twice");
                if i >= nd {
                    // a spill pixel touches a deposit pixel and holds a few percent of the peak at most
                    assert!(v <= 4.0 * 0.04 * peak + 1e-3, "spill {v} of peak {peak}");
                    let touches = c.pixels[..nd].iter().any(|&(a, b, _)| a.abs_diff(y) + b.abs_diff(x) == 1);
                    assert!(touches, "spill pixel not next to the deposit");
                }
            }
        }
        // a single pixel spills into all 4 neighbours away from the edges
        let one = crs.iter().find(|c| deposits(c) == 1 && c.x > 0 && c.y > 0 && c.x < nx - 1 && c.y < ny - 1).unwrap();
        assert_eq!(one.pixels.len(), 5);
    }

    #[test]
    fn noise_variance_consistent() {
        let (ny, nx) = (400, 500);
        let p = NoiseParams { gain_e_per_mjysr: 300.0, read_noise_e: 12.0, flat_err_frac: 0.01 };
        for level in [-0.5f32, 0.0, 0.3, 5.0, 100.0] {
            let truth = Array2::<f32>::from_elem((ny, nx), level);
            let mut sci = truth.clone();
            let out = add_noise(&mut rng_for(11, level.to_bits() as u64), sci.view_mut(), &p);
            let d: Vec<f64> = sci.iter().zip(truth.iter()).map(|(a, b)| (*a - *b) as f64).collect();
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64;
            let pred = (out.var_poisson[(0, 0)] + out.var_rnoise[(0, 0)]) as f64;
            assert!((var / pred - 1.0).abs() < 0.03, "level {level}: {var} vs {pred}");
            let vf = (0.01 * level as f64).powi(2);
            assert!((out.var_flat[(5, 5)] as f64 - vf).abs() <= 1e-6 * vf.max(1e-12));
            let e = out.err[(3, 3)] as f64;
            assert!((e * e - pred - vf).abs() < 1e-5 * (pred + vf));
        }
        // Thread independence and determinism.
        let base = Array2::<f32>::from_elem((64, 64), 2.0);
        let mut a = base.clone();
        let mut b = base.clone();
        add_noise(&mut rng_for(1, 2), a.view_mut(), &p);
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| add_noise(&mut rng_for(1, 2), b.view_mut(), &p));
        assert_eq!(a, b);
        // NaN stays NaN.
        let mut c = base.clone();
        c[(1, 1)] = f32::NAN;
        let o = add_noise(&mut rng_for(1, 2), c.view_mut(), &p);
        assert!(c[(1, 1)].is_nan() && o.err[(1, 1)].is_nan());
    }

    #[test]
    fn dq_border_and_bad_pixels() {
        let (ny, nx, rp) = (300, 200, 4);
        let a = make_dq(&mut rng_for(2, 0), ny, nx, rp, 0.01);
        let b = make_dq(&mut rng_for(2, 0), ny, nx, rp, 0.01);
        assert_eq!(a, b);
        let border = dq::DO_NOT_USE | dq::REFERENCE_PIXEL;
        for ((y, x), v) in a.indexed_iter() {
            let on_border = y < rp || y >= ny - rp || x < rp || x >= nx - rp;
            assert_eq!(*v & border == border, on_border, "({y},{x}) {v}");
            if on_border {
                assert_eq!(*v, border);
            }
            if *v & (dq::HOT | dq::DEAD) != 0 {
                assert!(*v & dq::DO_NOT_USE != 0);
            }
        }
        let n_in = ((ny - 2 * rp) * (nx - 2 * rp)) as f64;
        let bad = a.iter().filter(|v| **v & (dq::HOT | dq::DEAD | dq::WARM) != 0).count() as f64;
        assert!((bad / n_in - 0.01).abs() < 0.003, "{}", bad / n_in);
        assert_eq!(dq::REFERENCE_PIXEL, 2_147_483_648);
        assert_eq!(dq::NON_SCIENCE, 512);
        assert_eq!(dq::DO_NOT_USE | dq::NON_SCIENCE, 513);
        // MIRI-style border: columns only.
        let mut m = Array2::<u32>::zeros((10, 12));
        flag_reference_border(m.view_mut(), 0, 4);
        assert_eq!(m[(0, 4)], 0);
        assert_eq!(m[(5, 3)], border);
        assert_eq!(m[(5, 8)], border);
        assert_eq!(m[(5, 7)], 0);
    }
}
