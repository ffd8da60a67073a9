//! The raw configuration layer: a 1:1 mirror of the TOML file with every default in one place.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// The whole TOML file. One section per stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Settings for the whole run.
    pub run: RawRun,
    /// The `plan` stage: output grid, chunk grid, work assignment.
    pub plan: RawPlan,
    /// The `prep` stage: DQ masks, MIRI Lyot separation, MIRI off-source background subtraction.
    pub prep: RawPrep,
    /// The `destripe` stage: NIRCam 1/f stripes removed from each exposure alone.
    pub destripe: RawDestripe,
    /// The `align` stage: relative astrometry, one shift per visit.
    pub align: RawAlign,
    /// The `level` stage: background level matching between exposures and between tiles.
    pub level: RawLevel,
    /// The `destripe_multi` stage: residual NIRCam stripes against the other exposures.
    pub destripe_multi: RawDestripeMulti,
    /// The `outlier` stage: cosmic rays and other outliers against the median of the exposures.
    pub outlier: RawOutlier,
    /// The `drizzle` stage: resampling onto the output grid.
    pub drizzle: RawDrizzle,
    /// The `assemble` stage: the mosaic FITS from the band store.
    pub assemble: RawAssemble,
    /// The `astrometry` stage: absolute astrometry against a reference catalogue.
    pub astrometry: RawAstrometry,
    /// The `anchor` stage: the background level tied to wide-field reference images.
    pub anchor: super::anchor::RawAnchor,
    /// The `psfmatch` stage: the mosaic convolved to other resolutions (Aniano et al. 2011 kernels).
    pub psfmatch: RawPsfmatch,
    /// The `release` stage of `tessera run`: the release tree of each target.
    pub release: RawRelease,
    /// `tessera simulate`: the synthetic survey.
    pub simulate: RawSimulate,
    /// Targets for `tessera run`: one `[[target]]` table each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<RawTarget>,
    /// The TOML document as given (with `--set` applied), per-target/per-band override tables and
    /// all, from which [`RawConfig::for_task`] resolves the config of one (target, band).
    #[serde(skip)]
    pub doc: Option<toml::Table>,
}

/// `[release]` (pjpipe release and regress_against_previous).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRelease {
    /// Build the release tree at the end of `tessera run` (`tessera release` builds it alone).
    pub enabled: bool,
    /// Root of the release trees; empty = `<run.output_dir>/release`.
    pub dir: String,
    /// Release version: a folder level, `<dir>/<version>/<target>/`.
    pub version: String,
    /// Drop the VAR_POISSON, VAR_RNOISE and VAR_FLAT extensions from the released FITS files.
    pub remove_bloat: bool,
    /// A previous release's version folder (`<dir>/<old version>`): difference images and a table of
    /// per-band median and rms differences against it; empty = no comparison.
    pub compare_to: String,
}

impl Default for RawRelease {
    fn default() -> Self {
        RawRelease {
            enabled: true,
            dir: String::new(),
            version: "v1".into(),
            remove_bloat: false,
            compare_to: String::new(),
        }
    }
}

/// `run.groups`: a number of communicator groups, or `"auto"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawGroups {
    Count(i64),
    Word(String),
}

/// `[prep]` (pjpipe lv2 background subtraction and lyot_separate, SPEC stage prep).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPrep {
    /// Run the stage (`tessera mosaic --no-prep` turns it off for one run).
    pub enabled: bool,
    /// MIRI: level-match the Lyot coronagraph region (rows 735-1023, columns 0-289) as its own image
    /// and recombine it (false = treat the frame as one image).
    pub lyot_separate: bool,
    /// MIRI: subtract the per-pixel combination of the off-source exposures closest in time.
    pub off_background: bool,
    /// Off-source exposures are those whose TARGPROP contains this text (case-insensitive), as
    /// pjpipe's `check_in_name`.
    pub off_name: String,
    /// Extra files or directories holding the off-source exposures. A directory `off/` beside the
    /// science inputs is always searched.
    pub off_inputs: Vec<String>,
    /// Clipping threshold of the per-pixel combination of the off exposures, in standard deviations.
    pub off_sigma: f64,
}

impl Default for RawPrep {
    fn default() -> Self {
        RawPrep {
            enabled: true,
            lyot_separate: true,
            off_background: true,
            off_name: "off".into(),
            off_inputs: vec![],
            off_sigma: 1.5,
        }
    }
}

/// `[align]` (pjpipe get_wcs_adjust / apply_wcs_adjust with tweakreg's matching parameters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAlign {
    /// Run the stage (`tessera mosaic --no-align` turns it off for one run).
    pub enabled: bool,
    /// Band the visit shifts are solved in; empty = F300M for NIRCam, F1000W for MIRI.
    pub reference_band: String,
    /// The reference band's `align/align.json`, applied to the other bands of the same visits;
    /// empty = solve in the band at hand when it is not the reference band (with a note).
    pub shifts_file: String,
    /// PSF FWHM for source detection, arcsec; 0 = the band's FWHM from the PHANGS table.
    pub fwhm_arcsec: f64,
    /// Detection threshold in noise sigmas.
    pub threshold_sigma: f64,
    /// Keep the brightest N point sources per exposure.
    pub brightest: usize,
    /// Half size of the shift search between two visits, arcsec.
    pub search_radius_arcsec: f64,
    /// Matching radius after the shift search, arcsec.
    pub tolerance_arcsec: f64,
    /// Fewer matched sources than this between two visits is a failed pair (tweakreg's minobj).
    pub min_matches: usize,
}

impl Default for RawAlign {
    fn default() -> Self {
        RawAlign {
            enabled: true,
            reference_band: String::new(),
            shifts_file: String::new(),
            fwhm_arcsec: 0.0,
            threshold_sigma: 5.0,
            brightest: 500,
            search_radius_arcsec: 1.0,
            tolerance_arcsec: 0.2,
            min_matches: 3,
        }
    }
}

/// `[astrometry]` (pjpipe astrometric_align: a wide shift search, then a strict shift + rotation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAstrometry {
    /// Reference catalogue (CSV, ECSV or FITS table with ra, dec in deg); empty = no absolute
    /// astrometry. `tessera mosaic --catalog` sets it for one run.
    pub catalog: String,
    /// Band the solution is measured in; empty = every band solves its own. A band that is not the
    /// reference band applies `solution_file` when given.
    pub reference_band: String,
    /// The reference band's `astrometry/astrometry.json`, applied unchanged to this band; empty = solve.
    pub solution_file: String,
    /// PSF FWHM for source detection, arcsec; 0 = the band's FWHM from the PHANGS table.
    pub fwhm_arcsec: f64,
    /// Detection threshold in noise sigmas.
    pub threshold_sigma: f64,
    /// Keep the brightest N point sources of the mosaic.
    pub brightest: usize,
    /// Step 1 (shift): half size of the shift search, arcsec.
    pub search_radius_arcsec: f64,
    /// Step 1 (shift): matching radius, arcsec.
    pub wide_tolerance_arcsec: f64,
    /// Step 2 (shift + rotation): matching radius, arcsec.
    pub strict_tolerance_arcsec: f64,
    /// Fewer matched sources than this is a failed solution (the WCS is kept).
    pub min_matches: usize,
}

impl Default for RawAstrometry {
    fn default() -> Self {
        RawAstrometry {
            catalog: String::new(),
            reference_band: String::new(),
            solution_file: String::new(),
            fwhm_arcsec: 0.0,
            threshold_sigma: 5.0,
            brightest: 1000,
            search_radius_arcsec: 1.5,
            wide_tolerance_arcsec: 0.15,
            strict_tolerance_arcsec: 0.05,
            min_matches: 5,
        }
    }
}

/// `[psfmatch]` (pjpipe psf_matching with Aniano et al. 2011 kernels; SPEC stage psfmatch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPsfmatch {
    /// PSF images (FITS, pixel scale in PIXELSCL or PIXSCALE, arcsec). A band takes the file whose
    /// FILTER card, else whose file name, names it; a single file serves any band. No file for a band
    /// = its analytic (Gaussian) model, with a warning. `tessera mosaic --psf` adds files.
    pub psf: Vec<String>,
    /// Resolutions to match to: "gaussNpNN" (a Gaussian of that FWHM in arcsec, e.g. "gauss0p90") or a
    /// band name (e.g. "F770W": that band's PSF). Empty = the stage is skipped.
    /// `tessera mosaic --psf-target` adds targets.
    pub targets: Vec<String>,
    /// Mosaic rows per convolution chunk (one FFT each, with halos as wide as the kernel radius).
    pub chunk_rows: usize,
    /// Write the noise-versus-resolution curve (psfmatch/noise_curve.csv and .png).
    pub noise_curve: bool,
    /// Largest smoothing FWHM of the noise curve, arcsec; 0 = twice the largest Gaussian target, at
    /// least 1 arcsec.
    pub noise_max_fwhm_arcsec: f64,
    /// Side of the square of the mosaic on which the noise curve is measured, pixels: the emptiest
    /// of nine candidates (corners, edge middles, centre).
    pub noise_region_px: usize,
}

impl Default for RawPsfmatch {
    fn default() -> Self {
        RawPsfmatch {
            psf: vec![],
            targets: vec![],
            chunk_rows: 512,
            noise_curve: true,
            noise_max_fwhm_arcsec: 0.0,
            noise_region_px: 1024,
        }
    }
}

/// `[level]` (pjpipe level_match parameters, same defaults; SPEC section 6 departures).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLevel {
    /// Run the stage (`tessera mosaic --no-level` turns it off for one run).
    pub enabled: bool,
    /// Clipping threshold of the pair statistics, in standard deviations.
    pub sigma: f64,
    /// Clipping iterations at most.
    pub maxiters: u32,
    /// Pairs overlapping less than this fraction of the mean pair overlap are rejected.
    pub min_area_frac: f64,
    /// Pairs whose overlap spans less than this fraction of either image along both axes are rejected.
    pub min_linear_frac: f64,
    /// Pairs with rms above mean + this many standard deviations of the pair rms are rejected.
    pub rms_sig_limit: f64,
    /// Subtract one constant from the band at the end: the lowest sigma-clipped sky among the tiles.
    pub subtract_sky: bool,
    /// What is fitted per tile in the tiles step: "level" (a constant) or "plane" (a constant and
    /// two slopes, pjpipe's "level+slope").
    pub tile_fit: String,
    /// Keep the exposures resampled in the dithers step for the tiles step, within half of
    /// `run.mem_budget_mb` (those that do not fit are resampled again); the same numbers either way.
    pub share_pieces: bool,
}

impl Default for RawLevel {
    fn default() -> Self {
        RawLevel {
            enabled: true,
            sigma: 3.0,
            maxiters: 10,
            min_area_frac: 0.002,
            min_linear_frac: 0.2,
            rms_sig_limit: 2.0,
            subtract_sky: true,
            tile_fit: "level".into(),
            share_pieces: true,
        }
    }
}

/// `[destripe]` (pjpipe single_tile_destripe with the PHANGS settings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDestripe {
    /// Run the stage on NIRCam exposures (`tessera mosaic --no-destripe` turns it off for one run).
    pub enabled: bool,
    /// Median-filter scales of the row-profile cascade, rows, ascending.
    pub filter_scales: Vec<usize>,
    /// Cutoff of the Butterworth high-pass, fraction of the sampling frequency (0.005 = ~200 px).
    pub cutoff_ratio: f64,
    /// Source-mask and clipping threshold, standard deviations.
    pub sigma: f64,
    /// Side of the square dilation of the source mask, pixels.
    pub dilate_size: usize,
    /// Amplifier rows with less than this unmasked fraction use the full-row median.
    pub min_mask_frac: f64,
    /// Seed of the Gaussian fill of masked pixels before the high-pass.
    pub seed: u64,
    /// Write a PNG per exposure (data, model, corrected) under destripe/ and destripe_multi/.
    pub png: bool,
}

impl Default for RawDestripe {
    fn default() -> Self {
        RawDestripe {
            enabled: true,
            filter_scales: vec![3, 7, 15, 31, 63, 127, 255, 511],
            cutoff_ratio: 0.005,
            sigma: 3.0,
            dilate_size: 7,
            min_mask_frac: 0.2,
            seed: 0,
            png: false,
        }
    }
}

/// `[destripe_multi]` (pjpipe multi_tile_destripe passes A and B; thresholds shared with `[destripe]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDestripeMulti {
    /// Run the stage on NIRCam exposures (`tessera mosaic --no-destripe` turns it off too).
    pub enabled: bool,
    /// Run the large-scale second pass (stripes common to all exposures; pjpipe do_large_scale);
    /// not after the joint solve (method), which already separates them (a note says so).
    pub large_scale: bool,
    /// Length of the large-scale median filter along each exposure's columns, pixels (odd); 0 = the
    /// exposure's rows / 10, made odd (pjpipe: 203 for 2048 rows).
    pub large_scale_filter_px: usize,
    /// Most iterations of pass A (pjpipe's do_convergence): each compares every exposure with the
    /// average of all exposures, itself included, after the models so far; 0 = automatic: 1 when
    /// the band's exposures share one orientation, 5 (pjpipe's most) when they are rotated 10 deg or more from
    /// each other (two rolls), where iterating separates stripes from sky.
    pub max_iterations: usize,
    /// Iterations stop when no exposure's update is larger than this rms, MJy/sr.
    pub convergence_mjysr: f64,
    /// How pass A finds the models: "iterate" (pjpipe: row medians against the average, iterated
    /// `max_iterations` times), "joint" (every exposure's row and column stripes solved together by
    /// least squares on the output grid's cells; `max_iterations` and `convergence_mjysr` unused),
    /// or "auto" (joint when the exposures are rotated 10 deg or more from each other, else iterate).
    pub method: String,
}

impl Default for RawDestripeMulti {
    fn default() -> Self {
        RawDestripeMulti {
            enabled: true,
            large_scale: true,
            large_scale_filter_px: 0,
            max_iterations: 0,
            convergence_mjysr: 2e-4,
            method: "auto".to_string(),
        }
    }
}

/// `[outlier]` (JWST OutlierDetectionStep parameters, same defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutlier {
    /// Run the stage (false = no outlier flags; drizzle uses the DQ as it is).
    pub enabled: bool,
    /// Signal-to-noise thresholds: first for detection, second for neighbours of detections.
    pub snr1: f64,
    pub snr2: f64,
    /// Multipliers of the blotted median's derivative added to the thresholds.
    pub scale1: f64,
    pub scale2: f64,
    /// Resampled pixels with less than this fraction of the exposure's typical weight are left out of the median.
    pub maskpt: f64,
    /// Drizzle pixfrac for the individually resampled exposures. Below the JWST default of 1.0 on
    /// purpose: a smaller drop smooths undersampled star cores less, so their blot keeps its peak.
    pub pixfrac: f64,
    /// Interpolation of the median blotted back to each exposure: "bicubic" (keeps undersampled
    /// star cores) or "bilinear" (the JWST pipeline's choice).
    pub blot_interp: String,
    /// Also write `outlier/<stem>_crf.fits`: each exposure with its outlier flags set in DQ
    /// (DO_NOT_USE + OUTLIER, as in the JWST pipeline's `*_crf` files).
    pub write_crf: bool,
    /// Where two or three resampled exposures remain at a pixel and their median exceeds twice
    /// their smallest value, compare with the smallest (cosmic rays are positive) instead of the
    /// median, so a cosmic ray where two overlap, or two on one pixel of three, can be found; and
    /// where that exposure's value also stands `snr1` noises above the smallest, leave it out of the
    /// median around the pixel, so the fainter pixels of its cosmic ray are found too; false = JWST.
    pub low_coverage_min: bool,
}

impl Default for RawOutlier {
    fn default() -> Self {
        RawOutlier {
            enabled: true,
            snr1: 5.0,
            snr2: 4.0,
            scale1: 1.2,
            scale2: 0.7,
            maskpt: 0.7,
            pixfrac: 0.7,
            blot_interp: "bicubic".into(),
            write_crf: false,
            low_coverage_min: true,
        }
    }
}

/// `[drizzle]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDrizzle {
    /// Fraction of the input pixel side drizzled (square kernel), 0 < pixfrac <= 1.
    pub pixfrac: f64,
    /// Input weights: "ivm" (inverse VAR_RNOISE, as the JWST pipeline) or "exptime".
    pub weight_type: String,
    /// Drizzle the variance planes and write ERR, VAR_POISSON, VAR_RNOISE and VAR_FLAT (as the
    /// JWST ResampleStep's enable_err); false writes SCI, DQ, WHT and CON only, faster.
    pub variance_planes: bool,
}

impl Default for RawDrizzle {
    fn default() -> Self {
        RawDrizzle { pixfrac: 1.0, weight_type: "ivm".into(), variance_planes: true }
    }
}

/// `[assemble]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAssemble {
    /// Rows of the mosaic streamed from the band store per block (bounds rank 0's memory).
    pub row_block: usize,
}

impl Default for RawAssemble {
    fn default() -> Self {
        RawAssemble { row_block: 512 }
    }
}

/// `[[target]]`: one target of a campaign for `tessera run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Target name: products go to `<output_dir>/<name>/<band>/`.
    pub name: String,
    /// Cal files or directories holding `*_cal.fits` (all bands; grouped by FILTER/PUPIL).
    pub inputs: Vec<String>,
    /// Only these bands (empty = every band found); an unknown band or one without exposures is an error.
    #[serde(default)]
    pub bands: Vec<String>,
    /// Reference catalogue for absolute astrometry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
}

/// `[run]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRun {
    /// Folder where products go (one sub-folder per stage).
    pub output_dir: String,
    /// Memory budget per MPI rank, in MiB. Drives the chunk size of the output grid.
    pub mem_budget_mb: u64,
    /// Worker threads per rank (rayon); 0 = all cores available to the rank. At most 1024; more
    /// than 4x the cores available to the rank is lowered to that, with a warning.
    pub threads: usize,
    /// Seconds between progress lines on rank 0.
    pub progress_interval_s: f64,
    /// `tessera mosaic` stops after this stage (its products written; `--resume` continues); empty =
    /// run all.
    pub stop_after: String,
    /// `tessera run`: communicator groups that take (target, band) tasks, a number or "auto".
    pub groups: RawGroups,
}

impl Default for RawRun {
    fn default() -> Self {
        RawRun {
            output_dir: "tessera-out".into(),
            mem_budget_mb: 4096,
            threads: 0,
            progress_interval_s: 5.0,
            stop_after: String::new(),
            groups: RawGroups::Count(1),
        }
    }
}

/// `[plan]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPlan {
    /// Output pixel scale in arcsec; 0 = the instrument's native scale (0.031/0.063/0.11).
    pub pixscale_arcsec: f64,
    /// Empty pixels added around the union of the footprints on every side.
    pub margin_px: usize,
    /// Side of a square output chunk in pixels; 0 = derived from `run.mem_budget_mb`.
    pub chunk_px: usize,
    /// Bytes of per-chunk working memory per output pixel, used to size chunks from the budget
    /// (products, median stack and halo). Raise it if ranks run out of memory.
    pub bytes_per_output_px: u64,
    /// Refuse an output grid whose area exceeds this multiple of the footprints' union area
    /// (guards against broken WCS headers making a runaway grid).
    pub max_fill_ratio: f64,
    /// Refuse an output grid larger than this many megapixels.
    pub max_output_mpix: f64,
    /// `tessera run`: bands of one target that share one output grid: "none", "instrument" or "all".
    pub common_grid: String,
    /// A user-given output grid; when absent, a north-up grid covering all footprints is built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<RawGrid>,
}

impl Default for RawPlan {
    fn default() -> Self {
        RawPlan {
            pixscale_arcsec: 0.0,
            margin_px: 16,
            chunk_px: 0,
            bytes_per_output_px: 256,
            max_fill_ratio: 4.0,
            max_output_mpix: 2000.0,
            common_grid: "none".into(),
            grid: None,
        }
    }
}

/// `[plan.grid]`: a user-given TAN output grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrid {
    /// Right ascension of the grid centre, deg.
    pub ra_deg: f64,
    /// Declination of the grid centre, deg.
    pub dec_deg: f64,
    /// Width in pixels.
    pub nx: usize,
    /// Height in pixels.
    pub ny: usize,
    /// Pixel scale, arcsec.
    pub pixscale_arcsec: f64,
    /// Position angle of +y east of north, deg (0 = north up).
    #[serde(default)]
    pub rotation_deg: f64,
}

/// `[simulate]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSimulate {
    /// nircam_sw | nircam_lw | miri
    pub instrument: String,
    /// JWST filter; empty = the instrument's default (F200W, F300M, F1000W).
    pub filter: String,
    /// Mosaic tiles (pointings) as COLSxROWS, e.g. "2x2".
    pub tiles: String,
    /// Dither positions per tile (1 to 8).
    pub dithers: usize,
    /// Roll offsets, deg: the whole tile x dither pattern is observed once per entry, rotated by that
    /// much about the target (another epoch at another position angle); [0.0] = one coverage.
    pub rolls_deg: Vec<f64>,
    /// tiny | small | medium | large: detector size 64, 256, 1024 or 2048 pixels (MIRI 1032x1024 at large).
    pub size: String,
    /// Seed of every random draw: same seed, same files.
    pub seed: u64,
    /// Target name written to TARGPROP.
    pub target: String,
    /// Add Poisson and read noise (false = noise-free scene with ERR from the noiseless signal).
    pub noise: bool,
    /// Add cosmic-ray hits (recorded in the truth).
    pub cosmic_rays: bool,
    /// Saturate pixels above the full well (NaN + SATURATED|DO_NOT_USE, as the pipeline does).
    pub saturate: bool,
    /// Cosmic-ray rate: hits per pixel per 1000 s of exposure.
    pub cosmic_ray_rate: f64,
    /// NIRCam 1/f noise: rms of the per-amplifier row offsets in MJy/sr; a negative value = instrument default.
    pub stripe_rms_mjysr: f64,
    /// rms of the per-exposure background offsets in MJy/sr; negative = instrument default (NIRCam 0.02, MIRI 0.4).
    pub background_offset_mjysr: f64,
    /// A background plane per tile, rising by this much (MJy/sr) across the tile in a random direction.
    pub tile_plane_mjysr: f64,
    /// Difference of the MIRI Lyot-coronagraph region's level from the imager field, MJy/sr (real
    /// cal files show 0.5 to 2 MJy/sr more in the Lyot box).
    pub lyot_offset_mjysr: f64,
    /// rms of the per-visit pointing errors in the header WCS, arcsec.
    pub pointing_error_arcsec: f64,
    /// Global absolute offset of all header WCS from the truth, arcsec (along RA and Dec alike).
    pub absolute_offset_arcsec: f64,
    /// Global rotation of all header WCS from the truth, deg.
    pub absolute_rotation_deg: f64,
    /// Number of MIRI off-source background exposures per tile (written to `off/`).
    pub miri_off_exposures: usize,
    /// Fraction of true point sources listed in the reference catalogue.
    pub catalog_completeness: f64,
    /// Positional noise of the reference catalogue, arcsec.
    pub catalog_noise_arcsec: f64,
    /// Pixel scale of the truth sky image as a multiple of the native scale (2 = half the pixels per axis).
    pub truth_pixscale_factor: f64,
    /// Make the galaxy fill the field (its disk scale length as large as half the survey's extent),
    /// so that no exposure sees empty sky and the band's sky level is genuinely unknown to the mosaic
    /// (the case `anchor` exists for).
    pub fill_field: bool,
}

impl Default for RawSimulate {
    fn default() -> Self {
        RawSimulate {
            instrument: "nircam_lw".into(),
            filter: String::new(),
            tiles: "2x2".into(),
            dithers: 4,
            rolls_deg: vec![0.0],
            size: "tiny".into(),
            seed: 1,
            target: "NGC0000".into(),
            noise: true,
            cosmic_rays: true,
            saturate: true,
            cosmic_ray_rate: 2e-4,
            stripe_rms_mjysr: -1.0,
            background_offset_mjysr: -1.0,
            tile_plane_mjysr: 0.0,
            lyot_offset_mjysr: 1.0,
            pointing_error_arcsec: 0.1,
            absolute_offset_arcsec: 0.25,
            absolute_rotation_deg: 0.01,
            miri_off_exposures: 2,
            catalog_completeness: 0.8,
            catalog_noise_arcsec: 0.01,
            truth_pixscale_factor: 1.0,
            fill_field: false,
        }
    }
}

impl RawConfig {
    /// Parse TOML text, apply `--set key=value` overrides, and deserialise with unknown keys rejected.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] (naming `name` and the line) or [`ConfigError::Set`].
    pub fn from_toml_with_sets(text: &str, name: &str, sets: &[String]) -> Result<RawConfig, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| parse_error(name, text, &e))?;
        for arg in sets {
            apply_set(&mut doc, arg)?;
        }
        let targets = super::overrides::target_names(&doc);
        let has_overrides = super::overrides::check(&doc, &targets)?;
        let mut raw = if sets.is_empty() && !has_overrides {
            // deserialise the file's own text so that error line numbers are the file's
            toml::from_str::<RawConfig>(text).map_err(|e| parse_error(name, text, &e))?
        } else {
            // the campaign-wide values: every override table falls back to the default
            let plain = super::overrides::resolve(&doc, None, None);
            let merged = toml::to_string(&plain).expect("a TOML table serialises");
            let label =
                if sets.is_empty() { name.to_string() } else { format!("{name} with --set {}", sets.join(" ")) };
            toml::from_str::<RawConfig>(&merged).map_err(|e| parse_error(&label, &merged, &e))?
        };
        raw.doc = Some(doc);
        Ok(raw)
    }

    /// The config of one task of a campaign: every override table resolved for `target` and `band`
    /// (`pjpipe-algorithms.md` section 14: target name, then band, then `nircam_short`/`nircam_long`,
    /// then `nircam`/`miri`; no matching entry = the default), holding only that target, with the
    /// campaign-wide keys that do not change how a band is computed (`run.groups`, `[release]`) at
    /// their defaults, so they stay out of the band's provenance and dependency hashes.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the target and band.
    pub fn for_task(&self, target: &str, band: &str) -> Result<RawConfig, ConfigError> {
        let doc = match &self.doc {
            Some(d) => d.clone(),
            None => match toml::Value::try_from(self).expect("config serialises") {
                toml::Value::Table(t) => t,
                _ => unreachable!("a struct serialises as a table"),
            },
        };
        let plain = super::overrides::resolve(&doc, Some(target), Some(band));
        let merged = toml::to_string(&plain).expect("a TOML table serialises");
        let label = format!("the config of target {target}, band {band}");
        let mut raw = toml::from_str::<RawConfig>(&merged).map_err(|e| parse_error(&label, &merged, &e))?;
        raw.run.groups = RawRun::default().groups;
        raw.release = RawRelease::default();
        raw.target.retain(|t| t.name.eq_ignore_ascii_case(target));
        raw.doc = None;
        Ok(raw)
    }

    /// Serialise as TOML (written into provenance).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }
}

fn parse_error(name: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().trim().to_string();
    ConfigError::Parse {
        path: name.to_string(),
        message: match line {
            Some(l) => format!("line {l}: {msg}"),
            None => msg,
        },
    }
}

/// Apply `section.key=value` to the TOML table. The value is parsed as a TOML value; if that fails
/// it is taken as a string, so `simulate.instrument=miri` works without quotes.
fn apply_set(doc: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let err = |message: &str| ConfigError::Set { arg: arg.to_string(), message: message.to_string() };
    let (path, value) = arg.split_once('=').ok_or_else(|| err("expected key=value, e.g. plan.chunk_px=1024"))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(err("empty key in the key path"));
    }
    let value = value.trim();
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("key v present"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let mut table = doc;
    for k in &keys[..keys.len() - 1] {
        let entry = table.entry(k.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| err(&format!("`{k}` is not a section")))?;
    }
    table.insert(keys[keys.len() - 1].to_string(), parsed);
    Ok(())
}

/// The commented default configuration printed by `tessera config default`. A unit test checks that
/// it parses to `RawConfig::default()` and documents every key.
pub const DEFAULT_TOML: &str = r#"# tessera configuration (defaults). Every key is optional; unknown keys are an error.
# Override any key on the command line with --set section.key=value.

[run]
# Folder where products go (one sub-folder per stage).
output_dir = "tessera-out"
# Memory budget per MPI rank, in MiB. Drives the chunk size of the output grid.
mem_budget_mb = 4096
# Worker threads per rank (rayon); 0 = all cores available to the rank. At most 1024; more
# than 4x the cores available to the rank is lowered to that, with a warning.
threads = 0
# Seconds between progress lines on rank 0.
progress_interval_s = 5.0
# `tessera mosaic` stops after this stage (its products written; `--resume` continues): one of plan,
# prep, destripe, align, level, destripe_multi, outlier, drizzle, assemble, astrometry, anchor;
# empty = run all.
stop_after = ""
# `tessera run`: split the ranks into this many communicator groups, each taking (target, band)
# tasks from the campaign's queue (a target's reference band first, then the bands that use its
# solutions, on the same group); "auto" = groups as large as the largest band needs (its input
# bytes over half of mem_budget_mb), as many as fit, at most one per (target, instrument).
# Products are the same whatever the number of groups.
groups = 1

# Any value may instead be a table keyed by target name, band, nircam_short/nircam_long or
# nircam/miri, resolved in that order of priority for each band of each target (no matching entry =
# the default), e.g. `sigma = { F770W = 2.5, miri = 2.8 }` under [level], or with --set
# level.sigma.miri=2.8. A key that is none of those is an error.

[plan]
# Output pixel scale in arcsec; 0 = the instrument's native scale (NIRCam SW 0.031, LW 0.063, MIRI 0.11).
pixscale_arcsec = 0.0
# Empty pixels added around the union of the footprints on every side.
margin_px = 16
# Side of a square output chunk in pixels; 0 = derived from run.mem_budget_mb.
chunk_px = 0
# Bytes of per-chunk working memory per output pixel, used to size chunks from the budget.
bytes_per_output_px = 256
# Refuse an output grid whose area exceeds this multiple of the footprints' union area (broken WCS guard).
max_fill_ratio = 4.0
# Refuse an output grid larger than this many megapixels.
max_output_mpix = 2000.0
# `tessera run`: the bands of one target that share one output grid, so that their images align pixel
# for pixel (PSF matching, colour images): "none" (a grid per band), "instrument" (one per NIRCam and
# one for MIRI) or "all". The shared grid covers every band's footprints, at plan.pixscale_arcsec or
# else the finest native scale among those bands.
common_grid = "none"

# A user-given output grid instead of one covering all footprints (uncomment all lines to use):
# [plan.grid]
# Right ascension of the grid centre, deg.
# ra_deg = 10.0
# Declination of the grid centre, deg.
# dec_deg = -30.0
# Width in pixels.
# nx = 4096
# Height in pixels.
# ny = 4096
# Pixel scale, arcsec.
# pixscale_arcsec = 0.063
# Position angle of +y east of north, deg (0 = north up).
# rotation_deg = 0.0

[prep]
# Run the stage (`tessera mosaic --no-prep` turns it off for one run).
enabled = true
# MIRI: level-match the Lyot coronagraph region (rows 735-1023, columns 0-289) as its own image
# and recombine it (false = treat the frame as one image).
lyot_separate = true
# MIRI: subtract the per-pixel combination of the off-source exposures closest in time.
off_background = true
# Off-source exposures are those whose TARGPROP contains this text (case-insensitive), as
# pjpipe's check_in_name.
off_name = "off"
# Extra files or directories holding the off-source exposures. A directory off/ beside the
# science inputs is always searched.
off_inputs = []
# Clipping threshold of the per-pixel combination of the off exposures, in standard deviations.
off_sigma = 1.5

[destripe]
# Run the stage on NIRCam exposures (`tessera mosaic --no-destripe` turns it off for one run).
enabled = true
# Median-filter scales of the row-profile cascade, rows, ascending.
filter_scales = [3, 7, 15, 31, 63, 127, 255, 511]
# Cutoff of the Butterworth high-pass, fraction of the sampling frequency (0.005 = ~200 px).
cutoff_ratio = 0.005
# Source-mask and clipping threshold, standard deviations.
sigma = 3.0
# Side of the square dilation of the source mask, pixels.
dilate_size = 7
# Amplifier rows with less than this unmasked fraction use the full-row median.
min_mask_frac = 0.2
# Seed of the Gaussian fill of masked pixels before the high-pass.
seed = 0
# Write a PNG per exposure (data, model, corrected) under destripe/ and destripe_multi/.
png = false

[align]
# Run the stage (`tessera mosaic --no-align` turns it off for one run).
enabled = true
# Band the visit shifts are solved in; empty = F300M for NIRCam, F1000W for MIRI.
reference_band = ""
# The reference band's align/align.json, applied to the other bands of the same visits;
# empty = solve in the band at hand when it is not the reference band (with a note).
shifts_file = ""
# PSF FWHM for source detection, arcsec; 0 = the band's FWHM from the PHANGS table.
fwhm_arcsec = 0.0
# Detection threshold in noise sigmas.
threshold_sigma = 5.0
# Keep the brightest N point sources per exposure.
brightest = 500
# Half size of the shift search between two visits, arcsec.
search_radius_arcsec = 1.0
# Matching radius after the shift search, arcsec.
tolerance_arcsec = 0.2
# Fewer matched sources than this between two visits is a failed pair (tweakreg's minobj).
min_matches = 3

[level]
# Run the stage (`tessera mosaic --no-level` turns it off for one run).
enabled = true
# Clipping threshold of the pair statistics, in standard deviations.
sigma = 3.0
# Clipping iterations at most.
maxiters = 10
# Pairs overlapping less than this fraction of the mean pair overlap are rejected.
min_area_frac = 0.002
# Pairs whose overlap spans less than this fraction of either image along both axes are rejected.
min_linear_frac = 0.2
# Pairs with rms above mean + this many standard deviations of the pair rms are rejected.
rms_sig_limit = 2.0
# Subtract one constant from the band at the end: the lowest sigma-clipped sky among the tiles.
subtract_sky = true
# What is fitted per tile in the tiles step: "level" (a constant) or "plane" (a constant and
# two slopes, pjpipe's "level+slope").
tile_fit = "level"
# Keep the exposures resampled in the dithers step for the tiles step, within half of
# run.mem_budget_mb (those that do not fit are resampled again); the same numbers either way.
share_pieces = true

[destripe_multi]
# Run the stage on NIRCam exposures (`tessera mosaic --no-destripe` turns it off too).
enabled = true
# Run the large-scale second pass (stripes common to all exposures; pjpipe do_large_scale);
# not after the joint solve (method), which already separates them (a note says so).
large_scale = true
# Length of the large-scale median filter along each exposure's columns, pixels (odd); 0 = the
# exposure's rows / 10, made odd (pjpipe: 203 for 2048 rows).
large_scale_filter_px = 0
# Most iterations of pass A (pjpipe's do_convergence): each compares every exposure with the
# average of all exposures, itself included, after the models so far; 0 = automatic: 1 when
# the band's exposures share one orientation, 5 (pjpipe's most) when they are rotated 10 deg or more from
# each other (two rolls), where iterating separates stripes from sky.
max_iterations = 0
# Iterations stop when no exposure's update is larger than this rms, MJy/sr.
convergence_mjysr = 2e-4
# How pass A finds the models: "iterate" (pjpipe: row medians against the average, iterated
# max_iterations times), "joint" (every exposure's row and column stripes solved together by least
# squares on the output grid's cells; max_iterations and convergence_mjysr unused), or "auto"
# (joint when the exposures are rotated 10 deg or more from each other and its ~92 bytes per input
# pixel over the ranks fit run.mem_budget_mb, else iterate).
method = "auto"

[outlier]
# Run the stage (false = no outlier flags; drizzle uses the DQ as it is).
enabled = true
# Signal-to-noise threshold for detection (JWST default).
snr1 = 5.0
# Signal-to-noise threshold for the neighbours of detections.
snr2 = 4.0
# Multiplier of the blotted median's derivative added to the first threshold.
scale1 = 1.2
# Multiplier of the derivative for the second threshold.
scale2 = 0.7
# Resampled pixels with less than this fraction of the exposure's typical weight stay out of the median.
maskpt = 0.7
# Drizzle pixfrac for the individually resampled exposures. Below the JWST pipeline's 1.0 on
# purpose: drizzle at 1.0 plus the blot smooth undersampled LW star cores by about a third, and
# the flag test then hits them (measured: 0 of 1451 cores flagged at 0.7, 2 of 509 at 0.8, 4 at 1.0;
# at 0.5 the holes cost cosmic rays).
pixfrac = 0.7
# Interpolation of the median blotted back to each exposure: "bicubic" (keeps undersampled star
# cores) or "bilinear" (the JWST pipeline's choice).
blot_interp = "bicubic"
# Also write outlier/<stem>_crf.fits: each exposure with its outlier flags set in DQ (DO_NOT_USE +
# OUTLIER, JWST DQ bits 0 and 4, as in the JWST pipeline's *_crf files). The tweakback files of the
# astrometry stage carry the same flags.
write_crf = false
# Where two or three resampled exposures remain at a pixel and their median exceeds twice their
# smallest value, compare with the smallest instead of the median (the median of two is their mean:
# half of a cosmic ray stays in it and its derivative term then hides the cosmic ray; of three, two
# cosmic rays on one pixel carry it), so those cosmic rays are found. Where that exposure's value also
# stands snr1 noises (its median ERR) above the smallest, and it is not a source seen lower by it
# nearby, it is left out of the median within one input pixel plus two output pixels of there, so the
# fainter pixels of its cosmic ray are found too. false = the JWST pipeline.
low_coverage_min = true

[drizzle]
# Fraction of the input pixel side drizzled (square kernel), 0 < pixfrac <= 1.
pixfrac = 1.0
# Input weights: "ivm" (inverse VAR_RNOISE, as the JWST pipeline) or "exptime".
weight_type = "ivm"
# Drizzle the variance planes and write ERR, VAR_POISSON, VAR_RNOISE and VAR_FLAT (as the
# JWST ResampleStep's enable_err); false writes SCI, DQ, WHT and CON only, faster.
variance_planes = true

[assemble]
# Rows of the mosaic streamed from the band store per block (bounds rank 0's memory).
row_block = 512

[astrometry]
# Reference catalogue (CSV, ECSV or FITS table with ra, dec in deg); empty = no absolute
# astrometry. `tessera mosaic --catalog` sets it for one run.
catalog = ""
# Band the solution is measured in; empty = every band solves its own. A band that is not the
# reference band applies solution_file when given.
reference_band = ""
# The reference band's astrometry/astrometry.json, applied unchanged to this band; empty = solve.
solution_file = ""
# PSF FWHM for source detection, arcsec; 0 = the band's FWHM from the PHANGS table.
fwhm_arcsec = 0.0
# Detection threshold in noise sigmas.
threshold_sigma = 5.0
# Keep the brightest N point sources of the mosaic.
brightest = 1000
# Step 1 (shift): half size of the shift search, arcsec.
search_radius_arcsec = 1.5
# Step 1 (shift): matching radius, arcsec.
wide_tolerance_arcsec = 0.15
# Step 2 (shift + rotation): matching radius, arcsec.
strict_tolerance_arcsec = 0.05
# Fewer matched sources than this is a failed solution (the WCS is kept).
min_matches = 5

[anchor]
# Run the stage (false = the mosaic keeps the level of the level-matching stage).
enabled = true
# Wide-field reference images (FITS, image in the primary HDU, MJy/sr, celestial WCS) in order of
# preference, e.g. IRAC1 then WISE1 for NIRCam, IRAC4 then WISE3 for MIRI; the first that gives a
# fit is used. `tessera mosaic --anchor REF.fits` (repeatable) sets it for one run. Empty (and not a
# tied band) = the stage is skipped for the band with a warning.
references = []
# Resolution (Gaussian FWHM, arcsec) of a reference whose header has no BMAJ (deg); 0 = BMAJ is required.
reference_fwhm_arcsec = 0.0
# NIRCam band anchored to the references; the other NIRCam bands are tied to its anchored mosaic.
reference_band_nircam = "F300M"
# MIRI band anchored to the references; the other MIRI bands are tied to its anchored mosaic.
reference_band_miri = "F770W"
# For a band that is not its instrument's reference band: the reference band's anchored mosaic (its
# -o FITS after this stage), which the band is tied to at internal_fwhm_arcsec; empty = the stage is
# skipped for that band with a warning.
reference_band_mosaic = ""
# Resolution of the internal tie between bands of one instrument, arcsec (F2100W's PSF FWHM).
internal_fwhm_arcsec = 0.674
# Width of the bins of reference intensity, MJy/sr.
bin_width_mjysr = 0.1
# Range of reference intensity fitted, MJy/sr [low, high].
range_mjysr = [0.25, 2.0]
# The range for WISE3 references (file name containing "w3" or "wise3"), MJy/sr.
range_wise3_mjysr = [0.0, 0.8]
# Fit the faint half of the field instead: from the 1st percentile to the median of the reference
# intensities over the mosaic (for fields the galaxy fills, where the fixed range holds no pixels).
auto_range = false
# Bins with fewer pixels than this are left out.
min_bin_pixels = 10
# Rejection threshold of the line fit through the bin medians, in residual standard deviations.
clip_sigma = 3.0
# Rejection rounds of the line fit.
clip_iterations = 3
# A reference must cover at least this fraction of the mosaic's pixels (else an error names it).
min_coverage = 0.9
# Mosaic pixels brighter than this (MJy/sr) are left out of the comparison with every reference pixel
# whose beam reaches them: saturated stars and cores, whose flux the mosaic misses and the reference
# has; 0 = none (pjpipe; on small fields the masked beams can leave too few bins).
mask_above_mjysr = 0.0
[psfmatch]
# PSF images (FITS, pixel scale in PIXELSCL or PIXSCALE, arcsec). A band takes the file whose
# FILTER card, else whose file name, names it; a single file serves any band. No file for a band
# = its analytic (Gaussian) model, with a warning. `tessera mosaic --psf` adds files.
psf = []
# Resolutions to match to: "gaussNpNN" (a Gaussian of that FWHM in arcsec, e.g. "gauss0p90") or a
# band name (e.g. "F770W": that band's PSF). Empty = the stage is skipped.
# `tessera mosaic --psf-target` adds targets.
targets = []
# Mosaic rows per convolution chunk (one FFT each, with halos as wide as the kernel radius).
chunk_rows = 512
# Write the noise-versus-resolution curve (psfmatch/noise_curve.csv and .png).
noise_curve = true
# Largest smoothing FWHM of the noise curve, arcsec; 0 = twice the largest Gaussian target, at
# least 1 arcsec.
noise_max_fwhm_arcsec = 0.0
# Side of the square of the mosaic on which the noise curve is measured, pixels: the emptiest
# of nine candidates (corners, edge middles, centre).
noise_region_px = 1024
[release]
# Build the release tree at the end of `tessera run` (`tessera release` builds it alone).
enabled = true
# Root of the release trees; empty = <run.output_dir>/release.
dir = ""
# Release version: a folder level, <dir>/<version>/<target>/.
version = "v1"
# Drop the VAR_POISSON, VAR_RNOISE and VAR_FLAT extensions from the released FITS files.
remove_bloat = false
# A previous release's version folder (<dir>/<old version>): difference images and a table of
# per-band median and rms differences against it; empty = no comparison.
compare_to = ""

# Targets for `tessera run` (repeat the table for each target):
# [[target]]
# Target name: products go to <output_dir>/<name>/<band>/.
# name = "NGC0628"
# Cal files or directories holding *_cal.fits (all bands; grouped by FILTER/PUPIL).
# inputs = ["/data/ngc0628"]
# Only these bands (empty = every band found); a band that is not a JWST imaging filter, or that
# has no exposures among the inputs, is an error.
# bands = ["F300M", "F335M"]
# Reference catalogue for absolute astrometry.
# catalog = "/data/ngc0628/refcat.csv"

[simulate]
# nircam_sw | nircam_lw | miri
instrument = "nircam_lw"
# JWST filter; empty = the instrument's default (F200W, F300M, F1000W).
filter = ""
# Mosaic tiles (pointings) as COLSxROWS.
tiles = "2x2"
# Dither positions per tile (1 to 8).
dithers = 4
# Roll offsets, deg: the whole tile x dither pattern is observed once per entry, rotated by that
# much about the target (another epoch at another position angle); [0.0] = one coverage.
rolls_deg = [0.0]
# tiny | small | medium | large: detector size 64, 256, 1024 or 2048 pixels (MIRI 1032x1024 at large).
size = "tiny"
# Seed of every random draw: same seed, same files.
seed = 1
# Target name written to TARGPROP.
target = "NGC0000"
# Add Poisson and read noise (false = noise-free scene; ERR still from the noiseless signal).
noise = true
# Add cosmic-ray hits (recorded in the truth).
cosmic_rays = true
# Saturate pixels above the full well (NaN + SATURATED|DO_NOT_USE, as the pipeline does).
saturate = true
# Cosmic-ray rate: hits per pixel per 1000 s of exposure.
cosmic_ray_rate = 2e-4
# NIRCam 1/f noise: rms of the per-amplifier row offsets in MJy/sr; negative = instrument default.
stripe_rms_mjysr = -1.0
# rms of the per-exposure background offsets in MJy/sr; negative = instrument default (NIRCam 0.02, MIRI 0.4).
background_offset_mjysr = -1.0
# A background plane per tile, rising by this much (MJy/sr) across the tile in a random direction.
tile_plane_mjysr = 0.0
# Difference of the MIRI Lyot-coronagraph region's level from the imager field, MJy/sr (real
# cal files show 0.5 to 2 MJy/sr more in the Lyot box).
lyot_offset_mjysr = 1.0
# rms of the per-visit pointing errors in the header WCS, arcsec.
pointing_error_arcsec = 0.1
# Global absolute offset of all header WCS from the truth, arcsec (along RA and Dec alike).
absolute_offset_arcsec = 0.25
# Global rotation of all header WCS from the truth, deg.
absolute_rotation_deg = 0.01
# Number of MIRI off-source background exposures per tile (written to off/).
miri_off_exposures = 2
# Fraction of true point sources listed in the reference catalogue.
catalog_completeness = 0.8
# Positional noise of the reference catalogue, arcsec.
catalog_noise_arcsec = 0.01
# Pixel scale of the truth sky image as a multiple of the native scale (2 = half the pixels per axis).
truth_pixscale_factor = 1.0
# Make the galaxy fill the field (its disk scale length as large as half the survey's extent), so that
# no exposure sees empty sky and the band's sky level is genuinely unknown to the mosaic.
fill_field = false
"#;
