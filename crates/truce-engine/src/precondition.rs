//! RFC 9110 conditional requests, evaluated in the order of §13.2.2.
//!
//! 1. `If-Match` (strong); false → 412.
//! 2. otherwise `If-Unmodified-Since`; false → 412.
//! 3. `If-None-Match` (weak); false → 304 for GET/HEAD, 412 otherwise.
//! 4. otherwise, for GET/HEAD, `If-Modified-Since`; false → 304.
//!
//! Date conditions are ignored when the resource has no current representation (RFC
//! 9110 §13.1.3, §13.1.4). truce never uses §13.1.1's permission to answer 2xx to a
//! false `If-Match` whose change "appears already applied" (SPEC §2): a false
//! condition here is always a refusal.

use crate::etag::{ETag, TagCondition};

/// The conditional header fields of one request, already parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`.
    pub if_match: Option<TagCondition>,
    /// `If-None-Match`.
    pub if_none_match: Option<TagCondition>,
    /// `If-Unmodified-Since`, in whole seconds since the epoch.
    pub if_unmodified_since: Option<u64>,
    /// `If-Modified-Since`, in whole seconds since the epoch.
    pub if_modified_since: Option<u64>,
}

/// Whether the request method is safe (GET, HEAD) or changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Safety {
    /// GET or HEAD: a failed `If-None-Match` or `If-Modified-Since` answers 304.
    Safe,
    /// Any state-changing method: every failed condition answers 412.
    Unsafe,
}

/// What the client's conditions are compared with: the selected representation.
#[derive(Debug, Clone, Copy)]
pub struct Validators<'a> {
    /// The current strong ETag.
    pub etag: &'a ETag,
    /// `Last-Modified`, in whole seconds.
    pub last_modified_secs: u64,
}

/// Which condition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedCondition {
    /// `If-Match` was false.
    IfMatch,
    /// `If-Unmodified-Since` was false.
    IfUnmodifiedSince,
    /// `If-None-Match` was false on an unsafe request.
    IfNoneMatch,
}

impl FailedCondition {
    /// The header field's name, for messages.
    pub fn header(self) -> &'static str {
        match self {
            Self::IfMatch => "If-Match",
            Self::IfUnmodifiedSince => "If-Unmodified-Since",
            Self::IfNoneMatch => "If-None-Match",
        }
    }
}

/// The verdict of the evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// Perform the method.
    Proceed,
    /// Answer 304 Not Modified (safe methods only).
    NotModified,
    /// Answer 412 Precondition Failed.
    Failed(FailedCondition),
}

impl Preconditions {
    /// True when no conditional field was sent.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none()
            && self.if_none_match.is_none()
            && self.if_unmodified_since.is_none()
            && self.if_modified_since.is_none()
    }

    /// True when the request guards a write against concurrent change: `If-Match`, or
    /// `If-None-Match: *` (create-only). Used by `require_preconditions`.
    pub fn guards_write(&self) -> bool {
        self.if_match.is_some() || self.if_none_match == Some(TagCondition::Any)
    }

    /// Evaluates the conditions against the current representation (`None` when the
    /// resource does not exist or is deleted), in RFC 9110 §13.2.2 order.
    pub fn evaluate(&self, safety: Safety, current: Option<Validators<'_>>) -> Evaluation {
        // Step 1 and 2.
        if let Some(condition) = &self.if_match {
            let holds = current.is_some_and(|c| condition.matches_strong(c.etag));
            if !holds {
                return Evaluation::Failed(FailedCondition::IfMatch);
            }
        } else if let (Some(since), Some(current)) = (self.if_unmodified_since, current)
            && current.last_modified_secs > since
        {
            return Evaluation::Failed(FailedCondition::IfUnmodifiedSince);
        }
        // Step 3 and 4.
        if let Some(condition) = &self.if_none_match {
            let matches = current.is_some_and(|c| condition.matches_weak(c.etag));
            if matches {
                return match safety {
                    Safety::Safe => Evaluation::NotModified,
                    Safety::Unsafe => Evaluation::Failed(FailedCondition::IfNoneMatch),
                };
            }
        } else if let (Safety::Safe, Some(since), Some(current)) =
            (safety, self.if_modified_since, current)
            && current.last_modified_secs <= since
        {
            return Evaluation::NotModified;
        }
        Evaluation::Proceed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etag::EntityTag;

    fn tags(list: &[&str]) -> Option<TagCondition> {
        Some(TagCondition::Tags(
            list.iter()
                .map(|t| EntityTag {
                    weak: t.starts_with("W/"),
                    opaque: t.trim_start_matches("W/").into(),
                })
                .collect(),
        ))
    }

    fn etag() -> ETag {
        crate::etag::ETag::derive(
            &crate::ResourceKey::parse("c", "i").unwrap(),
            1,
            1,
            crate::Timestamp::from_millis(0),
        )
    }

    #[test]
    fn rfc_order_table() {
        let current = etag();
        let now = Validators {
            etag: &current,
            last_modified_secs: 100,
        };
        let cur = current.opaque().to_owned();
        let weak_cur = format!("W/{cur}");
        use Evaluation::*;
        use FailedCondition::*;
        let cases: Vec<(Preconditions, Safety, Option<Validators<'_>>, Evaluation)> = vec![
            (Preconditions::default(), Safety::Unsafe, Some(now), Proceed),
            (
                Preconditions {
                    if_match: tags(&[&cur]),
                    ..Default::default()
                },
                Safety::Unsafe,
                Some(now),
                Proceed,
            ),
            (
                Preconditions {
                    if_match: tags(&[&weak_cur]),
                    ..Default::default()
                },
                Safety::Unsafe,
                Some(now),
                Failed(IfMatch),
            ),
            (
                Preconditions {
                    if_match: Some(TagCondition::Any),
                    ..Default::default()
                },
                Safety::Unsafe,
                None,
                Failed(IfMatch),
            ),
            // If-Match wins over a false If-Unmodified-Since.
            (
                Preconditions {
                    if_match: tags(&["x", &cur]),
                    if_unmodified_since: Some(50),
                    ..Default::default()
                },
                Safety::Unsafe,
                Some(now),
                Proceed,
            ),
            (
                Preconditions {
                    if_unmodified_since: Some(50),
                    ..Default::default()
                },
                Safety::Unsafe,
                Some(now),
                Failed(IfUnmodifiedSince),
            ),
            (
                Preconditions {
                    if_unmodified_since: Some(100),
                    ..Default::default()
                },
                Safety::Unsafe,
                Some(now),
                Proceed,
            ),
            // Date conditions are ignored without a representation.
            (
                Preconditions {
                    if_unmodified_since: Some(50),
                    ..Default::default()
                },
                Safety::Unsafe,
                None,
                Proceed,
            ),
            (
                Preconditions {
                    if_none_match: Some(TagCondition::Any),
                    ..Default::default()
                },
                Safety::Unsafe,
                Some(now),
                Failed(IfNoneMatch),
            ),
            (
                Preconditions {
                    if_none_match: Some(TagCondition::Any),
                    ..Default::default()
                },
                Safety::Unsafe,
                None,
                Proceed,
            ),
            (
                Preconditions {
                    if_none_match: tags(&[&weak_cur]),
                    ..Default::default()
                },
                Safety::Safe,
                Some(now),
                NotModified,
            ),
            // If-None-Match wins over If-Modified-Since.
            (
                Preconditions {
                    if_none_match: tags(&["other"]),
                    if_modified_since: Some(200),
                    ..Default::default()
                },
                Safety::Safe,
                Some(now),
                Proceed,
            ),
            (
                Preconditions {
                    if_modified_since: Some(100),
                    ..Default::default()
                },
                Safety::Safe,
                Some(now),
                NotModified,
            ),
            (
                Preconditions {
                    if_modified_since: Some(99),
                    ..Default::default()
                },
                Safety::Safe,
                Some(now),
                Proceed,
            ),
            // If-Modified-Since only applies to GET and HEAD.
            (
                Preconditions {
                    if_modified_since: Some(100),
                    ..Default::default()
                },
                Safety::Unsafe,
                Some(now),
                Proceed,
            ),
            // If-Match false beats If-None-Match.
            (
                Preconditions {
                    if_match: tags(&["other"]),
                    if_none_match: Some(TagCondition::Any),
                    ..Default::default()
                },
                Safety::Safe,
                Some(now),
                Failed(IfMatch),
            ),
        ];
        for (i, (conditions, safety, current, expected)) in cases.into_iter().enumerate() {
            assert_eq!(conditions.evaluate(safety, current), expected, "case {i}");
        }
    }

    #[test]
    fn write_guards() {
        assert!(!Preconditions::default().guards_write());
        assert!(
            Preconditions {
                if_match: tags(&["a"]),
                ..Default::default()
            }
            .guards_write()
        );
        assert!(
            Preconditions {
                if_none_match: Some(TagCondition::Any),
                ..Default::default()
            }
            .guards_write()
        );
        assert!(
            !Preconditions {
                if_none_match: tags(&["a"]),
                ..Default::default()
            }
            .guards_write()
        );
    }
}
