//! PSF matching after Aniano et al. (2011): matching kernels from a source PSF to a Gaussian or to
//! another band's PSF with their safety metrics (`kernel`), the NaN-aware FFT convolution of image
//! bands with halos (`convolve`), the noise-versus-resolution curve (`noise`) and the FFTs they share
//! (`fft`), and the bilinear regrid onto another band's grid (`regrid`). Pure numerics: PSF images and mosaics come in as arrays, nothing here reads files.

pub mod convolve;
pub mod fft;
pub mod kernel;
pub mod noise;
pub mod regrid;

pub use convolve::{convolve_direct, convolve_rows, Convolved};
pub use kernel::{
    kernel_at_scale, make_kernel, safe_fwhm, KernelParams, MatchKernel, PsfImage, SafeFwhm, Target, FWHM_PER_SIGMA,
    SAFETY_W_MINUS,
};
pub use noise::{noise_curve, NoisePoint};
