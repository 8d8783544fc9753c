//! Server-made ids for `POST /v1/{collection}`.
//!
//! Ids are ULIDs: 26 Crockford base32 characters whose first 10 encode the creation
//! millisecond, so sorting ids (as collection listings do) sorts by creation time. The
//! generator is monotonic: ids made in the same millisecond still increase.

use std::sync::Mutex;

use crate::name::DocId;

/// Makes time-ordered, unique document ids.
#[derive(Debug, Default)]
pub struct IdGenerator {
    inner: Mutex<ulid::Generator>,
}

impl IdGenerator {
    /// A generator with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next id; strictly greater than every id this generator made before.
    pub fn next_id(&self) -> DocId {
        let mut generator = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ulid = match generator.generate() {
            Ok(ulid) => ulid,
            Err(overflow) => overflow.commit_overflow_increment(),
        };
        // A ULID's text is 26 characters of [0-9A-Z], always a valid id.
        DocId::from_trusted(ulid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase() {
        let ids = IdGenerator::new();
        let mut previous = ids.next_id();
        for _ in 0..1000 {
            let next = ids.next_id();
            assert!(next > previous);
            assert_eq!(next.as_str().len(), 26);
            previous = next;
        }
    }
}
