//! A one-line progress display for `distillery train`, drawn on standard error.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use crate::ml::progress::{Observer, TrainEvent};

/// Draws progress events on standard error: one line redrawn in place on a terminal,
/// one line per epoch otherwise.
pub struct ProgressBar {
    enabled: bool,
    terminal: bool,
    drawn: Mutex<bool>,
}

impl ProgressBar {
    /// A bar that draws when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled, terminal: std::io::stderr().is_terminal(), drawn: Mutex::new(false) }
    }

    /// Ends the in-place line.
    pub fn finish(&self) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|e| e.into_inner());
        if *drawn {
            eprintln!();
            *drawn = false;
        }
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl Observer for ProgressBar {
    fn on_event(&self, event: &TrainEvent) {
        if !self.enabled {
            return;
        }
        let mut drawn = self.drawn.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        match event {
            TrainEvent::Progress(p) if self.terminal => {
                let width = 20;
                let filled = (p.fraction * width as f64).round() as usize;
                let bar: String = (0..width).map(|i| if i < filled { '#' } else { '.' }).collect();
                let _ = write!(
                    err,
                    "\r[{bar}] {:>3.0}% {:?} epoch {}/{} step {}/{} loss {:.4} {:.0} ex/s, {} left   ",
                    p.fraction * 100.0, p.phase, p.epoch, p.epochs, p.step, p.steps, p.loss.total,
                    p.examples_per_second, duration(p.eta_seconds)
                );
                let _ = err.flush();
                *drawn = true;
            }
            TrainEvent::Epoch(e) => {
                if *drawn {
                    let _ = writeln!(err);
                    *drawn = false;
                }
                let agreement =
                    e.agreement.map_or(String::new(), |a| format!(", agreement {a:.4}"));
                let _ = writeln!(
                    err,
                    "{:?} epoch {}: loss {:.4} (ce {:.4}, distill {:.4}), valid accuracy {:.4}, macro-F1 {:.4}{agreement}, {:.1}s, {:.0} ex/s{}",
                    e.phase, e.epoch, e.loss.total, e.loss.ce, e.loss.distill, e.valid_accuracy,
                    e.valid_macro_f1, e.seconds, e.examples_per_second, if e.best { " *" } else { "" }
                );
            }
            TrainEvent::PhaseFinished { phase, seconds } => {
                if *drawn {
                    let _ = writeln!(err);
                    *drawn = false;
                }
                let _ = writeln!(err, "{phase:?} done in {}", duration(*seconds));
            }
            _ => {}
        }
    }
}
