//! What the examples' command lines share: durations given in seconds, decimals allowed, as
//! clap value parsers (`#[arg(value_parser = seconds)]`), so that a bad value is refused with
//! the flag's name before anything starts.

use std::time::Duration;

/// Seconds, decimals allowed, more than 0.
pub fn seconds(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or(format!("{v:?}: expected seconds (more than 0)"))
}

/// Seconds, decimals allowed, 0 or more.
pub fn seconds_or_zero(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or(format!("{v:?}: expected seconds (0 or more)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_decimals_and_refuse_the_rest() {
        assert_eq!(seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(seconds_or_zero("0"), Ok(Duration::ZERO));
        for bad in ["0", "-1", "x", "", "inf", "NaN", "1e30"] {
            assert!(seconds(bad).unwrap_err().contains("more than 0"), "{bad}");
        }
        for bad in ["-0.5", "soon", "inf"] {
            assert!(
                seconds_or_zero(bad).unwrap_err().contains("0 or more"),
                "{bad}"
            );
        }
    }
}
