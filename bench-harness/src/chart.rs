//! SVG charts for the compare reports, drawn with plotters' SVG backend: the latency CDF (latency
//! on a log axis, since tails span orders of magnitude) and throughput per second over the run.

use crate::BenchError;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (900, 520);

fn chart_error(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |message| BenchError::Chart(format!("{}: {message}", path.display()))
}

/// Series `index`'s line, in its palette colour, with its legend entry.
fn line<'a, CT>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    index: usize,
    label: &str,
    points: Vec<CT::From>,
) -> Result<(), String>
where
    CT: CoordTranslate,
    CT::From: Clone + 'static,
{
    let color = Palette99::pick(index).to_rgba();
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

/// The legend, then the file written.
fn finish<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    root: &DrawingArea<SVGBackend<'a>, Shift>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// One line per series: the fraction of requests at or below each latency. `series` holds
/// (label, histogram buckets as (highest equivalent µs, count)).
pub fn latency_cdf(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(u64, u64)>)],
) -> Result<(), BenchError> {
    let error = chart_error(path);
    let max_us = series
        .iter()
        .filter_map(|(_, buckets)| buckets.last().map(|&(value, _)| value))
        .max()
        .unwrap_or(1)
        .max(10);
    let min_us = series
        .iter()
        .filter_map(|(_, buckets)| buckets.first().map(|&(value, _)| value))
        .min()
        .unwrap_or(1)
        .clamp(1, max_us / 2);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min_us..max_us * 2).log_scale(), 0.0..1.0)
        .map_err(|e| error(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(|e| error(e.to_string()))?;
    for (index, (label, buckets)) in series.iter().enumerate() {
        let total: u64 = buckets.iter().map(|&(_, count)| count).sum();
        if total == 0 {
            continue;
        }
        let mut seen = 0;
        let points: Vec<(u64, f64)> = buckets
            .iter()
            .map(|&(value, count)| {
                seen += count;
                (value.max(min_us), seen as f64 / total as f64)
            })
            .collect();
        line(&mut chart, index, label, points).map_err(&error)?;
    }
    finish(&mut chart, &root).map_err(error)
}

/// One line per series: successful requests completed in each second of the run.
pub fn throughput(
    path: &Path,
    title: &str,
    series: &[(String, Vec<u64>)],
) -> Result<(), BenchError> {
    throughput_with_windows(path, title, series, &[])
}

/// `throughput`, with each (label, start s, end s) window shaded in its series' colour.
pub fn throughput_with_windows(
    path: &Path,
    title: &str,
    series: &[(String, Vec<u64>)],
    windows: &[(String, f64, f64)],
) -> Result<(), BenchError> {
    let error = chart_error(path);
    let seconds = series
        .iter()
        .map(|(_, timeline)| timeline.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let peak = series
        .iter()
        .flat_map(|(_, timeline)| timeline.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..seconds, 0..peak + peak / 10 + 1)
        .map_err(|e| error(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc("successful requests per second")
        .draw()
        .map_err(|e| error(e.to_string()))?;
    let top = peak + peak / 10 + 1;
    for (index, (label, start_s, end_s)) in windows.iter().enumerate() {
        let color = Palette99::pick(index).mix(0.2);
        // Whole seconds, at least one wide, so a short window still shows.
        let start = start_s.max(0.0).floor() as usize;
        let end = (end_s.max(0.0).ceil() as usize).max(start + 1);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(start, 0), (end, top)],
                color.filled(),
            )))
            .map_err(|e| error(e.to_string()))?
            .label(label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.filled()));
    }
    for (index, (label, timeline)) in series.iter().enumerate() {
        let points: Vec<(usize, u64)> = timeline.iter().copied().enumerate().collect();
        line(&mut chart, index, label, points).map_err(&error)?;
    }
    finish(&mut chart, &root).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_every_label() {
        let dir = tempfile::tempdir().unwrap();
        let cdf = dir.path().join("cdf.svg");
        let series = vec![
            ("ringkv".to_owned(), vec![(100, 5), (250, 4), (9000, 1)]),
            ("etcd".to_owned(), vec![(300, 9), (1200, 1)]),
        ];
        latency_cdf(&cdf, "put latency", &series).unwrap();
        let svg = std::fs::read_to_string(&cdf).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for text in ["put latency", "ringkv", "etcd", "log scale"] {
            assert!(svg.contains(text), "no {text} in the CDF");
        }

        let over_time = dir.path().join("throughput.svg");
        let series = vec![
            ("ringkv r1".to_owned(), vec![10, 12, 9]),
            ("etcd r1".to_owned(), vec![]),
        ];
        throughput(&over_time, "put throughput", &series).unwrap();
        let svg = std::fs::read_to_string(&over_time).unwrap();
        assert!(svg.contains("ringkv r1") && svg.contains("etcd r1"));

        let windows = vec![("ringkv r1 defrag".to_owned(), 0.5, 1.2)];
        throughput_with_windows(&over_time, "defrag", &series, &windows).unwrap();
        let svg = std::fs::read_to_string(&over_time).unwrap();
        assert!(svg.contains("ringkv r1 defrag"), "no window label");
    }
}
