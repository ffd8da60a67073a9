//! `tessera simulate`: a synthetic JWST survey with a known truth (SPEC section 8).
//!
//! Writes realistic cal files directly into the output folder, MIRI off-source exposures into
//! `off/`, auxiliary inputs (reference catalogue, PSF image, wide-field reference images for
//! `anchor`, see [`references`]) into `aux/`,
//! and the truth (sky image with WCS, per-exposure backgrounds and stripe models, per-visit pointing
//! errors, absolute offset, cosmic rays, sources) into `truth/`. The survey design is a pure function
//! of the config ([`survey::design`]); every random draw comes from a ChaCha stream keyed by
//! (seed, purpose, exposure), so the same seed gives the same files for any number of ranks or
//! threads. Under MPI, exposure `i` is rendered by rank `i % size`.

pub mod psf;
pub mod references;
pub mod survey;

use super::progress::Progress;
use super::{Outcome, Provenance};
use crate::config::{Instrument, RawConfig, SimulateConfig};
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::geom::{sky_to_tangent_arcsec, tangent_arcsec_to_sky, OutputGrid, TanSip};
use crate::io::fits::{card_int, card_real, card_text, write_cal, write_image, CalImage, Card};
use crate::kernels::detector::{self, dq, rng_for, CosmicRay, NoiseParams, StripeModel, StripeParams};
use crate::kernels::scene::{self, ComponentKind, RenderParams, Scene, SceneParams};
use crate::plan::{CalMeta, ExposureId};
use ndarray::{Array2, Zip};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;
use survey::{stream, ExposurePlan, Survey};

/// What the truth file records about one exposure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExposureTruth {
    pub file: String,
    pub detector: String,
    pub tile: usize,
    pub dither: usize,
    pub is_off: bool,
    pub expmid_mjd: f64,
    /// Total additive background, MJy/sr (sky + offset).
    pub background_mjysr: f64,
    /// Per-exposure offset part of the background, MJy/sr.
    pub offset_mjysr: f64,
    /// Smooth sky part (MIRI thermal drift), MJy/sr.
    pub sky_mjysr: f64,
    /// The tile's background plane `[at the tangent point, d/dxi, d/deta]`, MJy/sr and MJy/sr per
    /// arcsec of the target's tangent plane (xi east, eta north); not in `background_mjysr`.
    #[serde(default)]
    pub plane: [f64; 3],
    /// MIRI: level added in the Lyot box `[y0, y1, x0, x1]`.
    pub lyot_offset_mjysr: f64,
    pub lyot_box: Option<[usize; 4]>,
    /// rms of the stripe model actually added, MJy/sr (0 when none).
    pub stripe_rms_mjysr: f64,
    /// Stripe model file (under truth/), if any.
    pub stripe_file: Option<String>,
    pub n_cosmic_rays: usize,
    pub n_cosmic_ray_pixels: usize,
    pub n_saturated: usize,
    /// CRVAL of the true WCS and of the header WCS, deg.
    pub true_crval_deg: [f64; 2],
    pub header_crval_deg: [f64; 2],
    /// The WCS the pixels were rendered with (the header carries the pointing errors).
    pub true_wcs: TanSip,
}

/// The whole truth record (`truth/truth.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub provenance: Provenance,
    pub config: SimulateConfig,
    pub target_deg: [f64; 2],
    pub psf_fwhm_arcsec: f64,
    /// Total flux of the scene (point sources and galaxy), Jy.
    pub total_flux_jy: f64,
    pub visit_errors: Vec<survey::VisitError>,
    pub absolute_offset_arcsec: [f64; 2],
    pub absolute_rotation_deg: f64,
    /// The wide-field reference images for `anchor` (`aux/<name>.fits`) and their truth.
    pub anchor: references::AnchorTruth,
    pub exposures: Vec<ExposureTruth>,
    /// The truth sky image (`truth/truth_sky.fits`) grid.
    pub truth_grid: OutputGrid,
}

/// Run the simulator into `out`.
///
/// # Errors
/// Unwritable output folder or a failed FITS write (named).
pub fn run(comm: &dyn Comm, raw: &RawConfig, cfg: &SimulateConfig, out: &Path) -> crate::Result<Outcome> {
    let survey = survey::design(cfg);
    let scene = scene::make_scene(&scene_params(cfg, &survey));
    let prov = Provenance::new(raw, comm);
    if comm.rank() == 0 {
        tracing::info!(
            "[simulate] {} {} {}x{} tiles x {} dithers, {} files of {}x{} px into {}",
            cfg.instrument.name(),
            cfg.filter,
            cfg.tiles.0,
            cfg.tiles.1,
            cfg.dithers,
            survey.exposures.len(),
            survey.layout.shape[1],
            survey.layout.shape[0],
            out.display()
        );
    }
    let ok = comm.on_root_then_broadcast(0, || -> Result<(), String> {
        for d in ["", "truth", "truth/stripes", "aux", "off"] {
            crate::io::make_dir(&out.join(d)).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    ok?;

    let mine: Vec<&ExposurePlan> = survey.exposures.iter().filter(|e| e.index % comm.size() == comm.rank()).collect();
    let progress = Mutex::new(Progress::new("simulate", "exposures", mine.len(), 5.0, comm.rank() == 0));
    let results: Vec<crate::Result<(ExposureTruth, Vec<CosmicRay>)>> = mine
        .par_iter()
        .map(|e| {
            let r = simulate_exposure(cfg, &survey, &scene, e, out, &prov);
            let mpix = (survey.layout.shape[0] * survey.layout.shape[1]) as f64 / 1e6;
            progress.lock().expect("progress lock").add(1, mpix);
            r.with_context(|| format!("simulating {}", e.file))
        })
        .collect();
    progress.lock().expect("progress lock").finish();
    let mut local = vec![];
    let mut failure = None;
    for r in results {
        match r {
            Ok(t) => local.push(t),
            Err(e) => failure = failure.or(Some(format!("{e:#}"))),
        }
    }
    // ranks agree before anyone fails
    type Part = Result<Vec<(ExposureTruth, Vec<CosmicRay>)>, String>;
    let all: Option<Vec<Part>> = comm.gather_values(
        0,
        &match &failure {
            None => Ok(local),
            Some(m) => Err(m.clone()),
        },
    )?;
    let result = comm.on_root_then_broadcast(0, || -> Result<(), String> {
        let mut truths = vec![];
        for r in all.expect("root gathers") {
            truths.extend(r?);
        }
        truths.sort_by(|a, b| a.0.file.cmp(&b.0.file));
        let order: std::collections::HashMap<&str, usize> =
            survey.exposures.iter().map(|e| (e.file.as_str(), e.index)).collect();
        truths.sort_by_key(|t| order[t.0.file.as_str()]);
        write_truth(cfg, &survey, &scene, &truths, out, &prov).map_err(|e| format!("{e:#}"))
    });
    result?;
    if comm.rank() == 0 {
        println!("simulated {} exposures into {}", survey.exposures.len(), out.display());
        println!("  cal files:   {}/*_cal.fits", out.display());
        if cfg.instrument == Instrument::Miri && cfg.miri_off_exposures > 0 {
            println!("  MIRI off:    {}/off/", out.display());
        }
        println!("  truth:       {}/truth/truth.json, truth_sky.fits, cosmic_rays.csv, sources.csv", out.display());
        let refs: Vec<String> =
            references::for_instrument(cfg.instrument).iter().map(|r| format!("{}.fits", r.name)).collect();
        println!("  aux inputs:  {}/aux/refcat.csv, psf_{}.fits, {}", out.display(), cfg.filter, refs.join(", "));
    }
    Ok(Outcome::Clean)
}

fn scene_params(cfg: &SimulateConfig, survey: &Survey) -> SceneParams {
    SceneParams {
        seed: cfg.seed ^ stream::SCENE.rotate_left(32),
        field_half_width_arcsec: survey.half_extent_arcsec,
        band_um: Instrument::filter_wavelength_um(&cfg.filter).unwrap_or(2.0),
        // fill_field: the disk's scale length as large as half the field, so no exposure sees
        // empty sky (the default 0.12 leaves the outer field to the stars)
        disk_scale_frac: if cfg.fill_field { 1.0 } else { SceneParams::default().disk_scale_frac },
        ..SceneParams::default()
    }
}

fn pix_to_tan<'a>(wcs: &'a TanSip, centre: (f64, f64)) -> impl Fn(f64, f64) -> (f64, f64) + Sync + 'a {
    move |x, y| {
        let (ra, dec) = wcs.pixel_to_sky(x, y);
        sky_to_tangent_arcsec(centre, ra, dec)
    }
}

fn tan_to_pix<'a>(wcs: &'a TanSip, centre: (f64, f64)) -> impl Fn(f64, f64) -> Option<(f64, f64)> + Sync + 'a {
    move |xi, eta| {
        let (ra, dec) = tangent_arcsec_to_sky(centre, xi, eta);
        wcs.sky_to_pixel(ra, dec).ok()
    }
}

/// Render, corrupt and write one exposure.
fn simulate_exposure(
    cfg: &SimulateConfig,
    survey: &Survey,
    scene: &Scene,
    e: &ExposurePlan,
    out: &Path,
    prov: &Provenance,
) -> crate::Result<(ExposureTruth, Vec<CosmicRay>)> {
    let layout = &survey.layout;
    let [ny, nx] = layout.shape;
    let centre = (survey.target_deg[0], survey.target_deg[1]);
    let base = stream::EXPOSURE_BASE + e.index as u64 * 16;
    // 1. the sky, rendered with the true WCS (off exposures see no galaxy)
    let mut sky = Array2::<f32>::zeros((ny, nx));
    if !e.is_off {
        let rp = RenderParams { psf_fwhm_arcsec: survey.psf_fwhm_arcsec, pixel_integrate: true };
        scene::render(scene, &rp, sky.view_mut(), &pix_to_tan(&e.true_wcs, centre), &tan_to_pix(&e.true_wcs, centre));
    }
    // 2. additive background (with the tile's plane), MIRI Lyot level
    sky.mapv_inplace(|v| v + e.background_mjysr as f32);
    if e.plane != [0.0; 3] {
        let to_tan = pix_to_tan(&e.true_wcs, centre);
        sky.indexed_iter_mut().for_each(|((y, x), v)| {
            let (xi, eta) = to_tan(x as f64, y as f64);
            *v += (e.plane[0] + e.plane[1] * xi + e.plane[2] * eta) as f32;
        });
    }
    let lyot = layout.lyot_box();
    if let Some([y0, y1, x0, x1]) = lyot {
        sky.slice_mut(ndarray::s![y0..y1, x0..x1]).mapv_inplace(|v| v + cfg.lyot_offset_mjysr as f32);
    }
    // MIRI: no light between the coronagraph strip and the imager field, nor behind the Lyot spot
    // and its bar (survey::MiriFocalPlane)
    let focal = layout.miri_focal_plane();
    if let Some(fp) = &focal {
        sky.indexed_iter_mut().filter(|((y, x), _)| fp.is_dark(*y, *x)).for_each(|(_, v)| *v = 0.0);
    }
    // 3. noise and variances from the noiseless signal
    let gain = survey.gain_e_per_mjysr_s * e.effexptm_s;
    let np = NoiseParams { gain_e_per_mjysr: gain, read_noise_e: survey.read_noise_e, flat_err_frac: 0.002 };
    let noiseless = sky.clone();
    let mut sci = sky;
    let noise = if cfg.noise {
        detector::add_noise(&mut rng_for(cfg.seed, base + 1), sci.view_mut(), &np)
    } else {
        let mut scratch = sci.clone();
        detector::add_noise(&mut rng_for(cfg.seed, base + 1), scratch.view_mut(), &np)
    };
    // 4. 1/f stripes (NIRCam)
    let mut stripe_rms = 0.0;
    let mut stripe_file = None;
    if cfg.instrument != Instrument::Miri && cfg.stripe_rms_mjysr > 0.0 {
        let sp = StripeParams {
            row_rms_mjysr: cfg.stripe_rms_mjysr,
            col_rms_mjysr: 0.3 * cfg.stripe_rms_mjysr,
            ripple_amp_mjysr: 0.5 * cfg.stripe_rms_mjysr,
            ripple_period_rows: ny as f64 / 3.0,
            n_amps: 4,
        };
        let model: StripeModel = detector::make_stripes(&mut rng_for(cfg.seed, base + 2), ny, nx, &sp);
        model.apply(sci.view_mut());
        let img = model.to_image(ny, nx);
        let mean = img.iter().map(|&v| v as f64).sum::<f64>() / img.len() as f64;
        stripe_rms = (img.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / img.len() as f64).sqrt();
        let name = format!("stripes/{}", e.file.replace("_cal.fits", "_stripes.fits"));
        let rows = model.rows.clone();
        let cols = model.cols.clone().insert_axis(ndarray::Axis(0));
        write_image(
            &out.join("truth").join(&name),
            &img,
            &[card_text("BUNIT", "MJy/sr", "stripe model added to SCI"), card_text("FILENAME", &e.file, "exposure")],
            &[("ROWS", &rows), ("COLS", &cols)],
        )?;
        stripe_file = Some(name);
    }
    // 5. cosmic rays (not flagged: the outlier stage must find them)
    let crs = if cfg.cosmic_rays && cfg.cosmic_ray_rate > 0.0 {
        let sigma = (noiseless.iter().map(|&v| v.max(0.0) as f64).sum::<f64>() / noiseless.len() as f64 / gain)
            .sqrt()
            .max(1e-4);
        let rate = cfg.cosmic_ray_rate * e.effexptm_s / 1000.0;
        let crs =
            detector::make_cosmic_rays(&mut rng_for(cfg.seed, base + 3), ny, nx, rate, (30.0 * sigma, 600.0 * sigma));
        for cr in &crs {
            for &(y, x, v) in &cr.pixels {
                sci[[y, x]] += v;
            }
        }
        crs
    } else {
        vec![]
    };
    // 6. DQ: reference pixels, bad pixels, saturation, MIRI non-science
    let mut dqa = if cfg.instrument == Instrument::Miri {
        let mut d = detector::make_dq(&mut rng_for(cfg.seed, base + 4), ny, nx, 0, 1e-3);
        for y in 0..ny {
            for x in (0..layout.refpix).chain(nx - layout.refpix..nx) {
                d[[y, x]] |= dq::DO_NOT_USE | dq::REFERENCE_PIXEL;
            }
        }
        if let Some(fp) = &focal {
            // the coronagraph strip (4QPMs, LRS, the unilluminated columns) and the Lyot spot and
            // bar: not science; the open Lyot box and the imager field are
            for y in 0..ny {
                for x in layout.refpix..nx - layout.refpix {
                    if !fp.is_science(y, x) {
                        d[[y, x]] |= dq::DO_NOT_USE | dq::NON_SCIENCE;
                    }
                }
            }
        }
        d
    } else {
        detector::make_dq(&mut rng_for(cfg.seed, base + 4), ny, nx, layout.refpix, 1e-3)
    };
    let saturate = cfg.saturate;
    let full_well = survey.full_well_e / (survey.gain_e_per_mjysr_s * survey.group_time_s);
    let mut n_saturated = 0;
    let mut err = noise.err;
    let mut var_poisson = noise.var_poisson;
    let mut var_rnoise = noise.var_rnoise;
    let mut var_flat = noise.var_flat;
    // class: 0 good, 1 saturated (NaN everywhere), 2 reference pixel (zero everywhere)
    let mut class = Array2::<u8>::zeros((ny, nx));
    Zip::from(&mut sci).and(&mut dqa).and(&noiseless).and(&mut err).and(&mut class).for_each(|s, d, &n, er, c| {
        if saturate && n as f64 > full_well {
            *d |= dq::SATURATED | dq::DO_NOT_USE;
            *s = f32::NAN;
            *er = f32::NAN;
            *c = 1;
            n_saturated += 1;
        } else if *d & dq::REFERENCE_PIXEL != 0 {
            *s = 0.0;
            *er = 0.0;
            *c = 2;
        } else if *d & dq::DEAD != 0 {
            *s = 0.0;
        } else if *d & dq::HOT != 0 {
            *s += 50.0 * *er;
        }
    });
    Zip::from(&mut var_poisson).and(&mut var_rnoise).and(&mut var_flat).and(&class).for_each(|vp, vr, vf, &c| {
        let v = match c {
            1 => f32::NAN,
            2 => 0.0,
            _ => return,
        };
        (*vp, *vr, *vf) = (v, v, v);
    });
    // 7. AREA from the header WCS
    let nominal = (layout.pixscale_arcsec * layout.pixscale_arcsec) * crate::geom::SR_PER_ARCSEC2;
    let area =
        Array2::from_shape_fn((ny, nx), |(y, x)| (e.header_wcs.pixel_area_sr(x as f64, y as f64) / nominal) as f32);

    let meta = cal_meta(cfg, survey, e, out);
    let img = CalImage {
        meta,
        sci,
        err,
        dq: dqa,
        var_poisson: Some(var_poisson),
        var_rnoise: Some(var_rnoise),
        var_flat: Some(var_flat),
        area: Some(area),
    };
    let primary = primary_cards(cfg, survey, e);
    // no rank or thread counts here: the files must not depend on them
    let history = vec![
        format!("simulated by tessera {} simulate, seed {}", prov.tessera_version, cfg.seed),
        format!("config sha256 {}", prov.config_sha256),
    ];
    write_cal(&img.meta.path, &img, &primary, &history)?;
    let truth = ExposureTruth {
        file: e.file.clone(),
        detector: e.detector.clone(),
        tile: e.tile,
        dither: e.dither,
        is_off: e.is_off,
        expmid_mjd: e.expstart_mjd + 0.5 * e.effexptm_s / 86400.0,
        background_mjysr: e.background_mjysr,
        offset_mjysr: e.offset_mjysr,
        sky_mjysr: e.sky_mjysr,
        plane: e.plane,
        lyot_offset_mjysr: if lyot.is_some() { cfg.lyot_offset_mjysr } else { 0.0 },
        lyot_box: lyot,
        stripe_rms_mjysr: stripe_rms,
        stripe_file,
        n_cosmic_rays: crs.len(),
        n_cosmic_ray_pixels: crs.iter().map(|c| c.pixels.len()).sum(),
        n_saturated,
        true_crval_deg: e.true_wcs.crval_deg,
        header_crval_deg: e.header_wcs.crval_deg,
        true_wcs: e.true_wcs.clone(),
    };
    Ok((truth, crs))
}

fn cal_meta(cfg: &SimulateConfig, survey: &Survey, e: &ExposurePlan, out: &Path) -> CalMeta {
    let dir = if e.is_off { out.join("off") } else { out.to_path_buf() };
    let [ny, nx] = survey.layout.shape;
    CalMeta {
        path: dir.join(&e.file),
        instrument: instrume(cfg.instrument).into(),
        detector: e.detector.clone(),
        filter: cfg.filter.clone(),
        pupil: "CLEAR".into(),
        target: if e.is_off { format!("{}_OFF", cfg.target) } else { cfg.target.clone() },
        id: ExposureId {
            program: survey::PROGRAM.into(),
            observation: e.observation.clone(),
            visit: e.visit.clone(),
            visit_group: "02".into(),
            sequence: if e.is_off { "2".into() } else { "1".into() },
            activity: if e.is_off { "02".into() } else { "01".into() },
            exposure: format!("{:05}", e.exposure),
        },
        expstart_mjd: e.expstart_mjd,
        expmid_mjd: e.expstart_mjd + 0.5 * e.effexptm_s / 86400.0,
        expend_mjd: e.expstart_mjd + e.effexptm_s / 86400.0,
        effexptm_s: e.effexptm_s,
        subarray: "FULL".into(),
        shape: [ny, nx],
        bunit: "MJy/sr".into(),
        wcs: e.header_wcs.clone(),
        dt_bgr_days: None,
    }
}

fn instrume(i: Instrument) -> &'static str {
    match i {
        Instrument::Miri => "MIRI",
        _ => "NIRCAM",
    }
}

fn primary_cards(cfg: &SimulateConfig, survey: &Survey, e: &ExposurePlan) -> Vec<Card> {
    let (exp_type, channel) = match cfg.instrument {
        Instrument::NircamSw => ("NRC_IMAGE", "SHORT"),
        Instrument::NircamLw => ("NRC_IMAGE", "LONG"),
        Instrument::Miri => ("MIR_IMAGE", "N/A"),
    };
    let t_mid = e.expstart_mjd + 0.5 * e.effexptm_s / 86400.0;
    let mut c = vec![
        card_text("DATAMODL", "ImageModel", "type of data model"),
        card_text("TELESCOP", "JWST", "telescope used to acquire the data"),
        card_text("ORIGIN", "TESSERA", "simulated by tessera"),
        card_text("FILENAME", &e.file, "name of the file"),
        card_text("FILETYPE", "calibrated", "type of data in the file"),
        card_text("CAL_VER", "tessera-sim", "calibration software version"),
        card_text("INSTRUME", instrume(cfg.instrument), "instrument used to acquire the data"),
        card_text("DETECTOR", &e.detector, "name of detector used to acquire the data"),
        card_text("FILTER", &cfg.filter, "name of the filter element used"),
        card_text("PUPIL", "CLEAR", "name of the pupil element used"),
        card_text("EXP_TYPE", exp_type, "type of data in the exposure"),
        card_text("PROGRAM", survey::PROGRAM, "program number"),
        card_text("OBSERVTN", &e.observation, "observation number"),
        card_text("VISIT", &e.visit, "visit number"),
        card_text("VISITGRP", "02", "visit group identifier"),
        card_text("SEQ_ID", if e.is_off { "2" } else { "1" }, "parallel sequence identifier"),
        card_text("ACT_ID", if e.is_off { "02" } else { "01" }, "activity identifier"),
        card_text("EXPOSURE", &format!("{:05}", e.exposure), "exposure request number"),
        card_text(
            "TARGPROP",
            &if e.is_off { format!("{}_OFF", cfg.target) } else { cfg.target.clone() },
            "proposer's name for the target",
        ),
        card_real("EXPSTART", e.expstart_mjd, "[d] exposure start time in MJD"),
        card_real("EXPMID", t_mid, "[d] exposure mid time in MJD"),
        card_real("EXPEND", e.expstart_mjd + e.effexptm_s / 86400.0, "[d] exposure end time in MJD"),
        card_real("EFFEXPTM", e.effexptm_s, "[s] effective exposure time"),
        card_real("EXPTIME", e.effexptm_s, "[s] effective exposure time"),
        card_text("SUBARRAY", "FULL", "subarray used"),
        card_int("SUBSTRT1", 1, "starting pixel in axis 1 direction"),
        card_int("SUBSTRT2", 1, "starting pixel in axis 2 direction"),
        card_int("SUBSIZE1", survey.layout.shape[1] as i64, "number of pixels in axis 1 direction"),
        card_int("SUBSIZE2", survey.layout.shape[0] as i64, "number of pixels in axis 2 direction"),
        card_int("TSIMSEED", cfg.seed as i64, "tessera simulate seed"),
    ];
    if cfg.instrument != Instrument::Miri {
        c.push(card_text("CHANNEL", channel, "instrument channel"));
        c.push(card_text("MODULE", &e.module, "NIRCam module: A or B"));
    }
    c
}

fn write_truth(
    cfg: &SimulateConfig,
    survey: &Survey,
    scene: &Scene,
    truths: &[(ExposureTruth, Vec<CosmicRay>)],
    out: &Path,
    prov: &Provenance,
) -> crate::Result<()> {
    let tdir = out.join("truth");
    let centre = (survey.target_deg[0], survey.target_deg[1]);
    // truth sky on a north-up grid covering the science footprints
    let pts: Vec<crate::geom::SkyCoord> = survey
        .exposures
        .iter()
        .filter(|e| !e.is_off)
        .flat_map(|e| {
            let [ny, nx] = survey.layout.shape;
            [(-0.5, -0.5), (nx as f64 - 0.5, -0.5), (nx as f64 - 0.5, ny as f64 - 0.5), (-0.5, ny as f64 - 0.5)]
                .into_iter()
                .map(|(x, y)| {
                    let (ra, dec) = e.true_wcs.pixel_to_sky(x, y);
                    crate::geom::SkyCoord { ra_deg: ra, dec_deg: dec }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let scale = survey.layout.pixscale_arcsec * cfg.truth_pixscale_factor;
    let grid = OutputGrid::covering(&pts, scale, 8).context("truth grid")?;
    let gw = grid.wcs();
    let mut sky = Array2::<f32>::zeros((grid.ny, grid.nx));
    let rp = RenderParams { psf_fwhm_arcsec: survey.psf_fwhm_arcsec, pixel_integrate: true };
    scene::render(scene, &rp, sky.view_mut(), &pix_to_tan(&gw, centre), &tan_to_pix(&gw, centre));
    let mut cards = vec![
        card_text("BUNIT", "MJy/sr", "PSF-convolved truth sky, no background"),
        card_real("TOTFLUX", scene.total_flux_jy(), "[Jy] total flux of the scene"),
        card_real("PSFFWHM", survey.psf_fwhm_arcsec, "[arcsec] Gaussian PSF FWHM"),
    ];
    cards.extend(gw.to_cards());
    write_image(&tdir.join("truth_sky.fits"), &sky, &cards, &[])?;

    // point sources and the reference catalogue
    let mut sources = String::from("ra_deg,dec_deg,flux_jy,kind\n");
    let mut refcat = String::from("ra,dec\n");
    let mut rng = rng_for(cfg.seed, stream::CATALOG);
    let noise = Normal::new(0.0, cfg.catalog_noise_arcsec.max(1e-12)).expect("valid normal");
    for g in &scene.components {
        let (ra, dec) = tangent_arcsec_to_sky(centre, g.xi_arcsec, g.eta_arcsec);
        let kind = format!("{:?}", g.kind).to_lowercase();
        if matches!(g.kind, ComponentKind::Star | ComponentKind::Nucleus) {
            sources.push_str(&format!("{ra:.10},{dec:.10},{:.6e},{kind}\n", g.flux_jy));
            if matches!(g.kind, ComponentKind::Star) && rng.random::<f64>() < cfg.catalog_completeness {
                let (dx, dy) = (noise.sample(&mut rng), noise.sample(&mut rng));
                let (cra, cdec) = tangent_arcsec_to_sky(centre, g.xi_arcsec + dx, g.eta_arcsec + dy);
                refcat.push_str(&format!("{cra:.10},{cdec:.10}\n"));
            }
        }
    }
    crate::io::json::write_text(&tdir.join("sources.csv"), &sources)?;
    crate::io::json::write_text(&out.join("aux").join("refcat.csv"), &refcat)?;

    // cosmic rays
    let mut crcsv = String::from("file,hit,y,x,value_mjysr\n");
    for (t, crs) in truths {
        for (hit, cr) in crs.iter().enumerate() {
            for &(y, x, v) in &cr.pixels {
                crcsv.push_str(&format!("{},{hit},{y},{x},{v:.6}\n", t.file));
            }
        }
    }
    crate::io::json::write_text(&tdir.join("cosmic_rays.csv"), &crcsv)?;

    // PSF image at the native scale (Gaussian, unit sum)
    let psf_n = 41usize;
    let s = survey.layout.pixscale_arcsec;
    let sig = survey.psf_fwhm_arcsec / 2.354_820_045 / s;
    let c0 = (psf_n / 2) as f64;
    let mut psf = Array2::from_shape_fn((psf_n, psf_n), |(y, x)| {
        (-((x as f64 - c0).powi(2) + (y as f64 - c0).powi(2)) / (2.0 * sig * sig)).exp() as f32
    });
    let sum: f32 = psf.sum();
    psf.mapv_inplace(|v| v / sum);
    write_image(
        &out.join("aux").join(format!("psf_{}.fits", cfg.filter)),
        &psf,
        &[
            card_real("PIXELSCL", s, "[arcsec/pixel] pixel scale"),
            card_real("FWHM", survey.psf_fwhm_arcsec, "[arcsec]"),
        ],
        &[],
    )?;

    // wide-field reference images for `anchor` (IRAC/WISE-like, references.rs)
    let anchor = references::write_references(cfg, &scene_params(cfg, survey), scene, centre, &pts, out)?;
    // the PSF at 4x oversampling, stpsf-like (psfmatch)
    psf::write_oversampled_psf(&out.join("aux"), &cfg.filter, cfg.instrument, survey.psf_fwhm_arcsec, s)?;

    let truth = Truth {
        provenance: prov.clone(),
        config: cfg.clone(),
        target_deg: survey.target_deg,
        psf_fwhm_arcsec: survey.psf_fwhm_arcsec,
        total_flux_jy: scene.total_flux_jy(),
        visit_errors: survey.visit_errors.clone(),
        absolute_offset_arcsec: survey.absolute_offset_arcsec,
        absolute_rotation_deg: survey.absolute_rotation_deg,
        anchor,
        exposures: truths.iter().map(|t| t.0.clone()).collect(),
        truth_grid: grid,
    };
    crate::io::json::write_json(&tdir.join("truth.json"), &truth)?;
    Ok(())
}
