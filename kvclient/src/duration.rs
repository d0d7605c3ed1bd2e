//! The one duration syntax of every binary's flags (kvctl, bench, nemesis): humantime's, e.g.
//! `10s`, `1.5s`, `500ms`, `2m`, `1h 30m`. A bare number is refused: `10` could mean seconds or
//! milliseconds, and the flags used to disagree.

use std::time::Duration;

/// A flag value that is not a duration.
#[derive(Debug, thiserror::Error)]
#[error("'{text}' is not a duration like 10s, 1.5s, 500ms or 2m: {reason}")]
pub struct DurationError {
    text: String,
    reason: String,
}

/// Parses a duration flag (use as clap's `value_parser`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    humantime::parse_duration(text).map_err(|error| DurationError {
        text: text.to_string(),
        reason: error.to_string(),
    })
}

/// A duration as a user reads it: `1.5s`, `500ms`, `2m`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 || seconds % 60.0 != 0.0 {
        return format!("{}s", trim_float(seconds));
    }
    let minutes = seconds / 60.0;
    if minutes % 60.0 != 0.0 {
        return format!("{}m", trim_float(minutes));
    }
    format!("{}h", trim_float(minutes / 60.0))
}

/// `1.5`, `2`, `0.25`: at most three decimals, no trailing zeros.
fn trim_float(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_the_binaries_accept() {
        for (text, expected) in [
            ("10s", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1m 30s", Duration::from_secs(90)),
            (" 3s ", Duration::from_secs(3)),
        ] {
            assert_eq!(parse_duration(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        for text in ["10", "fast", "10 parsecs", ""] {
            let message = parse_duration(text).unwrap_err().to_string();
            assert!(
                message.contains("not a duration like 10s"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn durations_print_as_they_are_typed() {
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
