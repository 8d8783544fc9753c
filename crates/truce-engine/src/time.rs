//! Wall-clock instants as stored in versions.
//!
//! Versions record milliseconds since the Unix epoch. HTTP dates (`Last-Modified`,
//! `If-Unmodified-Since`) only carry whole seconds, so comparisons against them use
//! [`Timestamp::secs`]; JSON bodies show RFC 3339 with milliseconds.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts a `SystemTime`; instants before 1970 clamp to the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Self(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    /// Builds a timestamp from milliseconds since the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch: the precision of HTTP dates.
    pub const fn secs(self) -> u64 {
        self.0 / 1000
    }

    /// Parses the RFC 3339 form JSON bodies show.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        humantime::parse_rfc3339(text)
            .ok()
            .map(Self::from_system_time)
    }

    /// The same instant as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// This instant moved back by `age`, clamped at the epoch.
    pub fn saturating_sub(self, age: Duration) -> Self {
        let millis = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_sub(millis))
    }

    /// RFC 3339 with milliseconds, e.g. `2026-11-23T17:24:39.123Z`.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.to_system_time()).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_rfc3339_with_millis() {
        assert_eq!(
            Timestamp::from_millis(1_700_000_000_123).rfc3339(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_700_000_000_999).secs(),
            1_700_000_000
        );
    }
}
