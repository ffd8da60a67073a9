//! Progress lines on rank 0: stage, items done, throughput and ETA, at most every few seconds,
//! as plain lines that read well in a batch job's log.

use std::time::Instant;

/// A progress reporter for one stage. Only rank 0 prints.
pub struct Progress {
    stage: &'static str,
    unit: &'static str,
    total: usize,
    done: usize,
    mpix: f64,
    start: Instant,
    last: Instant,
    interval_s: f64,
    enabled: bool,
}

impl Progress {
    /// A reporter for `total` items of `unit` (e.g. "exposures").
    pub fn new(stage: &'static str, unit: &'static str, total: usize, interval_s: f64, enabled: bool) -> Progress {
        let now = Instant::now();
        Progress { stage, unit, total, done: 0, mpix: 0.0, start: now, last: now, interval_s, enabled }
    }

    /// Count `n` more items covering `mpix` megapixels (0 when not counted: no rate is printed);
    /// prints if the interval has passed.
    pub fn add(&mut self, n: usize, mpix: f64) {
        self.done += n;
        self.mpix += mpix;
        if self.enabled && self.last.elapsed().as_secs_f64() >= self.interval_s {
            self.last = Instant::now();
            tracing::info!("{}", self.line());
        }
    }

    /// The current progress line.
    pub fn line(&self) -> String {
        let t = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = if self.mpix > 0.0 { format!(", {:.1} Mpix/s", self.mpix / t) } else { String::new() };
        let eta = if self.done > 0 && self.done < self.total {
            format!(", ETA {:.0} s", t / self.done as f64 * (self.total - self.done) as f64)
        } else {
            String::new()
        };
        format!("[{}] {}/{} {}{rate}{eta}", self.stage, self.done, self.total, self.unit)
    }

    /// Print the final line.
    pub fn finish(&self) {
        if self.enabled {
            tracing::info!("{} in {:.1} s", self.line(), self.start.elapsed().as_secs_f64());
        }
    }
}
