//! `bench/latest.png`: where a picture says more than the tables. Left, micro: ns per packet
//! against the number of prefixes, beside the no-op. Right, on the 6.12 VM: sender CPU per
//! datagram against the number of filters (netem behind u32) or rules (chaos), relative to no
//! qdisc: netem's cost grows with its filters, chaos's does not.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use crate::report::Section;

/// Debian's fonts-dejavu-core (xtask bench installs it).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn data<'a>(sections: &'a [Section], id: &str) -> Option<&'a Value> {
    sections
        .iter()
        .find(|s| s.id == id)
        .map(|s| &s.data)
        .filter(|d| d.get("skipped").is_none() && d.get("error").is_none())
}

type Series = (String, RGBColor, Vec<(f64, f64)>);

fn micro_series(micro: &Value) -> Vec<Series> {
    let cases = micro["cases"].as_array().cloned().unwrap_or_default();
    let pick = |family: &str, kind: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = cases
            .iter()
            .filter(|c| {
                c["family"] == family
                    && c["kind"] == kind
                    && c["path"] == "hit-pass"
                    && (c["rules"] == 64 || kind == "networks")
            })
            .filter_map(|c| Some((c["prefixes"].as_f64()?, c["median_ns"].as_f64()?)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let noop = micro["noop_ns"].as_f64().unwrap_or(0.0);
    vec![
        ("IPv4 hosts, 64 rules".into(), RED, pick("ipv4", "hosts")),
        ("IPv6 hosts, 64 rules".into(), BLUE, pick("ipv6", "hosts")),
        (
            "IPv4 networks, 1 rule".into(),
            GREEN,
            pick("ipv4", "networks"),
        ),
        (
            "no-op program".into(),
            BLACK,
            vec![(1.0, noop), (60_000.0, noop)],
        ),
    ]
}

fn vm_series(vm: &Value) -> Vec<Series> {
    let configs = vm["cost"]["configs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pick = |prefix: &str, x: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = configs
            .iter()
            .filter(|c| c["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
            .filter_map(|c| Some((c[x].as_f64()?, c["ratio_fastest"].as_f64()?)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    vec![
        (
            "netem behind N u32 filters".into(),
            RED,
            pick("netem-u32-", "filters"),
        ),
        ("chaos with N rules".into(), BLUE, pick("chaos-", "rules")),
    ]
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    if points.is_empty() {
        return Err(format!("{title}: nothing to plot"));
    }
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for (label, color, pts) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(e)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)
}

/// Draws what the sections measured; an error says why there is no picture.
pub fn draw(sections: &[Section], path: &Path) -> Result<(), String> {
    let font = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e}"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{FONT}: not a usable font"))?;
    let micro = data(sections, "micro");
    let vm = data(sections, "vm");
    if micro.is_none() && vm.is_none() {
        return Err("neither the micro nor the vm section ran".into());
    }
    let root = BitMapBackend::new(path, (1400, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(700);
    if let Some(micro) = micro {
        panel(
            &left,
            "BPF_PROG_TEST_RUN: ns per packet (hit, pass)",
            "prefixes in the rule set",
            "ns per packet",
            &micro_series(micro),
        )?;
    }
    if let Some(vm) = vm {
        panel(
            &right,
            "6.12 VM: sender CPU per datagram, × no qdisc",
            "filters (netem) or rules (chaos)",
            "× no qdisc",
            &vm_series(vm),
        )?;
    }
    root.present().map_err(|e| e.to_string())
}
