//! A small inline-SVG plotter: a time axis in seconds, a linear or log y axis, shaded fault
//! intervals, lines, points and lanes. Self-contained output (no scripts, no fonts fetched).

use std::fmt::Write;

/// Plot size in SVG user units (the page scales it to its width).
pub const WIDTH_PX: f64 = 1200.0;
const MARGIN_LEFT_PX: f64 = 70.0;
const MARGIN_RIGHT_PX: f64 = 150.0;
const MARGIN_TOP_PX: f64 = 22.0;
const MARGIN_BOTTOM_PX: f64 = 36.0;

/// Plots lower than this (the role lanes) get no fault labels: they would cover the lanes.
const BAND_LABEL_HEIGHT_MIN_PX: f64 = 150.0;
/// Points further apart than this on the time axis are not joined by a line.
pub const LINE_GAP_S: f64 = 1.6;
/// Fault labels take turns on this many rows, so that neighbouring ones do not overlap.
const BAND_LABEL_ROWS: usize = 3;
/// Height of one row of fault labels.
const BAND_LABEL_ROW_PX: f64 = 11.0;
/// Width of one character of a 10 px label, to keep labels inside the plot.
const LABEL_CHAR_PX: f64 = 5.6;

/// A shaded interval (a fault) on the time axis.
pub struct Band {
    pub from_s: f64,
    pub to_s: f64,
    pub color: &'static str,
    pub label: String,
}

pub struct Plot {
    pub height_px: f64,
    pub x_max_s: f64,
    pub y_min: f64,
    pub y_max: f64,
    pub log_y: bool,
    pub y_label: String,
    pub x_label: String,
    body: String,
    legend: Vec<(String, String)>,
}

impl Plot {
    pub fn new(height_px: f64, x_max_s: f64, y_min: f64, y_max: f64, log_y: bool) -> Plot {
        let y_max = if y_max > y_min { y_max } else { y_min + 1.0 };
        Plot {
            height_px,
            x_max_s: x_max_s.max(1.0),
            y_min,
            y_max,
            log_y,
            y_label: String::new(),
            x_label: "time (s)".to_string(),
            body: String::new(),
            legend: Vec::new(),
        }
    }

    fn inner_width(&self) -> f64 {
        WIDTH_PX - MARGIN_LEFT_PX - MARGIN_RIGHT_PX
    }
    fn inner_height(&self) -> f64 {
        self.height_px - MARGIN_TOP_PX - MARGIN_BOTTOM_PX
    }
    pub fn x(&self, seconds: f64) -> f64 {
        MARGIN_LEFT_PX + seconds.clamp(0.0, self.x_max_s) / self.x_max_s * self.inner_width()
    }
    pub fn y(&self, value: f64) -> f64 {
        let fraction = if self.log_y {
            let low = self.y_min.max(1e-9).log10();
            let high = self.y_max.max(1e-9).log10();
            (value.max(self.y_min).max(1e-9).log10() - low) / (high - low).max(1e-9)
        } else {
            (value - self.y_min) / (self.y_max - self.y_min)
        };
        MARGIN_TOP_PX + (1.0 - fraction.clamp(0.0, 1.0)) * self.inner_height()
    }

    /// Shades each band; on plots tall enough, labels it at its top, inside the plot area
    /// (a label that would run past the right edge ends at it instead of covering the legend),
    /// on rows taken in turn.
    pub fn bands(&mut self, bands: &[Band]) {
        let (top, height) = (MARGIN_TOP_PX, self.inner_height());
        let right = MARGIN_LEFT_PX + self.inner_width();
        for (index, band) in bands.iter().enumerate() {
            let (x0, x1) = (self.x(band.from_s), self.x(band.to_s));
            let label = escape(&band.label);
            let _ = write!(
                self.body,
                "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{height:.1}\" \
                 fill=\"{}\" fill-opacity=\"0.18\"><title>{label}</title></rect>",
                (x1 - x0).max(1.0),
                band.color,
            );
            if self.height_px >= BAND_LABEL_HEIGHT_MIN_PX {
                let width = band.label.chars().count() as f64 * LABEL_CHAR_PX;
                let x = (x0 + 2.0)
                    .min(right - 2.0 - width)
                    .max(MARGIN_LEFT_PX + 2.0);
                let row = (index % BAND_LABEL_ROWS) as f64;
                let _ = write!(
                    self.body,
                    "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{}\">{label}</text>",
                    top + 10.0 + row * BAND_LABEL_ROW_PX,
                    band.color,
                );
            }
        }
    }

    /// A polyline through `(seconds, value)` points, broken where two neighbours are more
    /// than `LINE_GAP_S` apart (no data there: a node down, no completions).
    pub fn line(&mut self, points: &[(f64, f64)], color: &str, dash: &str, label: &str) {
        if points.is_empty() {
            return;
        }
        let mut path = String::new();
        let mut previous_x = f64::NEG_INFINITY;
        for (x, y) in points {
            let command = if x - previous_x > LINE_GAP_S {
                'M'
            } else {
                'L'
            };
            previous_x = *x;
            let _ = write!(path, "{command}{:.1},{:.1}", self.x(*x), self.y(*y));
        }
        let _ = write!(
            self.body,
            "<path d=\"{path}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" \
             stroke-dasharray=\"{dash}\"/>"
        );
        self.legend_entry(label, color);
    }

    /// Points; `shape` is `circle`, `square` or `triangle`.
    pub fn points(&mut self, points: &[(f64, f64)], color: &str, shape: &str, label: &str) {
        for (x, y) in points {
            let (px, py) = (self.x(*x), self.y(*y));
            let _ = match shape {
                "square" => write!(
                    self.body,
                    r#"<rect x="{:.1}" y="{:.1}" width="3" height="3" fill="{color}"/>"#,
                    px - 1.5,
                    py - 1.5
                ),
                "triangle" => write!(
                    self.body,
                    r#"<path d="M{px:.1},{:.1}l2,3.4h-4z" fill="{color}"/>"#,
                    py - 2.0
                ),
                _ => write!(
                    self.body,
                    r#"<circle cx="{px:.1}" cy="{py:.1}" r="1.6" fill="{color}"/>"#
                ),
            };
        }
        if !points.is_empty() {
            self.legend_entry(label, color);
        }
    }

    /// A filled rectangle from `from_s` to `to_s` between values `low` and `high`.
    pub fn rect(&mut self, from_s: f64, to_s: f64, low: f64, high: f64, color: &str, title: &str) {
        let (x0, x1) = (self.x(from_s), self.x(to_s));
        let (y0, y1) = (self.y(high), self.y(low));
        let _ = write!(
            self.body,
            "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
             fill=\"{color}\"><title>{}</title></rect>",
            (x1 - x0).max(0.5),
            (y1 - y0).max(0.5),
            escape(title)
        );
    }

    pub fn text_left(&mut self, value: f64, text: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            MARGIN_LEFT_PX - 6.0,
            self.y(value) + 4.0,
            escape(text)
        );
    }

    pub fn legend_entry(&mut self, label: &str, color: &str) {
        if !label.is_empty() && !self.legend.iter().any(|(l, _)| l == label) {
            self.legend.push((label.to_string(), color.to_string()));
        }
    }

    /// The finished `<svg>` element with axes, grid and legend.
    pub fn render(&self, y_ticks: bool) -> String {
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH_PX} {h}\" \
             width=\"100%\" font-family=\"sans-serif\">",
            h = self.height_px
        );
        self.axes(&mut svg, y_ticks);
        svg.push_str(&self.body);
        let legend_x = WIDTH_PX - MARGIN_RIGHT_PX + 10.0;
        for (i, (label, color)) in self.legend.iter().enumerate() {
            let y = MARGIN_TOP_PX + 14.0 * i as f64;
            let _ = write!(
                svg,
                "<rect x=\"{legend_x}\" y=\"{y:.1}\" width=\"10\" height=\"10\" \
                 fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
                legend_x + 14.0,
                y + 9.0,
                escape(label)
            );
        }
        svg.push_str("</svg>");
        svg
    }

    fn axes(&self, svg: &mut String, y_ticks: bool) {
        let (left, top) = (MARGIN_LEFT_PX, MARGIN_TOP_PX);
        let (width, height) = (self.inner_width(), self.inner_height());
        let bottom = top + height;
        let _ = write!(
            svg,
            "<rect x=\"{left}\" y=\"{top}\" width=\"{width}\" height=\"{height}\" fill=\"#fff\" \
             stroke=\"#888\"/>"
        );
        let step = nice_step(self.x_max_s / 12.0);
        let ticks = (self.x_max_s / step + 1e-9).floor() as usize;
        for tick in 0..=ticks {
            let t = tick as f64 * step;
            let x = self.x(t);
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom}\" \
                 stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"11\" \
                 text-anchor=\"middle\">{}</text>",
                bottom + 14.0,
                format_tick(t)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            left + width / 2.0,
            bottom + 30.0,
            escape(&self.x_label)
        );
        let _ = write!(
            svg,
            "<text x=\"14\" y=\"{:.1}\" font-size=\"11\" transform=\"rotate(-90 14 {:.1})\" \
             text-anchor=\"middle\">{}</text>",
            top + height / 2.0,
            top + height / 2.0,
            escape(&self.y_label)
        );
        if y_ticks {
            for value in self.y_tick_values() {
                let y = self.y(value);
                let _ = write!(
                    svg,
                    "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" \
                     stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" \
                     text-anchor=\"end\">{}</text>",
                    left + width,
                    left - 4.0,
                    y + 4.0,
                    format_tick(value)
                );
            }
        }
    }

    fn y_tick_values(&self) -> Vec<f64> {
        if self.log_y {
            let mut values = Vec::new();
            let mut value = 10f64.powf(self.y_min.max(1e-9).log10().floor());
            while value <= self.y_max * 1.0001 {
                if value >= self.y_min * 0.9999 {
                    values.push(value);
                }
                value *= 10.0;
            }
            values
        } else {
            let step = nice_step((self.y_max - self.y_min) / 6.0);
            let mut values = Vec::new();
            let mut value = (self.y_min / step).ceil() * step;
            while value <= self.y_max + 1e-9 {
                values.push(value);
                value += step;
            }
            values
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

fn format_tick(value: f64) -> String {
    if value == 0.0 || (value >= 1.0 && value.fract() == 0.0) {
        format!("{value:.0}")
    } else {
        // 0.001, not 0.0010000000000000002 (a power of ten computed by repeated products).
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_labels_stay_inside_the_plot_clear_of_the_legend() {
        let mut plot = Plot::new(300.0, 60.0, 0.0, 10.0, false);
        let label = "partition isolate-leader n1,n2,n3".to_string();
        let band = |from_s: f64| Band {
            from_s,
            to_s: from_s + 5.0,
            color: "#d62728",
            label: label.clone(),
        };
        plot.bands(&[band(50.0), band(58.0)]);
        plot.line(&[(0.0, 1.0), (60.0, 2.0)], "#000", "", "ops");
        let svg = plot.render(true);
        let right = WIDTH_PX - MARGIN_RIGHT_PX;
        let mut rows = Vec::new();
        for text in svg.split("<text x=\"").skip(1) {
            if !text
                .split('>')
                .nth(1)
                .is_some_and(|body| body.starts_with(&label))
            {
                continue;
            }
            let mut numbers = text.split('"');
            let x: f64 = numbers.next().unwrap().parse().unwrap();
            let y: f64 = numbers.nth(1).unwrap().parse().unwrap();
            let end = x + label.chars().count() as f64 * LABEL_CHAR_PX;
            assert!(end <= right, "label ends at {end}, the plot at {right}");
            rows.push(y);
        }
        assert_eq!(rows.len(), 2);
        assert_ne!(rows[0], rows[1], "neighbouring labels share a row");
    }

    #[test]
    fn axes_map_into_the_plot_area_and_steps_are_nice() {
        let plot = Plot::new(300.0, 60.0, 1.0, 1000.0, true);
        assert!(plot.y(1000.0) < plot.y(10.0) && plot.y(10.0) < plot.y(1.0));
        assert_eq!(plot.x(0.0), MARGIN_LEFT_PX);
        assert_eq!(plot.x(120.0), plot.x(60.0));
        assert_eq!(plot.y_tick_values(), vec![1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(nice_step(4.2), 5.0);
        assert_eq!(nice_step(0.13), 0.2);
        let svg = plot.render(true);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(format_tick(0.1 * 0.1 * 0.1), "0.001");
        assert_eq!(escape("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
