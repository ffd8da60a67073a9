//! Two-dimensional complex FFTs on row-major buffers (rustfft along rows, then along columns through
//! a transpose), and the FFT sizes they are fast at. Rows are transformed independently (rayon), so
//! results do not depend on the thread count. Nothing here knows about PSFs or images.

use rayon::prelude::*;
use rustfft::{num_complex::Complex64, FftPlanner};

/// The smallest `m >= n` whose only prime factors are 2, 3, 5 and 7 (rustfft's fast sizes).
pub fn fast_len(n: usize) -> usize {
    let mut m = n.max(1);
    loop {
        let mut r = m;
        for p in [2, 3, 5, 7] {
            while r % p == 0 {
                r /= p;
            }
        }
        if r == 1 {
            return m;
        }
        m += 1;
    }
}

/// The smallest odd `m >= n` whose only prime factors are 3, 5 and 7 (odd grids keep a centre pixel).
pub fn fast_odd_len(n: usize) -> usize {
    let mut m = n.max(1) | 1;
    loop {
        let mut r = m;
        for p in [3, 5, 7] {
            while r % p == 0 {
                r /= p;
            }
        }
        if r == 1 {
            return m;
        }
        m += 2;
    }
}

/// In-place 2-D DFT of `buf` (`[y, x]`, `ny * nx` values, row-major). The inverse is scaled by
/// `1 / (ny nx)`, so `fft2(fft2(a), inverse)` returns `a` to rounding.
///
/// # Panics
/// If `buf.len() != ny * nx`.
pub fn fft2(buf: &mut [Complex64], ny: usize, nx: usize, inverse: bool) {
    assert_eq!(buf.len(), ny * nx, "fft2: buffer size");
    let mut planner = FftPlanner::<f64>::new();
    let (fx, fy) = if inverse {
        (planner.plan_fft_inverse(nx), planner.plan_fft_inverse(ny))
    } else {
        (planner.plan_fft_forward(nx), planner.plan_fft_forward(ny))
    };
    buf.par_chunks_mut(nx).for_each(|row| fx.process(row));
    let mut t = vec![Complex64::new(0.0, 0.0); ny * nx];
    transpose(buf, &mut t, ny, nx);
    t.par_chunks_mut(ny).for_each(|col| fy.process(col));
    transpose(&t, buf, nx, ny);
    if inverse {
        let s = 1.0 / (ny * nx) as f64;
        buf.par_iter_mut().for_each(|v| *v *= s);
    }
}

/// `dst[x, y] = src[y, x]` for `src` of `ny` rows of `nx`.
fn transpose(src: &[Complex64], dst: &mut [Complex64], ny: usize, nx: usize) {
    dst.par_chunks_mut(ny).enumerate().for_each(|(x, col)| {
        for (y, v) in col.iter_mut().enumerate() {
            *v = src[y * nx + x];
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_lengths() {
        assert_eq!(fast_len(11), 12);
        assert_eq!(fast_len(97), 98);
        assert_eq!(fast_odd_len(10), 15);
        assert_eq!(fast_odd_len(487), 525);
    }

    #[test]
    fn fft2_matches_a_direct_dft_and_inverts() {
        let (ny, nx) = (6, 5);
        let a: Vec<Complex64> =
            (0..ny * nx).map(|i| Complex64::new((i as f64 * 0.7).sin(), (i as f64 * 0.3).cos())).collect();
        let mut b = a.clone();
        fft2(&mut b, ny, nx, false);
        for (ky, kx) in [(0, 0), (1, 2), (5, 4), (3, 1)] {
            let mut s = Complex64::new(0.0, 0.0);
            for y in 0..ny {
                for x in 0..nx {
                    let ph = -2.0
                        * std::f64::consts::PI
                        * (ky as f64 * y as f64 / ny as f64 + kx as f64 * x as f64 / nx as f64);
                    s += a[y * nx + x] * Complex64::new(ph.cos(), ph.sin());
                }
            }
            assert!((s - b[ky * nx + kx]).norm() < 1e-12, "({ky},{kx})");
        }
        fft2(&mut b, ny, nx, true);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).norm() < 1e-14);
        }
    }
}
