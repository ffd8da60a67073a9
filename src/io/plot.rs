//! Diagnostic pictures (PNG): image panels and simple charts, drawn with `plotters` into an RGB
//! buffer and encoded with `image`, written atomically like every other product.
//!
//! Text needs a TrueType font, loaded once at run time: `$TESSERA_FONT`, else DejaVu Sans or GNU
//! FreeSans from the usual Debian, Fedora and macOS places (`scripts/setup-system` installs
//! `fonts-dejavu-core`). Without a font the pictures are drawn without text and a warning says why.
//!
//! Arrays are `[y, x]` with row 0 at the bottom, as in FITS (`origin='lower'`).

use super::{write_atomic, IoError};
use ndarray::ArrayView2;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Width in pixels of one image panel or one chart.
const PANEL_PX: u32 = 420;
/// Height of the title strip above a figure's panels.
const TITLE_PX: u32 = 34;

/// One image panel of [`image_panels`].
pub struct Panel<'a> {
    pub title: String,
    pub data: ArrayView2<'a, f32>,
    /// Display range (values below/above are clipped); `None` = 1st to 99th percentile.
    pub range: Option<(f32, f32)>,
}

/// One data series of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

/// How a chart draws its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Points (scatter).
    Points,
    /// Lines joining consecutive points (e.g. binned histograms).
    Lines,
}

/// One chart of [`charts`].
#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub xlabel: String,
    pub ylabel: String,
    pub style: Style,
    pub series: Vec<Series>,
}

/// Whether a font is registered for text (loaded once per process).
fn font_loaded() -> bool {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("TESSERA_FONT").map(PathBuf::from).into_iter().collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
                "/Library/Fonts/Arial.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
            ]
            .map(PathBuf::from),
        );
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the process; one leak per process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Some(path);
                }
            }
        }
        tracing::warn!(
            "no TrueType font found (set TESSERA_FONT or install fonts-dejavu-core): PNGs are drawn without text"
        );
        None
    })
    .is_some()
}

fn plot_err(path: &Path, what: impl std::fmt::Display) -> IoError {
    IoError::Format { path: path.to_path_buf(), message: format!("drawing the PNG: {what}") }
}

/// Render `width x height` RGB pixels with `draw` and write them as a PNG at `path` (atomically).
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<(), IoError> {
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root).map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_atomic(path, |tmp| {
        image::save_buffer_with_format(tmp, &buf, width, height, image::ColorType::Rgb8, image::ImageFormat::Png)
            .map_err(|e| plot_err(path, e))
    })
}

/// The `q`-quantile (0..1) of the finite values (`None` when there are none).
fn quantile(values: &mut [f32], q: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    let k = ((values.len() - 1) as f64 * q).round() as usize;
    Some(*values.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1)
}

/// `v` with about three significant digits, for panel titles.
fn short(v: f32) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else {
        format!("{v:.*}", (2 - a.max(1e-3).log10().floor() as i32).clamp(0, 5) as usize)
    }
}

/// The default display range of `data`: its 1st and 99th percentiles (finite values only).
pub fn display_range(data: ArrayView2<f32>) -> (f32, f32) {
    let mut v: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    let lo = quantile(&mut v, 0.01).unwrap_or(0.0);
    let hi = quantile(&mut v, 0.99).unwrap_or(1.0);
    if hi > lo {
        (lo, hi)
    } else {
        (lo, lo + 1.0)
    }
}

/// A display range for a difference image: its median +- `nsigma` robust standard deviations
/// (1.4826 x the median absolute deviation), finite values only, so that faint stripes show and a
/// few bright residuals (stars, edges) do not set the scale.
pub fn robust_range(data: ArrayView2<f32>, nsigma: f32) -> (f32, f32) {
    let mut v: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    let Some(med) = quantile(&mut v, 0.5) else { return (0.0, 1.0) };
    let mut dev: Vec<f32> = v.iter().map(|x| (x - med).abs()).collect();
    let s = 1.4826 * quantile(&mut dev, 0.5).unwrap_or(0.0);
    if s > 0.0 {
        (med - nsigma * s, med + nsigma * s)
    } else {
        display_range(data)
    }
}

/// A figure of image panels side by side (e.g. data, model, corrected), each scaled to fit
/// [`PANEL_PX`] with its own display range and a viridis colour map. NaN pixels are grey.
///
/// # Errors
/// [`IoError`] naming `path` when drawing or writing fails.
pub fn image_panels(path: &Path, title: &str, panels: &[Panel]) -> Result<(), IoError> {
    let text = font_loaded();
    let n = panels.len().max(1) as u32;
    let max_aspect =
        panels.iter().map(|p| p.data.nrows() as f64 / p.data.ncols().max(1) as f64).fold(0.1f64, f64::max).min(4.0);
    let panel_h = (PANEL_PX as f64 * max_aspect).ceil() as u32;
    let label_px = if text { 22 } else { 0 };
    let size = (PANEL_PX * n, panel_h + TITLE_PX + label_px);
    render(path, size, |root| {
        let body = if text {
            root.titled(title, ("sans-serif", 22)).map_err(|e| e.to_string())?
        } else {
            root.margin(TITLE_PX, 0, 0, 0)
        };
        for (area, panel) in body.split_evenly((1, panels.len().max(1))).iter().zip(panels) {
            let (ny, nx) = panel.data.dim();
            let (lo, hi) = panel.range.unwrap_or_else(|| display_range(panel.data));
            let area = if text {
                area.titled(&format!("{}  [{}, {}]", panel.title, short(lo), short(hi)), ("sans-serif", 15))
                    .map_err(|e| e.to_string())?
            } else {
                area.clone()
            };
            let (w, h) = area.dim_in_pixel();
            if nx == 0 || ny == 0 || w == 0 || h == 0 {
                continue;
            }
            // One screen pixel per display pixel, sampled at its centre (nearest input pixel).
            let scale = (nx as f64 / w as f64).max(ny as f64 / h as f64);
            let (dw, dh) = ((nx as f64 / scale) as u32, (ny as f64 / scale) as u32);
            for sy in 0..dh {
                let y = ny - 1 - (((sy as f64 + 0.5) * scale) as usize).min(ny - 1);
                for sx in 0..dw {
                    let x = (((sx as f64 + 0.5) * scale) as usize).min(nx - 1);
                    let v = panel.data[[y, x]];
                    let colour = if v.is_finite() {
                        ViridisRGB::get_color_normalized(v.clamp(lo, hi), lo, hi)
                    } else {
                        RGBColor(128, 128, 128)
                    };
                    area.draw_pixel((sx as i32, sy as i32), &colour).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    })
}

/// A figure of charts side by side, each with its own axes, fitted to the data.
///
/// # Errors
/// [`IoError`] naming `path` when drawing or writing fails.
pub fn charts(path: &Path, title: &str, charts: &[Chart]) -> Result<(), IoError> {
    let text = font_loaded();
    let n = charts.len().max(1) as u32;
    render(path, (PANEL_PX * 3 / 2 * n, PANEL_PX + TITLE_PX), |root| {
        let body = if text {
            root.titled(title, ("sans-serif", 22)).map_err(|e| e.to_string())?
        } else {
            root.margin(TITLE_PX, 0, 0, 0)
        };
        for (area, chart) in body.split_evenly((1, charts.len().max(1))).iter().zip(charts) {
            draw_chart(area, chart, text).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// The padded `[min, max]` of finite values (a unit interval around a constant).
fn axis_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5f64.max(lo.abs() * 0.1) };
    (lo - pad)..(hi + pad)
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn draw_chart(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    chart: &Chart,
    text: bool,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let xr = axis_range(chart.series.iter().flat_map(|s| s.x.iter().copied()));
    let yr = axis_range(chart.series.iter().flat_map(|s| s.y.iter().copied()));
    let mut builder = ChartBuilder::on(area);
    builder.margin(12);
    if text {
        builder.caption(&chart.title, ("sans-serif", 16)).x_label_area_size(40).y_label_area_size(64);
    }
    let mut ctx = builder.build_cartesian_2d(xr, yr).map_err(|x| e(&x))?;
    if text {
        ctx.configure_mesh()
            .x_desc(&chart.xlabel)
            .y_desc(&chart.ylabel)
            .label_style(("sans-serif", 13))
            .light_line_style(WHITE)
            .draw()
            .map_err(|x| e(&x))?;
    }
    for (k, s) in chart.series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let points = s.x.iter().zip(&s.y).map(|(&x, &y)| (x, y)).filter(|(x, y)| x.is_finite() && y.is_finite());
        let drawn = match chart.style {
            Style::Points => ctx.draw_series(points.map(|p| Circle::new(p, 2, colour.filled()))),
            Style::Lines => ctx.draw_series(LineSeries::new(points, colour.stroke_width(2))),
        }
        .map_err(|x| e(&x))?;
        if text && !s.label.is_empty() {
            drawn
                .label(s.label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 12, y + 4)], colour.filled()));
        }
    }
    if text && chart.series.iter().any(|s| !s.label.is_empty()) {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

/// The counts of `values` in `bins` equal bins over `range` (default: the finite min..max), as a
/// step-shaped line series (bin edges on x) for a [`Style::Lines`] chart.
pub fn histogram_series(label: &str, values: &[f64], bins: usize, range: Option<(f64, f64)>) -> Series {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = range.unwrap_or_else(|| {
        let r = finite.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if r.0.is_finite() && r.1 > r.0 {
            r
        } else {
            (r.0.min(0.0), r.0.max(0.0) + 1.0)
        }
    });
    let bins = bins.max(1);
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for v in finite.filter(|v| *v >= lo && *v <= hi) {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let (mut x, mut y) = (vec![lo], vec![0.0]);
    for (k, &c) in counts.iter().enumerate() {
        x.extend([lo + k as f64 * width, lo + (k + 1) as f64 * width]);
        y.extend([c as f64, c as f64]);
    }
    x.push(hi);
    y.push(0.0);
    Series { label: label.to_string(), x, y }
}

/// One scatter chart (see [`charts`]).
///
/// # Errors
/// As [`charts`].
pub fn scatter(path: &Path, title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> Result<(), IoError> {
    let chart = Chart {
        title: String::new(),
        xlabel: xlabel.into(),
        ylabel: ylabel.into(),
        style: Style::Points,
        series: series.to_vec(),
    };
    charts(path, title, &[chart])
}

/// One chart of overlaid histograms, `bins` bins over the common range of all values.
///
/// # Errors
/// As [`charts`].
pub fn histograms(
    path: &Path,
    title: &str,
    xlabel: &str,
    hists: &[(String, Vec<f64>)],
    bins: usize,
) -> Result<(), IoError> {
    let all = hists.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite());
    let range = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let range = (range.0.is_finite() && range.1 > range.0).then_some(range);
    let series = hists.iter().map(|(label, v)| histogram_series(label, v, bins, range)).collect();
    let chart =
        Chart { title: String::new(), xlabel: xlabel.into(), ylabel: "count".into(), style: Style::Lines, series };
    charts(path, title, &[chart])
}

/// One binned median of [`line_fit_figure`]: position, median, the 16th and 84th percentiles, and
/// whether the fit kept it.
#[derive(Clone, Copy, Debug)]
pub struct BinPoint {
    pub x: f64,
    pub y: f64,
    pub y_lo: f64,
    pub y_hi: f64,
    pub used: bool,
}

/// A scatter of pixel pairs (grey), binned medians with their 16-84% range (red; rejected ones
/// hollow), and a fitted line `y = slope x + intercept` (dashed grey) with `notes` written in the
/// top left: the layout of the PHANGS-JWST paper's Figure 8 (the anchoring fit).
///
/// # Errors
/// As [`charts`].
#[allow(clippy::too_many_arguments)]
pub fn line_fit_figure(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    points: (&[f64], &[f64]),
    bins: &[BinPoint],
    line: (f64, f64),
    notes: &[String],
) -> Result<(), IoError> {
    let text = font_loaded();
    render(path, (PANEL_PX * 3 / 2, PANEL_PX + TITLE_PX), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let body = if text {
            root.titled(title, ("sans-serif", 20)).map_err(|x| e(&x))?
        } else {
            root.margin(TITLE_PX, 0, 0, 0)
        };
        let xs = points.0.iter().copied().chain(bins.iter().map(|b| b.x));
        let ys = bins.iter().flat_map(|b| [b.y_lo, b.y_hi]);
        let xr = axis_range(xs);
        // y from the binned range (the pixels' tails would squash the medians), widened to hold the line
        let yl = [xr.start, xr.end].map(|x| line.0 * x + line.1);
        let yr = axis_range(ys.chain(yl));
        let mut builder = ChartBuilder::on(&body);
        builder.margin(12);
        if text {
            builder.x_label_area_size(40).y_label_area_size(64);
        }
        let mut ctx = builder.build_cartesian_2d(xr.clone(), yr.clone()).map_err(|x| e(&x))?;
        if text {
            ctx.configure_mesh()
                .x_desc(xlabel)
                .y_desc(ylabel)
                .label_style(("sans-serif", 13))
                .light_line_style(WHITE)
                .draw()
                .map_err(|x| e(&x))?;
        }
        let grey = RGBColor(150, 150, 150);
        let inside = |x: f64, y: f64| x.is_finite() && y.is_finite() && yr.contains(&y) && xr.contains(&x);
        ctx.draw_series(
            points
                .0
                .iter()
                .zip(points.1)
                .filter(|(x, y)| inside(**x, **y))
                .map(|(&x, &y)| Circle::new((x, y), 1, grey.filled())),
        )
        .map_err(|x| e(&x))?;
        let red = RGBColor(214, 39, 40);
        for b in bins {
            ctx.draw_series(std::iter::once(PathElement::new(vec![(b.x, b.y_lo), (b.x, b.y_hi)], red.stroke_width(1))))
                .map_err(|x| e(&x))?;
            let style = if b.used { red.filled() } else { red.stroke_width(1) };
            ctx.draw_series(std::iter::once(Circle::new((b.x, b.y), 4, style))).map_err(|x| e(&x))?;
        }
        // dashed line: short segments
        let n = 40;
        let segs = (0..n).step_by(2).map(|k| {
            let x0 = xr.start + (xr.end - xr.start) * k as f64 / n as f64;
            let x1 = xr.start + (xr.end - xr.start) * (k + 1) as f64 / n as f64;
            PathElement::new(
                vec![(x0, line.0 * x0 + line.1), (x1, line.0 * x1 + line.1)],
                BLACK.mix(0.6).stroke_width(2),
            )
        });
        ctx.draw_series(segs).map_err(|x| e(&x))?;
        if text {
            for (k, note) in notes.iter().enumerate() {
                body.draw(&Text::new(note.as_str(), (80, 20 + 18 * k as i32), ("sans-serif", 14)))
                    .map_err(|x| e(&x))?;
            }
        }
        Ok(())
    })
}

/// Write an 8-bit PNG of `width` x `height` pixels, `channels` = 1 (grey) or 3 (RGB), rows top first,
/// atomically (the release's quick-look images).
///
/// # Errors
/// [`IoError`] naming the file.
pub fn write_png(path: &Path, width: usize, height: usize, channels: usize, pixels: &[u8]) -> Result<(), IoError> {
    assert_eq!(pixels.len(), width * height * channels, "pixel buffer size");
    let colour = match channels {
        1 => image::ColorType::L8,
        3 => image::ColorType::Rgb8,
        n => panic!("{n} channels: 1 or 3"),
    };
    write_atomic(path, |tmp| {
        image::save_buffer_with_format(tmp, pixels, width as u32, height as u32, colour, image::ImageFormat::Png)
            .map_err(|e| plot_err(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn robust_range_ignores_a_bright_residual() {
        // sorted 1 2 3 4 5 1000 (+ a NaN, ignored): median (upper of the middle pair) 4; absolute
        // deviations 0 1 1 2 3 996, their median 2; sigma = 1.4826 * 2
        let d = Array2::from_shape_vec((1, 7), vec![5.0, 1.0, 1000.0, 3.0, f32::NAN, 2.0, 4.0]).unwrap();
        let (lo, hi) = robust_range(d.view(), 4.0);
        let s = 1.4826f32 * 2.0;
        assert!((lo - (4.0 - 4.0 * s)).abs() < 1e-5 && (hi - (4.0 + 4.0 * s)).abs() < 1e-5, "{lo} {hi}");
        // and a constant image falls back to the percentile range
        let c = Array2::from_elem((2, 2), 3.0f32);
        assert_eq!(robust_range(c.view(), 4.0), display_range(c.view()));
    }

    /// Decode a written PNG back to RGB.
    fn read_png(path: &Path) -> image::RgbImage {
        image::open(path).expect("PNG decodes").to_rgb8()
    }

    #[test]
    fn histogram_series_counts_every_value_once() {
        let values: Vec<f64> = (0..1000).map(|k| (k % 10) as f64 + 0.5).collect();
        let s = histogram_series("h", &values, 10, Some((0.0, 10.0)));
        // step shape: (lo,0), then two points per bin, then (hi,0)
        assert_eq!(s.x.len(), 2 + 2 * 10);
        let counts: Vec<f64> = s.y[1..s.y.len() - 1].iter().step_by(2).copied().collect();
        assert_eq!(counts, vec![100.0; 10]);
        assert_eq!(s.x[1], 0.0);
        assert_eq!(s.x[s.x.len() - 2], 10.0);
    }

    #[test]
    fn display_range_is_the_1st_and_99th_percentile() {
        let a = Array2::from_shape_fn((10, 101), |(y, x)| if y == 0 && x == 0 { f32::NAN } else { x as f32 });
        let (lo, hi) = display_range(a.view());
        assert!((lo - 1.0).abs() <= 1.0 && (hi - 99.0).abs() <= 1.0, "{lo} {hi}");
    }

    #[test]
    fn image_panels_write_a_png_with_the_colour_map_and_origin_lower() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("panels.png");
        // a ramp bright at the top (high row index) and a NaN block
        let mut a = Array2::from_shape_fn((64, 64), |(y, _)| y as f32);
        a.slice_mut(ndarray::s![0..8, 0..8]).fill(f32::NAN);
        let panels = [
            Panel { title: "ramp".into(), data: a.view(), range: Some((0.0, 63.0)) },
            Panel { title: "same".into(), data: a.view(), range: None },
        ];
        image_panels(&path, "test", &panels).unwrap();
        let img = read_png(&path);
        assert_eq!(img.width(), 2 * PANEL_PX);
        // no temporary left beside it
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // find the panel's pixels: the first column of the first panel that is not white
        let rgb = |c: RGBColor| [c.0, c.1, c.2];
        let high = rgb(ViridisRGB::get_color_normalized(63.0f32, 0.0, 63.0));
        let low = rgb(ViridisRGB::get_color_normalized(0.0f32, 0.0, 63.0));
        let top = (0..img.height()).find(|&y| img.get_pixel(PANEL_PX / 2, y).0 == high);
        let bottom = (0..img.height()).rev().find(|&y| img.get_pixel(PANEL_PX / 2, y).0 == low);
        let (top, bottom) = (top.expect("yellow (high) row"), bottom.expect("purple (low) row"));
        assert!(top < bottom, "row 0 must be drawn at the bottom: yellow at {top}, purple at {bottom}");
        // the NaN block is grey, at the lower left
        let grey = (0..img.height()).rev().any(|y| img.get_pixel(2, y).0 == [128, 128, 128]);
        assert!(grey);
    }

    #[test]
    fn charts_write_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let s = Series { label: "a".into(), x: vec![0.0, 1.0, 2.0], y: vec![1.0, f64::NAN, 3.0] };
        scatter(&path, "scatter", "x", "y", &[s]).unwrap();
        let img = read_png(&path);
        assert_eq!((img.width(), img.height()), (PANEL_PX * 3 / 2, PANEL_PX + TITLE_PX));
        // something other than white was drawn
        assert!(img.pixels().any(|p| p.0 != [255, 255, 255]));
        histograms(&dir.path().join("h.png"), "h", "v", &[("x".into(), vec![1.0, 2.0, 2.0])], 4).unwrap();
    }
}
