//! A self-contained HTML page for a violation: one lane per process on an event axis around the
//! first anomaly, the anomaly's operations outlined, a cycle drawn as numbered arrows routed
//! through a band below the lanes (so no arrow or label lies over an operation's text) and
//! explained in a table, or the failed linearization numbered. Labels are cut to their box.
//! Inline SVG and CSS only, so it opens without a network.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use crate::history::{History, Outcome};
use crate::report::{Anomaly, Report};

/// Events shown before the first and after the last operation of the anomaly.
const CONTEXT_EVENTS: usize = 24;
/// Operations drawn at most (the anomaly's own always are).
const DRAWN_CALLS_MAX: usize = 300;
const LANE_HEIGHT_PX: usize = 30;
const MARGIN_LEFT_PX: usize = 90;
const TIMELINE_WIDTH_PX: usize = 1400;
const LABEL_CHARS_MAX: usize = 36;
/// Width of one character of the 11 px monospace labels.
const CHAR_WIDTH_PX: f64 = 6.7;
/// Vertical distance between two cycle arrows in the band below the lanes.
const ARROW_SPACING_PX: usize = 16;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `text` cut to `chars_max` characters (with an ellipsis); empty if not even two fit.
fn shorten(text: &str, chars_max: usize) -> String {
    let chars_max = chars_max.min(LABEL_CHARS_MAX);
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    if chars_max < 2 {
        return String::new();
    }
    let cut: String = text.chars().take(chars_max - 1).collect();
    format!("{cut}…")
}

/// The drawing area: which calls, which lanes, and how events map to pixels.
struct Layout {
    first_event: usize,
    last_event: usize,
    pixels_per_event: f64,
    lanes: HashMap<u64, usize>,
    calls: Vec<usize>,
}

impl Layout {
    fn new(history: &History, anomaly: &Anomaly) -> Layout {
        let involved: BTreeSet<usize> = anomaly.ops.iter().map(|op| op.call).collect();
        let calls = history.calls();
        let end_of = |call: usize| calls[call].complete_event.unwrap_or(history.ops().len());
        let first = involved
            .iter()
            .map(|&call| calls[call].invoke_event)
            .min()
            .unwrap_or(0);
        let last = involved.iter().map(|&call| end_of(call)).max().unwrap_or(0);
        let first_event = first.saturating_sub(CONTEXT_EVENTS);
        let last_event = (last + CONTEXT_EVENTS).min(history.ops().len());
        let mut drawn: Vec<usize> = involved.iter().copied().collect();
        for (index, call) in calls.iter().enumerate() {
            let overlaps = call.invoke_event <= last_event && end_of(index) >= first_event;
            if overlaps && !involved.contains(&index) && drawn.len() < DRAWN_CALLS_MAX {
                drawn.push(index);
            }
        }
        let processes: BTreeSet<u64> = drawn.iter().map(|&call| calls[call].process).collect();
        let lanes = processes
            .into_iter()
            .enumerate()
            .map(|(lane, process)| (process, lane))
            .collect();
        let span = (last_event - first_event).max(1) as f64;
        let pixels_per_event = (TIMELINE_WIDTH_PX as f64 / span).clamp(3.0, 60.0);
        Layout {
            first_event,
            last_event,
            pixels_per_event,
            lanes,
            calls: drawn,
        }
    }

    fn x(&self, event: usize) -> f64 {
        let clamped = event.clamp(self.first_event, self.last_event);
        MARGIN_LEFT_PX as f64 + (clamped - self.first_event) as f64 * self.pixels_per_event
    }

    fn y(&self, process: u64) -> usize {
        20 + self.lanes.get(&process).copied().unwrap_or(0) * LANE_HEIGHT_PX
    }

    fn width(&self) -> f64 {
        self.x(self.last_event) + 40.0
    }

    /// Top of the band below the lanes where cycle arrows run.
    fn band_top(&self) -> usize {
        30 + self.lanes.len() * LANE_HEIGHT_PX
    }

    fn height(&self, arrows: usize) -> usize {
        self.band_top() + arrows * ARROW_SPACING_PX + 30
    }
}

/// Marks per call: outline the anomaly's operations, number a failed linearization.
fn marks(anomaly: &Anomaly) -> HashMap<usize, String> {
    let mut marks: HashMap<usize, String> = anomaly
        .ops
        .iter()
        .map(|op| (op.call, String::new()))
        .collect();
    if let Some(failure) = &anomaly.linearization {
        let offset = failure.longest_length - failure.longest_tail.len();
        for (position, call) in failure.longest_tail.iter().enumerate() {
            marks.insert(*call, format!("#{}", offset + position + 1));
        }
        for call in &failure.pending {
            marks.insert(*call, "pending".to_string());
        }
        marks.insert(failure.stuck, "STUCK".to_string());
    }
    marks
}

fn draw_calls(svg: &mut String, history: &History, layout: &Layout, anomaly: &Anomaly) {
    let marks = marks(anomaly);
    for &index in &layout.calls {
        let call = &history.calls()[index];
        let x_start = layout.x(call.invoke_event);
        let x_end = call
            .complete_event
            .map_or(layout.width() - 30.0, |event| layout.x(event));
        let y = layout.y(call.process);
        let fill = match call.outcome {
            Outcome::Ok => "#d7ecd7",
            Outcome::Fail => "#f3d4d4",
            Outcome::Info => "#e6e6e6",
        };
        let mark = marks.get(&index);
        let stroke = if mark.is_some() {
            "stroke=\"#c00\" stroke-width=\"2\""
        } else {
            "stroke=\"#999\""
        };
        let dash = if call.outcome == Outcome::Info {
            " stroke-dasharray=\"4 3\""
        } else {
            ""
        };
        let key = history
            .key(call)
            .map_or(String::new(), |key| format!("{key} "));
        let mark_text = mark.filter(|text| !text.is_empty());
        let label = format!(
            "{}{} {key}{}",
            mark_text.map_or(String::new(), |text| format!("{text} ")),
            call.f.name(),
            history.value(call)
        );
        let time = history.ops()[call.invoke_event]
            .time
            .map_or(String::new(), |ns| format!(" t={ns}ns"));
        let title = format!(
            "call {index} process {} {}{time}: {label}",
            call.process,
            call.outcome.name()
        );
        let width = (x_end - x_start).max(4.0);
        let fits = ((width - 6.0) / CHAR_WIDTH_PX).max(0.0) as usize;
        let class = if mark_text.is_some() {
            " class=\"mark\""
        } else {
            ""
        };
        let _ = write!(
            svg,
            "<g><title>{}</title><rect x=\"{x_start:.1}\" y=\"{}\" width=\"{width:.1}\" \
             height=\"20\" rx=\"3\" fill=\"{fill}\" {stroke}{dash}/>\
             <text x=\"{:.1}\" y=\"{}\"{class}>{}</text></g>",
            escape(&title),
            y,
            x_start + 3.0,
            y + 14,
            escape(&shorten(&label, fits)),
        );
    }
}

/// Each cycle edge leaves the bottom of its source operation, runs along its own row of the
/// band below the lanes, and enters the bottom of its target: arrows never cross a label.
fn draw_cycle(svg: &mut String, history: &History, layout: &Layout, anomaly: &Anomaly) {
    let anchor = |call: usize| {
        let call = &history.calls()[call];
        let end = call.complete_event.unwrap_or(layout.last_event);
        let x = (layout.x(call.invoke_event) + layout.x(end)) / 2.0;
        (x, layout.y(call.process) as f64 + 20.0)
    };
    for (number, step) in anomaly.cycle.iter().enumerate() {
        let (x1, y1) = anchor(step.from);
        let (x2, y2) = anchor(step.to);
        // Offset ends a little so arrows meeting at one operation stay apart.
        let shift = (number % 3) as f64 * 4.0 - 4.0;
        let band = (layout.band_top() + number * ARROW_SPACING_PX) as f64;
        let _ = write!(
            svg,
            "<path d=\"M{:.1},{y1:.1} V{band:.1} H{:.1} V{:.1}\" class=\"edge\" \
             marker-end=\"url(#arrow)\"><title>{}</title></path>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"edgelabel\">{}</text>",
            x1 + shift,
            x2 - shift,
            y2 + 2.0,
            escape(&step.explanation),
            x1.min(x2) + 4.0,
            band - 3.0,
            number + 1
        );
    }
}

fn timeline(history: &History, anomaly: &Anomaly) -> String {
    let layout = Layout::new(history, anomaly);
    let arrows = anomaly.cycle.len();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{}\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#c00\"/>\
         </marker></defs>",
        layout.width(),
        layout.height(arrows)
    );
    let mut lanes: Vec<(&u64, &usize)> = layout.lanes.iter().collect();
    lanes.sort_by_key(|&(_, lane)| *lane);
    for (process, _) in lanes {
        let y = layout.y(*process);
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{}\" class=\"lane\">process {process}</text>",
            y + 14
        );
    }
    // Arrows first: the opaque operation boxes drawn over them hide every crossing, so no
    // line runs over an operation's text.
    draw_cycle(&mut svg, history, &layout, anomaly);
    draw_calls(&mut svg, history, &layout, anomaly);
    let axis_y = layout.height(arrows) - 8;
    let _ = write!(
        svg,
        "<text x=\"{MARGIN_LEFT_PX}\" y=\"{axis_y}\" class=\"lane\">event {} → {}</text></svg>",
        layout.first_event, layout.last_event
    );
    svg
}

fn anomaly_section(page: &mut String, anomaly: &Anomaly) {
    let key = anomaly
        .key
        .as_ref()
        .map_or(String::new(), |key| format!(" on key {key}"));
    let _ = write!(
        page,
        "<h2>{}{}</h2><p>{}</p>",
        escape(&anomaly.kind),
        escape(&key),
        escape(&anomaly.explanation)
    );
    page.push_str(
        "<table><tr><th>call</th><th>process</th><th>f</th><th>value</th><th>outcome</th>\
         <th>line</th></tr>",
    );
    for op in &anomaly.ops {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            op.call,
            op.process,
            op.f.name(),
            escape(&op.value.to_string()),
            op.outcome.name(),
            op.line
        );
    }
    page.push_str("</table>");
    if anomaly.cycle.is_empty() {
        return;
    }
    page.push_str(
        "<table><tr><th>arrow</th><th>edge</th><th>from</th><th>to</th><th>why</th></tr>",
    );
    for (number, step) in anomaly.cycle.iter().enumerate() {
        let key = step
            .key
            .as_ref()
            .map_or(String::new(), |key| format!(" on key {key}"));
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}{}</td><td>call {}</td><td>call {}</td><td>{}</td></tr>",
            number + 1,
            escape(&step.edge),
            escape(&key),
            step.from,
            step.to,
            escape(&step.explanation)
        );
    }
    page.push_str("</table>");
}

/// Renders the page for `report`, drawing the first anomaly on a timeline.
pub fn render(history: &History, report: &Report) -> String {
    let mut page = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>checker: violation</title>\
         <style>body{font-family:sans-serif;margin:20px}svg{border:1px solid #ccc;background:#fff}\
         text{font-size:11px;font-family:monospace}.lane{fill:#444}\
         .mark{fill:#c00;font-weight:bold}\
         .edge{fill:none;stroke:#c00;stroke-width:1.5}.edgelabel{fill:#c00;font-weight:bold}\
         table{border-collapse:collapse;margin-bottom:16px}\
         td,th{border:1px solid #ccc;padding:2px 6px;\
         font-size:12px}.scroll{overflow-x:auto}</style></head><body>",
    );
    let _ = write!(page, "<h1>{}</h1>", escape(&report.verdict_line()));
    if let Some(first) = report.anomalies.first() {
        let _ = write!(
            page,
            "<div class=\"scroll\">{}</div>",
            timeline(history, first)
        );
    }
    for anomaly in &report.anomalies {
        anomaly_section(&mut page, anomaly);
    }
    page.push_str("</body></html>\n");
    page
}
