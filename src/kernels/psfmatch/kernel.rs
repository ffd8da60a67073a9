//! Convolution kernels from a source PSF to a target PSF after Aniano et al. (2011, PASP 123, 1218;
//! their section 2 and equation 21), as pjpipe's `jwst_kernels` builds them (reference section 12),
//! with the safety metrics W- and D and the very safe / safe / aggressive Gaussian FWHMs of the
//! PHANGS-JWST paper's Table 2.
//!
//! Departures from `jwst_kernels`, each to do what the paper means:
//! - the high-frequency taper phi uses true angular frequencies (k = 2 pi f, f in cycles/arcsec,
//!   k_beta = 8 pi / FWHM_target) and is applied to the target's transform only, as in Aniano et al.;
//!   pjpipe's version measures k in index units times half the pixel scale, which leaves it equal to 1
//!   everywhere (reference section 16 item 7);
//! - circularisation is an azimuthal average (a local quadratic fit of the profile against radius at
//!   each pixel's radius), the limit of pjpipe's 14 successive rotation averages, and exact for
//!   circular inputs;
//! - the FWHM of a PSF is read from its circularised profile (half-maximum crossing) instead of a
//!   2-D Gaussian fit: equal for Gaussians, the true FWHM for PSFs with Airy rings;
//! - NaN pixels of a PSF image are set to zero (pjpipe interpolates them with a Gaussian kernel);
//! - kernels are stored with unit sum (pjpipe stores PEAK = 1 and renormalises after interpolation).
//!
//! Nothing here reads files: PSF images come in as arrays with their pixel scale.

// float checks read as the conditions they state; the normal equations index their moment tables
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

use super::fft::{fast_odd_len, fft2};
use ndarray::{s, Array2, ArrayView2};
use rustfft::num_complex::Complex64;

/// FWHM / sigma of a Gaussian.
pub const FWHM_PER_SIGMA: f64 = 2.354_820_045_030_949;

/// A PSF image: `[y, x]`, any normalisation, its pixel scale in arcsec.
#[derive(Clone, Debug)]
pub struct PsfImage {
    pub data: Array2<f64>,
    pub scale_arcsec: f64,
}

/// What a kernel matches to.
#[derive(Clone, Debug)]
pub enum Target {
    /// A circular Gaussian of this FWHM (arcsec).
    Gaussian { fwhm_arcsec: f64 },
    /// Another PSF (another band's).
    Psf(PsfImage),
}

/// Parameters of the kernel construction (Aniano et al. 2011 defaults).
#[derive(Clone, Copy, Debug)]
pub struct KernelParams {
    /// The low-pass on the inverted source transform starts to cut where the source transform falls
    /// below this fraction of its peak (0.005).
    pub lowpass_fraction: f64,
    /// The kernel is trimmed to the smallest radius holding this fraction of sum |K| (0.999).
    pub trim_fraction: f64,
    /// Gaussian targets are built on a grid of this many target sigmas (20, as pjpipe).
    pub gaussian_size_sigmas: f64,
}

impl Default for KernelParams {
    fn default() -> Self {
        KernelParams { lowpass_fraction: 0.005, trim_fraction: 0.999, gaussian_size_sigmas: 20.0 }
    }
}

/// A matching kernel: `[y, x]`, odd square, centred, unit sum, on the source PSF's pixel scale.
#[derive(Clone, Debug)]
pub struct MatchKernel {
    pub data: Array2<f64>,
    pub scale_arcsec: f64,
    /// FWHM of the source and target PSFs, arcsec.
    pub source_fwhm_arcsec: f64,
    pub target_fwhm_arcsec: f64,
    /// Aniano's W-: the weight of the negative lobes, 1/2 sum(|K| - K) for unit sum.
    pub w_minus: f64,
    /// Aniano's D: sum |K * source - target| (both unit sum) on the common grid.
    pub d: f64,
}

impl MatchKernel {
    /// Half the side, in kernel pixels.
    pub fn radius_px(&self) -> usize {
        self.data.nrows() / 2
    }
}

/// A circular Gaussian of FWHM `fwhm_px` pixels sampled at pixel centres on an `n x n` grid centred
/// on pixel `n / 2`, unit sum.
pub fn gaussian_image(n: usize, fwhm_px: f64) -> Array2<f64> {
    let s = fwhm_px / FWHM_PER_SIGMA;
    let c = (n / 2) as f64;
    let mut g = Array2::from_shape_fn((n, n), |(y, x)| {
        (-((x as f64 - c).powi(2) + (y as f64 - c).powi(2)) / (2.0 * s * s)).exp()
    });
    let t = g.sum();
    g /= t;
    g
}

/// Keys (1981) cubic convolution weight (a = -0.5).
fn keys(t: f64) -> f64 {
    let t = t.abs();
    if t < 1.0 {
        1.5 * t * t * t - 2.5 * t * t + 1.0
    } else if t < 2.0 {
        -0.5 * t * t * t + 2.5 * t * t - 4.0 * t + 2.0
    } else {
        0.0
    }
}

/// Bicubic (Keys) interpolation of `img` at the 0-based position (`x`, `y`); zero outside.
pub fn interp_cubic(img: ArrayView2<f64>, x: f64, y: f64) -> f64 {
    let (ny, nx) = img.dim();
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let mut v = 0.0;
    for j in (y0 - 1)..=(y0 + 2) {
        if j < 0 || j >= ny as i64 {
            continue;
        }
        let wy = keys(y - j as f64);
        if wy == 0.0 {
            continue;
        }
        for i in (x0 - 1)..=(x0 + 2) {
            if i < 0 || i >= nx as i64 {
                continue;
            }
            v += wy * keys(x - i as f64) * img[[j as usize, i as usize]];
        }
    }
    v
}

/// Resample a centred image from pixel scale `from` to `to` (arcsec) by cubic convolution, keeping
/// the centre pixel (`n / 2`) at the centre; the output is odd-sized and covers the same field.
/// Values are interpolated, not integrated: callers renormalise.
pub fn resample(img: ArrayView2<f64>, from_arcsec: f64, to_arcsec: f64) -> Array2<f64> {
    let (ny, nx) = img.dim();
    let n_in = ny.max(nx);
    let mut n = ((n_in as f64) * from_arcsec / to_arcsec).round() as usize;
    if n % 2 == 0 {
        n = n.saturating_sub(1).max(1);
    }
    let (cy, cx) = ((ny / 2) as f64, (nx / 2) as f64);
    let c = (n / 2) as f64;
    let r = to_arcsec / from_arcsec;
    Array2::from_shape_fn((n, n), |(y, x)| interp_cubic(img, cx + (x as f64 - c) * r, cy + (y as f64 - c) * r))
}

/// Put `img` on an odd `n x n` grid with its centroid (of the positive values) moved to the centre
/// pixel by an integer shift (pjpipe's roll to the centre of mass, zero fill instead of wrapping).
pub fn centre(img: ArrayView2<f64>, n: usize) -> Array2<f64> {
    let (ny, nx) = img.dim();
    let (mut sw, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for ((y, x), &v) in img.indexed_iter() {
        if v > 0.0 {
            sw += v;
            sx += v * x as f64;
            sy += v * y as f64;
        }
    }
    let (gx, gy) = if sw > 0.0 {
        ((sx / sw).round() as i64, (sy / sw).round() as i64)
    } else {
        ((nx / 2) as i64, (ny / 2) as i64)
    };
    let c = (n / 2) as i64;
    let mut out = Array2::zeros((n, n));
    for y in 0..n {
        let sy = y as i64 - c + gy;
        if sy < 0 || sy >= ny as i64 {
            continue;
        }
        for x in 0..n {
            let sx = x as i64 - c + gx;
            if sx >= 0 && sx < nx as i64 {
                out[[y, x]] = img[[sy as usize, sx as usize]];
            }
        }
    }
    out
}

/// The azimuthal average of a centred odd image: each pixel gets the value at its radius of a
/// local quadratic fit (in radius, uniform weights within 1 px, widened until three radius bins take
/// part) of all pixels against their radius; zero outside the inscribed circle. A circular input is
/// returned to the accuracy of a quadratic over 2 px of radius.
///
/// The pixels are gathered in radius bins of 0.05 px holding the moments of (r - bin centre) and
/// of the values, so that each fit is exact over its pixels and costs a few dozen bins.
pub fn circularise(img: ArrayView2<f64>) -> Array2<f64> {
    const BIN: f64 = 0.05;
    let n = img.nrows();
    let c = (n / 2) as i64;
    let rmax = c as f64;
    let nb = (rmax / BIN).ceil() as usize + 2 + (2.0 / BIN) as usize;
    // per bin: sum (r - cb)^k for k = 0..4, sum v (r - cb)^k for k = 0..2
    let mut m = vec![[0.0f64; 8]; nb];
    for ((y, x), &v) in img.indexed_iter() {
        let r = (((y as i64 - c).pow(2) + (x as i64 - c).pow(2)) as f64).sqrt();
        let b = (r / BIN).round() as usize;
        if b >= nb {
            continue;
        }
        let e = r - b as f64 * BIN;
        let row = &mut m[b];
        let mut p = 1.0;
        for k in 0..5 {
            row[k] += p;
            if k < 3 {
                row[5 + k] += v * p;
            }
            p *= e;
        }
    }
    let mut cache: std::collections::HashMap<i64, f64> = std::collections::HashMap::new();
    let mut value_at = |r2: i64| -> f64 {
        if let Some(v) = cache.get(&r2) {
            return *v;
        }
        let r0 = (r2 as f64).sqrt();
        let mut hw = 1.0;
        let v = loop {
            let lo = ((r0 - hw) / BIN).round().max(0.0) as usize;
            let hi = (((r0 + hw) / BIN).round() as usize).min(nb - 1);
            let used = (lo..=hi).filter(|&b| m[b][0] > 0.0).count();
            if used >= 3 || hw > 4.0 {
                // normal equations in d = r - r0 = e + delta, delta = cb - r0
                let (mut a, mut bb) = ([[0.0f64; 3]; 3], [0.0f64; 3]);
                for b in lo..=hi {
                    let row = &m[b];
                    if row[0] == 0.0 {
                        continue;
                    }
                    let dl = b as f64 * BIN - r0;
                    // sum d^k = sum_j C(k, j) e^j dl^(k-j)
                    let mut sd = [0.0f64; 5];
                    for (k, sdk) in sd.iter_mut().enumerate() {
                        for j in 0..=k {
                            *sdk += binom(k, j) * row[j] * dl.powi((k - j) as i32);
                        }
                    }
                    let mut sv = [0.0f64; 3];
                    for (k, svk) in sv.iter_mut().enumerate() {
                        for j in 0..=k {
                            *svk += binom(k, j) * row[5 + j] * dl.powi((k - j) as i32);
                        }
                    }
                    for i in 0..3 {
                        bb[i] += sv[i];
                        for j in 0..3 {
                            a[i][j] += sd[i + j];
                        }
                    }
                }
                break solve3_first(a, bb);
            }
            hw += 0.5;
        };
        cache.insert(r2, v);
        v
    };
    let mut out = Array2::zeros((n, n));
    for y in 0..n {
        for x in 0..n {
            let r2 = (y as i64 - c).pow(2) + (x as i64 - c).pow(2);
            if (r2 as f64).sqrt() <= rmax {
                out[[y, x]] = value_at(r2);
            }
        }
    }
    out
}

fn binom(k: usize, j: usize) -> f64 {
    const T: [[f64; 5]; 5] = [
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0, 0.0],
        [1.0, 2.0, 1.0, 0.0, 0.0],
        [1.0, 3.0, 3.0, 1.0, 0.0],
        [1.0, 4.0, 6.0, 4.0, 1.0],
    ];
    T[k][j]
}

/// The first unknown of the 3x3 system `m c = b` (Cramer's rule); the mean when singular.
fn solve3_first(m: [[f64; 3]; 3], b: [f64; 3]) -> f64 {
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d0 = det(&m);
    if d0.abs() < 1e-12 * m[0][0].powi(3).max(1e-300) {
        return b[0] / m[0][0].max(1.0);
    }
    let mut m0 = m;
    for a in 0..3 {
        m0[a][0] = b[a];
    }
    det(&m0) / d0
}

/// FWHM in pixels of a centred circular image: twice the radius where the profile along +x from the
/// centre first falls to half the centre value (ln of the profile interpolated linearly in r^2).
pub fn fwhm_px(img: ArrayView2<f64>) -> f64 {
    let n = img.nrows();
    let c = n / 2;
    let peak = img[[c, c]];
    for x in (c + 1)..n {
        let (a, b) = (img[[c, x - 1]], img[[c, x]]);
        if b <= 0.5 * peak {
            // ln v linear in r^2 between the two samples: exact for a Gaussian core
            let (r0, r1) = (((x - 1 - c) as f64).powi(2), ((x - c) as f64).powi(2));
            if a > 0.0 && b > 0.0 {
                let t = (a.ln() - (0.5 * peak).ln()) / (a.ln() - b.ln());
                return 2.0 * (r0 + t * (r1 - r0)).sqrt();
            }
            let t = (a - 0.5 * peak) / (a - b);
            return 2.0 * ((x - 1 - c) as f64 + t);
        }
    }
    2.0 * (n - c) as f64
}

/// The image put on an odd `n x n` grid, centre on centre (cropped or zero-padded).
fn embed(img: ArrayView2<f64>, n: usize) -> Array2<f64> {
    let m = img.nrows();
    let mut out = Array2::zeros((n, n));
    let (ci, co) = ((m / 2) as i64, (n / 2) as i64);
    for y in 0..n as i64 {
        let sy = y - co + ci;
        if sy < 0 || sy >= m as i64 {
            continue;
        }
        for x in 0..n as i64 {
            let sx = x - co + ci;
            if sx >= 0 && sx < m as i64 {
                out[[y as usize, x as usize]] = img[[sy as usize, sx as usize]];
            }
        }
    }
    out
}

/// The DFT of a centred odd image with its centre moved to index 0 (real for symmetric images).
fn centred_fft(img: ArrayView2<f64>) -> Vec<Complex64> {
    let n = img.nrows();
    let c = n / 2;
    let mut buf = vec![Complex64::new(0.0, 0.0); n * n];
    for ((y, x), &v) in img.indexed_iter() {
        buf[((y + n - c) % n) * n + (x + n - c) % n] = Complex64::new(v, 0.0);
    }
    fft2(&mut buf, n, n, false);
    buf
}

/// Signed frequency index of DFT bin `i` of `n`.
fn freq_index(i: usize, n: usize) -> f64 {
    if i <= n / 2 {
        i as f64
    } else {
        i as f64 - n as f64
    }
}

fn normalised(mut a: Array2<f64>) -> Array2<f64> {
    let s = a.sum();
    if s != 0.0 {
        a /= s;
    }
    a
}

/// Build the kernel from `source` to `target` (Aniano et al. 2011; steps in the module doc).
///
/// # Errors
/// A source that is not at least as sharp as the target ("the PSF is broader than the target"),
/// an empty or non-square source, a non-positive pixel scale.
pub fn make_kernel(source: &PsfImage, target: &Target, p: &KernelParams) -> crate::Result<MatchKernel> {
    make_kernel_prepared(&prepare(source)?, target, p)
}

/// A source PSF cleaned (NaN to 0), centred, circularised and normalised: what [`make_kernel`]
/// starts from, kept for the many kernels of [`safe_fwhm`].
#[derive(Clone, Debug)]
pub struct PreparedPsf {
    pub data: Array2<f64>,
    pub scale_arcsec: f64,
    pub fwhm_arcsec: f64,
}

/// Prepare a source PSF (see [`PreparedPsf`]).
///
/// # Errors
/// A non-positive pixel scale or an image smaller than 3x3.
pub fn prepare(source: &PsfImage) -> crate::Result<PreparedPsf> {
    crate::ensure!(source.scale_arcsec > 0.0, "PSF pixel scale {} arcsec is not positive", source.scale_arcsec);
    crate::ensure!(source.data.nrows() >= 3 && source.data.ncols() >= 3, "PSF image is smaller than 3x3 pixels");
    let src0 = source.data.mapv(|v| if v.is_finite() { v } else { 0.0 });
    let n_src = src0.nrows().max(src0.ncols()) | 1;
    let data = normalised(circularise(centre(src0.view(), n_src).view()));
    let fwhm_arcsec = fwhm_px(data.view()) * source.scale_arcsec;
    Ok(PreparedPsf { data, scale_arcsec: source.scale_arcsec, fwhm_arcsec })
}

/// [`make_kernel`] from a prepared source.
///
/// # Errors
/// As [`make_kernel`].
pub fn make_kernel_prepared(source: &PreparedPsf, target: &Target, p: &KernelParams) -> crate::Result<MatchKernel> {
    let scale = source.scale_arcsec;
    let clean = |a: &Array2<f64>| a.mapv(|v| if v.is_finite() { v } else { 0.0 });
    let src = &source.data;
    let src_fwhm = source.fwhm_arcsec;
    let (tgt, tgt_fwhm) = match target {
        Target::Gaussian { fwhm_arcsec } => {
            crate::ensure!(*fwhm_arcsec > 0.0, "target FWHM {fwhm_arcsec} arcsec is not positive");
            let sig_px = fwhm_arcsec / FWHM_PER_SIGMA / scale;
            let n = ((p.gaussian_size_sigmas * sig_px) as usize) | 1;
            (gaussian_image(n.max(3), fwhm_arcsec / scale), *fwhm_arcsec)
        }
        Target::Psf(t) => {
            crate::ensure!(t.scale_arcsec > 0.0, "target PSF pixel scale {} arcsec is not positive", t.scale_arcsec);
            let t0 = clean(&t.data);
            let nt = t0.nrows().max(t0.ncols()) | 1;
            let c = centre(t0.view(), nt);
            let r = resample(c.view(), t.scale_arcsec, scale);
            let tc = normalised(circularise(r.view()));
            let f = fwhm_px(tc.view()) * scale;
            (tc, f)
        }
    };
    crate::ensure!(
        src_fwhm < tgt_fwhm,
        "the PSF (FWHM {src_fwhm:.4} arcsec) is broader than the target (FWHM {tgt_fwhm:.4} arcsec): no kernel can \
         sharpen it"
    );
    // the common grid: the target's size (pjpipe trims the source to the Gaussian grid), at least the
    // source's for PSF targets; odd with fast FFT factors
    let need = match target {
        Target::Gaussian { .. } => tgt.nrows(),
        Target::Psf(_) => tgt.nrows().max(src.nrows()),
    };
    let n = fast_odd_len(need);
    let src_n = normalised(embed(src.view(), n));
    let tgt_n = normalised(embed(tgt.view(), n));
    let sf = centred_fft(src_n.view());
    let tf = centred_fft(tgt_n.view());
    // frequencies in rad/arcsec
    let dk = 2.0 * std::f64::consts::PI / (n as f64 * scale);
    let kr = |i: usize| -> f64 {
        let (y, x) = (i / n, i % n);
        dk * (freq_index(y, n).powi(2) + freq_index(x, n).powi(2)).sqrt()
    };
    // taper phi on the target transform (Aniano et al. 2011), true angular frequencies
    let k_beta = 8.0 * std::f64::consts::PI / tgt_fwhm;
    let k_alpha = 0.9 * k_beta;
    let phi = |k: f64| {
        if k <= k_alpha {
            1.0
        } else if k <= k_beta {
            (-(1.8249 * (k - k_alpha) / (k_beta - k_alpha)).powi(4)).exp()
        } else {
            0.0
        }
    };
    // low-pass from the source transform: first radius along +ky where it falls below the fraction
    let smax = sf.iter().map(|v| v.re.abs()).fold(0.0, f64::max);
    let k_h = (0..=n / 2).find(|&i| sf[i * n].re < p.lowpass_fraction * smax).map_or(f64::INFINITY, |i| dk * i as f64);
    let k_l = 0.7 * k_h;
    let lowpass = |k: f64| {
        if k <= k_l {
            1.0
        } else if k <= k_h {
            0.5 * (1.0 + (std::f64::consts::PI * (k - k_l) / (k_h - k_l)).cos())
        } else {
            0.0
        }
    };
    let mut kf: Vec<Complex64> = (0..n * n)
        .map(|i| {
            let k = kr(i);
            let s = sf[i].re;
            let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
            Complex64::new(tf[i].re * phi(k) * lowpass(k) * inv, 0.0)
        })
        .collect();
    fft2(&mut kf, n, n, true);
    let c = n / 2;
    let mut k = Array2::from_shape_fn((n, n), |(y, x)| kf[((y + n - c) % n) * n + (x + n - c) % n].re);
    let kmax = k.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    k.mapv_inplace(|v| if v.abs() <= f64::EPSILON * kmax { 0.0 } else { v });
    // trim to the radius holding trim_fraction of sum |K|
    let total: f64 = k.iter().map(|v| v.abs()).sum();
    let mut by_r = vec![0.0; n];
    for ((y, x), v) in k.indexed_iter() {
        let r = ((y as f64 - c as f64).powi(2) + (x as f64 - c as f64).powi(2)).sqrt().ceil() as usize;
        if r < n {
            by_r[r] += v.abs();
        }
    }
    let mut acc = 0.0;
    let mut rt = c;
    for (r, v) in by_r.iter().enumerate() {
        acc += v;
        if acc >= p.trim_fraction * total {
            rt = r.min(c);
            break;
        }
    }
    let kt = k.slice(s![c - rt..=c + rt, c - rt..=c + rt]).to_owned();
    let data = normalised(circularise(kt.view()));
    let w_minus = 0.5 * data.iter().map(|v| v.abs() - v).sum::<f64>();
    let d = mismatch(&data, &src_n, &tgt_n);
    Ok(MatchKernel {
        data,
        scale_arcsec: scale,
        source_fwhm_arcsec: src_fwhm,
        target_fwhm_arcsec: tgt_fwhm,
        w_minus,
        d,
    })
}

/// Aniano's D = sum |K * source - target| for `source`, `target` on the same odd `n x n` grid.
fn mismatch(k: &Array2<f64>, source: &Array2<f64>, target: &Array2<f64>) -> f64 {
    let n = source.nrows();
    let kn = embed(k.view(), n);
    let a = centred_fft(kn.view());
    let b = centred_fft(source.view());
    let mut prod: Vec<Complex64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    fft2(&mut prod, n, n, true);
    let c = n / 2;
    let mut d = 0.0;
    for ((y, x), t) in target.indexed_iter() {
        d += (prod[((y + n - c) % n) * n + (x + n - c) % n].re - t).abs();
    }
    d
}

/// W- thresholds of the very safe, safe and aggressive kernels (Aniano et al. 2011).
pub const SAFETY_W_MINUS: [(&str, f64); 3] = [("very_safe", 0.3), ("safe", 0.5), ("aggressive", 1.0)];

/// One row of the safe-FWHM table.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SafeFwhm {
    pub source_fwhm_arcsec: f64,
    /// Gaussian FWHM (arcsec) where W- crosses 0.3, 0.5 and 1.0, in that order; when W- is already
    /// below the threshold at the smallest FWHM tried, that FWHM (an upper bound, `bounded` false).
    pub very_safe_arcsec: f64,
    pub safe_arcsec: f64,
    pub aggressive_arcsec: f64,
    /// Whether each value is an interpolated crossing (true) or the smallest FWHM tried (false).
    pub crossed: [bool; 3],
    /// The FWHMs tried (arcsec) and their W-.
    pub fwhm_arcsec: Vec<f64>,
    pub w_minus: Vec<f64>,
}

/// The very safe, safe and aggressive Gaussian FWHMs for `source` (pjpipe `find_safe_kernel`): kernels
/// to Gaussians at 18 FWHMs from 1.05 to 2.0 times the source FWHM, W- interpolated linearly in FWHM
/// to each threshold.
///
/// # Errors
/// As [`make_kernel`].
pub fn safe_fwhm(source: &PsfImage, p: &KernelParams) -> crate::Result<SafeFwhm> {
    let prepared = prepare(source)?;
    let f0 = prepared.fwhm_arcsec;
    let fwhms: Vec<f64> = (0..18).map(|i| f0 * (1.05 + 0.95 * i as f64 / 17.0)).collect();
    let mut w = vec![];
    for &f in &fwhms {
        w.push(make_kernel_prepared(&prepared, &Target::Gaussian { fwhm_arcsec: f }, p)?.w_minus);
    }
    let cross = |thr: f64| -> (f64, bool) {
        if w[0] <= thr {
            return (fwhms[0], false);
        }
        for i in 1..w.len() {
            if w[i] <= thr {
                let t = (w[i - 1] - thr) / (w[i - 1] - w[i]);
                return (fwhms[i - 1] + t * (fwhms[i] - fwhms[i - 1]), true);
            }
        }
        (fwhms[fwhms.len() - 1], false)
    };
    let v: Vec<(f64, bool)> = SAFETY_W_MINUS.iter().map(|t| cross(t.1)).collect();
    Ok(SafeFwhm {
        source_fwhm_arcsec: f0,
        very_safe_arcsec: v[0].0,
        safe_arcsec: v[1].0,
        aggressive_arcsec: v[2].0,
        crossed: [v[0].1, v[1].1, v[2].1],
        fwhm_arcsec: fwhms,
        w_minus: w,
    })
}

/// The kernel resampled to another pixel scale (the image's), odd, unit sum.
pub fn kernel_at_scale(k: &MatchKernel, scale_arcsec: f64) -> Array2<f64> {
    if (k.scale_arcsec - scale_arcsec).abs() <= 1e-12 * scale_arcsec {
        return k.data.clone();
    }
    normalised(resample(k.data.view(), k.scale_arcsec, scale_arcsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss_psf(fwhm_arcsec: f64, scale: f64, n: usize) -> PsfImage {
        PsfImage { data: gaussian_image(n, fwhm_arcsec / scale), scale_arcsec: scale }
    }

    #[test]
    fn circularise_keeps_a_circular_gaussian_and_fwhm_reads_it() {
        let g = gaussian_image(61, 6.4);
        let c = circularise(g.view());
        let peak = g[[30, 30]];
        let worst = g
            .iter()
            .zip(c.iter())
            .enumerate()
            .filter(|(i, _)| {
                let (y, x) = (i / 61, i % 61);
                ((y as f64 - 30.0).powi(2) + (x as f64 - 30.0).powi(2)).sqrt() <= 30.0
            })
            .map(|(_, (a, b))| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 2e-3 * peak, "worst {worst:e} of peak {peak:e}");
        assert!((fwhm_px(g.view()) - 6.4).abs() < 0.02, "{}", fwhm_px(g.view()));
    }

    #[test]
    fn circularise_makes_an_elliptical_image_round() {
        let (n, c) = (41usize, 20.0);
        let e = Array2::from_shape_fn((n, n), |(y, x)| {
            (-((x as f64 - c).powi(2) / (2.0 * 16.0) + (y as f64 - c).powi(2) / (2.0 * 9.0))).exp()
        });
        let r = circularise(e.view());
        // the same radius along x and y gets the same value, and the profile keeps the flux roughly
        assert!((r[[20, 28]] - r[[28, 20]]).abs() < 1e-12);
        assert!((r.sum() / e.sum() - 1.0).abs() < 0.02, "{}", r.sum() / e.sum());
    }

    /// Gaussian to Gaussian: the kernel is the Gaussian of sigma^2 = sigma_t^2 - sigma_s^2 (to 1e-3
    /// of its peak), compared on the kernel's support with the analytic kernel normalised there.
    /// This holds where the 0.5% low-pass leaves the kernel's transform alone (target well above the
    /// source); F2100W (0.674") to 0.9" is not such a case: there the low-pass, by design, takes a few
    /// per cent of the kernel's peak from its highest frequencies (checked below as a bound).
    #[test]
    fn gaussian_to_gaussian_equals_the_analytic_kernel() {
        for (fs, ft) in [(0.104, 0.9), (0.104, 0.25), (0.238, 0.5), (0.674, 1.5)] {
            let scale = fs / 6.4; // 4x oversampled-like sampling of the source
            let src = gauss_psf(fs, scale, 81);
            let k = make_kernel(&src, &Target::Gaussian { fwhm_arcsec: ft }, &KernelParams::default()).unwrap();
            let fk_px = (ft * ft - fs * fs).sqrt() / scale;
            let analytic = gaussian_image(k.data.nrows(), fk_px);
            let peak = analytic.iter().fold(0.0f64, |m, v| m.max(*v));
            let worst = k.data.iter().zip(analytic.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-3 * peak, "{fs} -> {ft}: worst {:.2e} of peak", worst / peak);
            assert!(k.w_minus < 1e-3, "W- {}", k.w_minus);
            assert!(k.d < 5e-3, "D {}", k.d);
            assert!((k.source_fwhm_arcsec / fs - 1.0).abs() < 0.01);
        }
        let scale = 0.674 / 6.4;
        let k =
            make_kernel(&gauss_psf(0.674, scale, 81), &Target::Gaussian { fwhm_arcsec: 0.9 }, &KernelParams::default())
                .unwrap();
        let analytic = gaussian_image(k.data.nrows(), (0.9f64.powi(2) - 0.674f64.powi(2)).sqrt() / scale);
        let peak = analytic.iter().fold(0.0f64, |m, v| m.max(*v));
        let worst = k.data.iter().zip(analytic.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 0.06 * peak && k.d < 0.02, "F2100W-like to 0.9: {:.3} of peak, D {}", worst / peak, k.d);
    }

    #[test]
    fn a_psf_broader_than_the_target_is_refused() {
        let src = gauss_psf(0.674, 0.11 / 4.0, 81);
        let e = make_kernel(&src, &Target::Gaussian { fwhm_arcsec: 0.5 }, &KernelParams::default()).unwrap_err();
        assert!(e.to_string().contains("broader than the target"), "{e}");
    }

    #[test]
    fn band_to_band_kernel_turns_one_psf_into_the_other() {
        // source sampled at 0.0157", target another band's PSF at 0.0275"
        let src = gauss_psf(0.104, 0.063 / 4.0, 121);
        let tgt = gauss_psf(0.3, 0.11 / 4.0, 101);
        let k = make_kernel(&src, &Target::Psf(tgt), &KernelParams::default()).unwrap();
        assert!((k.target_fwhm_arcsec / 0.3 - 1.0).abs() < 0.01, "{}", k.target_fwhm_arcsec);
        assert!(k.d < 0.02, "D {}", k.d);
    }

    #[test]
    fn safe_fwhm_of_a_ringing_psf_is_above_its_fwhm_and_ordered() {
        // an Airy-like PSF (Gaussian core + ring) needs a broader target than a Gaussian of its FWHM
        let (n, c, scale) = (121usize, 60.0, 0.0157);
        let img = Array2::from_shape_fn((n, n), |(y, x)| {
            let r = ((x as f64 - c).powi(2) + (y as f64 - c).powi(2)).sqrt();
            (-(r * r) / (2.0 * 2.7 * 2.7)).exp() + 0.02 * (-(r - 12.0).powi(2) / 4.0).exp()
        });
        let t = safe_fwhm(&PsfImage { data: img, scale_arcsec: scale }, &KernelParams::default()).unwrap();
        assert!(t.very_safe_arcsec >= t.safe_arcsec && t.safe_arcsec >= t.aggressive_arcsec, "{t:?}");
        assert!(t.aggressive_arcsec >= 1.05 * t.source_fwhm_arcsec * 0.999);
        assert!(t.w_minus.windows(2).filter(|w| w[1] > w[0] + 1e-3).count() <= 2, "{:?}", t.w_minus);
    }
}
