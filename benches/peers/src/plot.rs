//! The PNG: four panels of horizontal bars, one bar per system (medians
//! over runs). Green: the acknowledgement waits for fsync; orange: it does
//! not.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::med;
use crate::systems::System;
use crate::{Run, SystemRun};

/// Fonts tried in turn (Debian's fonts-dejavu-core ships the first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<()> {
    for f in FONTS {
        if let Ok(bytes) = std::fs::read(f) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| anyhow!("{f} is not a usable font"));
        }
    }
    Err(anyhow!("no font found (tried {}); apt-get install fonts-dejavu-core", FONTS.join(", ")))
}

type Metric = fn(&SystemRun) -> Option<f64>;

/// Draws `path`.
pub fn draw(path: &Path, systems: &[System], runs: &[Run]) -> Result<()> {
    register_font()?;
    let panels: [(&str, &str, Metric); 4] = [
        ("(1) durable publish, 4 × 64 in flight", "msgs/s", |s| s.publish.as_ref().map(|c| c.result.msgs_per_s)),
        ("(3) consume + manual ack, 4 consumers", "msgs/s", |s| s.consume.as_ref().map(|c| c.result.msgs_per_s)),
        ("(2) publish p99, one in flight", "ms", |s| s.latency.as_ref().map(|c| c.result.latency.p99_us / 1000.0)),
        ("(4) end-to-end p99 at 5 000 msgs/s", "ms", |s| s.e2e.as_ref().map(|c| c.result.e2e.p99_us / 1000.0)),
    ];
    let root = BitMapBackend::new(path, (1400, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(50);
    title
        .draw_text(
            "GMQ and its peers on one 2-vCPU machine, 1 KiB messages (medians; green: acknowledged after fsync)",
            &("sans-serif", 22).into_text_style(&title),
            (20, 15),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let areas = body.split_evenly((2, 2));
    for (area, (name, unit, metric)) in areas.iter().zip(panels) {
        let vals: Vec<(usize, f64, &System)> =
            systems.iter().enumerate().filter_map(|(i, s)| Some((i, med(runs, &s.key(), metric)?, s))).collect();
        let max = vals.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-9) * 1.25;
        let n = systems.len() as i32;
        // The first system on top.
        let labels: Vec<String> = systems.iter().rev().map(System::label).collect();
        let row = |i: usize| (systems.len() - 1 - i) as i32;
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..max, (0..n - 1).into_segmented())
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(unit)
            .x_label_formatter(&|x| if unit == "ms" { format!("{x:.1}") } else { gmq_benches::table::grouped(*x) })
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    labels.get(*i as usize).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, v, s) in &vals {
            let color = if s.fsyncs_before_ack() { RGBColor(46, 139, 87) } else { RGBColor(230, 140, 30) };
            let i = row(*i);
            chart
                .draw_series(Histogram::horizontal(&chart).style(color.filled()).margin(6).data([(i, *v)]))
                .map_err(|e| anyhow!("{e}"))?;
            let text = if unit == "ms" { format!("{v:.2}") } else { gmq_benches::table::grouped(*v) };
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (*v + max * 0.01, SegmentValue::CenterOf(i)),
                    TextStyle::from(("sans-serif", 13).into_font()).pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Left,
                        plotters::style::text_anchor::VPos::Center,
                    )),
                )))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
