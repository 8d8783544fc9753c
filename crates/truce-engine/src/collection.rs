//! Collection settings (SPEC §8): the policies a collection's writes follow.
//!
//! Settings are a side record per collection, versioned like a resource (ETag,
//! `If-Match`), written through the sequencer so a write is always planned under
//! the settings of its own commit. A collection that was never configured has the
//! defaults, at version 0. A `PUT` replaces the whole settings object: a key left
//! out takes its default again.
//!
//! Only the keys this server implements are accepted. The keys SPEC §8 names for
//! later (`schema`, `immutable`, `unique`, `states`) and unknown keys are refused
//! with 422, each named, so a setting is never silently ignored.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::command::Principal;
use crate::error::EngineError;
use crate::etag::{ETag, TagCondition};
use crate::name::CollectionName;
use crate::precondition::{Evaluation, FailedCondition, Preconditions, Safety, Validators};
use crate::rate::Rate;
use crate::retention::Retention;
use crate::rules::{SideTable, SideWrite};
use crate::time::Timestamp;

/// SPEC §8 keys that this server does not implement yet: refused by name.
const NOT_YET: [&str; 4] = ["schema", "immutable", "unique", "states"];

/// What happens to a write based on a version that is no longer current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Refused (412, or 409 version-conflict), with a conflict record.
    #[default]
    Reject,
    /// Three-way merged with the current version when the changes are disjoint.
    Merge,
    /// Applied over the current version; the overwritten version stays in history.
    LastWriteWins,
}

impl ConflictPolicy {
    /// The name in settings documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Merge => "merge",
            Self::LastWriteWins => "last_write_wins",
        }
    }
}

/// A collection's history limits, over the server's retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistorySettings {
    /// Keep at most this many versions per resource (head included).
    pub max_versions: Option<u64>,
    /// Remove past versions older than this.
    pub max_age: Option<Duration>,
}

/// A collection's write limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteLimits {
    /// Writes each resource of the collection takes, from all clients together.
    pub writes_per_resource: Option<Rate>,
}

/// The settings of one collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectionSettings {
    /// What happens to stale writes.
    pub conflict_policy: ConflictPolicy,
    /// Every write must carry `If-Match`, `If-None-Match: *` or `?if_version`.
    pub require_preconditions: bool,
    /// History limits that replace the server's for this collection.
    pub history: HistorySettings,
    /// Write limits.
    pub limits: WriteLimits,
}

impl CollectionSettings {
    /// Parses a settings document; every problem is reported at once (422), each
    /// with the JSON pointer of its key.
    pub fn parse(body: &Value) -> Result<Self, EngineError> {
        let Some(fields) = body.as_object() else {
            return Err(EngineError::invalid(
                "",
                "collection settings must be a JSON object",
            ));
        };
        let mut settings = Self::default();
        let mut errors = Vec::new();
        for (name, value) in fields {
            let pointer = format!("/{name}");
            match name.as_str() {
                "conflict_policy" => match serde_json::from_value(value.clone()) {
                    Ok(policy) => settings.conflict_policy = policy,
                    Err(_) => errors.push((
                        pointer,
                        "conflict_policy must be \"reject\", \"merge\" or \"last_write_wins\""
                            .to_owned(),
                    )),
                },
                "require_preconditions" => match value.as_bool() {
                    Some(required) => settings.require_preconditions = required,
                    None => errors.push((pointer, "require_preconditions must be true or false".into())),
                },
                "history" => match parse_history(value) {
                    Ok(history) => settings.history = history,
                    Err(mut more) => errors.append(&mut more),
                },
                "limits" => match parse_limits(value) {
                    Ok(limits) => settings.limits = limits,
                    Err(mut more) => errors.append(&mut more),
                },
                later if NOT_YET.contains(&later) => errors.push((
                    pointer,
                    format!("{later} is not supported by this server yet; remove it"),
                )),
                unknown => errors.push((
                    pointer,
                    format!(
                        "{unknown} is not a collection setting (known: conflict_policy, require_preconditions, history, limits)"
                    ),
                )),
            }
        }
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(EngineError::Invalid { errors })
        }
    }

    /// The settings document, every key present (the form `GET` serves and `PUT`
    /// takes back).
    pub fn to_value(&self) -> Value {
        let mut history = Map::new();
        if let Some(max) = self.history.max_versions {
            history.insert("max_versions".into(), json!(max));
        }
        if let Some(age) = self.history.max_age {
            history.insert(
                "max_age".into(),
                json!(humantime::format_duration(age).to_string()),
            );
        }
        let mut limits = Map::new();
        if let Some(rate) = self.limits.writes_per_resource {
            limits.insert("writes_per_resource".into(), json!(rate.to_string()));
        }
        json!({
            "conflict_policy": self.conflict_policy.as_str(),
            "require_preconditions": self.require_preconditions,
            "history": history,
            "limits": limits,
        })
    }

    /// The retention that applies to this collection: the server's, with each
    /// history limit the collection sets in its place.
    pub fn retention(&self, server: &Retention) -> Retention {
        Retention {
            max_versions: self.history.max_versions.or(server.max_versions),
            max_age: self.history.max_age.or(server.max_age),
            changes_max_age: server.changes_max_age,
        }
    }
}

/// A member's problems, each with its JSON pointer.
type MemberErrors = Vec<(String, String)>;

/// Parses object member `member` of the settings key by key: `read` sets one
/// key and answers `None` for a key it does not know, `Some(Err(why))` for a
/// value it cannot take. Every problem is collected, each with its pointer;
/// unknown keys are named with the `known` list.
fn parse_object<T: Default>(
    member: &str,
    value: &Value,
    known: &str,
    mut read: impl FnMut(&mut T, &str, &Value) -> Option<Result<(), String>>,
) -> Result<T, MemberErrors> {
    let Some(fields) = value.as_object() else {
        return Err(vec![(
            format!("/{member}"),
            format!("{member} must be an object"),
        )]);
    };
    let mut parsed = T::default();
    let mut errors = Vec::new();
    for (name, value) in fields {
        let problem = match read(&mut parsed, name, value) {
            Some(Ok(())) => continue,
            Some(Err(why)) => why,
            None => format!("{name} is not a {member} setting (known: {known})"),
        };
        errors.push((format!("/{member}/{name}"), problem));
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// Parses the `history` member.
fn parse_history(value: &Value) -> Result<HistorySettings, MemberErrors> {
    parse_object(
        "history",
        value,
        "max_versions, max_age",
        |history: &mut HistorySettings, name, value| match name {
            "max_versions" => Some(match value.as_u64().filter(|n| *n >= 1) {
                Some(max) => {
                    history.max_versions = Some(max);
                    Ok(())
                }
                None => Err("max_versions must be a whole number >= 1".into()),
            }),
            "max_age" => Some(match value.as_str().map(humantime::parse_duration) {
                Some(Ok(age)) if !age.is_zero() => {
                    history.max_age = Some(age);
                    Ok(())
                }
                _ => Err("max_age must be a duration such as \"30d\" or \"12h\"".into()),
            }),
            _ => None,
        },
    )
}

/// Parses the `limits` member.
fn parse_limits(value: &Value) -> Result<WriteLimits, MemberErrors> {
    parse_object(
        "limits",
        value,
        "writes_per_resource",
        |limits: &mut WriteLimits, name, value| match name {
            "writes_per_resource" => Some(match value.as_str().map(str::parse::<Rate>) {
                Some(Ok(rate)) => {
                    limits.writes_per_resource = Some(rate);
                    Ok(())
                }
                _ => Err(
                    "writes_per_resource must be a rate such as \"20/s\", \"600/min\" or \"10/h\""
                        .into(),
                ),
            }),
            _ => None,
        },
    )
}

/// A collection's settings as stored: the settings and their version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSettings {
    /// The collection.
    pub collection: CollectionName,
    /// The settings in force.
    pub settings: CollectionSettings,
    /// Counts the `PUT`s that changed them; 0 for a collection never configured.
    pub version: u64,
    /// When they were last changed (the epoch for version 0).
    pub updated_at: Timestamp,
    /// Who changed them last.
    pub updated_by: Option<String>,
}

/// The on-disk form of [`StoredSettings`].
#[derive(Serialize, Deserialize)]
struct SettingsRecord {
    settings: Value,
    version: u64,
    updated_at_ms: u64,
    updated_by: String,
}

impl StoredSettings {
    /// The settings stored for `collection` (`stored`: its side record, if any);
    /// the defaults at version 0 when there is none.
    pub fn read(collection: &CollectionName, stored: Option<&[u8]>) -> Result<Self, EngineError> {
        let Some(stored) = stored else {
            return Ok(Self {
                collection: collection.clone(),
                settings: CollectionSettings::default(),
                version: 0,
                updated_at: Timestamp::from_millis(0),
                updated_by: None,
            });
        };
        let corrupt = |why: String| {
            EngineError::Internal(format!(
                "settings of collection {collection} unreadable: {why}"
            ))
        };
        let record: SettingsRecord =
            serde_json::from_slice(stored).map_err(|e| corrupt(e.to_string()))?;
        let settings =
            CollectionSettings::parse(&record.settings).map_err(|e| corrupt(e.to_string()))?;
        Ok(Self {
            collection: collection.clone(),
            settings,
            version: record.version,
            updated_at: Timestamp::from_millis(record.updated_at_ms),
            updated_by: Some(record.updated_by),
        })
    }

    /// The settings' ETag: changes with every version, never equal to a
    /// document's.
    pub fn etag(&self) -> ETag {
        ETag::derive_settings(&self.collection, self.version, self.updated_at)
    }
}

/// A `PUT /v1/_collections/{c}`.
#[derive(Debug, Clone)]
pub struct SettingsCommand {
    /// The collection.
    pub collection: CollectionName,
    /// The new settings (already parsed: a bad document never reaches the writer).
    pub settings: CollectionSettings,
    /// `If-Match` / `If-None-Match` against the settings' ETag.
    pub preconditions: Preconditions,
    /// Who changes them.
    pub by: Principal,
    /// `Idempotency-Key`: the answer is kept with the change (SPEC §9).
    pub idempotency: Option<crate::idempotency::Idempotent<SettingsOutcome>>,
}

/// How a settings change ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsOutcome {
    /// The settings now in force.
    pub stored: StoredSettings,
    /// Whether a new version was written (equal settings write nothing).
    pub changed: bool,
}

/// The settings change `command` makes over `stored` (the collection's side
/// record, if any): the outcome, and the record to write (`None` when the
/// settings are unchanged). Preconditions are checked against the settings' ETag
/// (version 0 counts as "no settings stored" for `If-None-Match: *`).
pub fn plan_settings(
    stored: Option<&[u8]>,
    command: &SettingsCommand,
    now: Timestamp,
) -> Result<(SettingsOutcome, Option<SideWrite>), EngineError> {
    let current = StoredSettings::read(&command.collection, stored)?;
    let etag = current.etag();
    // Version 0 (never configured) has an ETag like any other, so the defaults
    // read with GET guard a first PUT; but it is "no settings" to
    // `If-None-Match: *`.
    let validators = Some(Validators {
        etag: &etag,
        last_modified_secs: current.updated_at.secs(),
    });
    let mut preconditions = command.preconditions.clone();
    if current.version == 0 && preconditions.if_none_match == Some(TagCondition::Any) {
        preconditions.if_none_match = None;
    }
    let failed = match preconditions.evaluate(Safety::Unsafe, validators) {
        Evaluation::Proceed => None,
        Evaluation::Failed(condition) => Some(condition),
        Evaluation::NotModified => Some(FailedCondition::IfNoneMatch),
    };
    if let Some(condition) = failed {
        return Err(EngineError::SettingsPreconditionFailed {
            condition,
            collection: command.collection.as_str().to_owned(),
            version: current.version,
            etag,
        });
    }
    if current.version > 0 && current.settings == command.settings {
        return Ok((
            SettingsOutcome {
                stored: current,
                changed: false,
            },
            None,
        ));
    }
    let next = StoredSettings {
        collection: command.collection.clone(),
        settings: command.settings,
        version: current.version + 1,
        updated_at: now.max(current.updated_at),
        updated_by: Some(command.by.as_str().to_owned()),
    };
    let record = SettingsRecord {
        settings: next.settings.to_value(),
        version: next.version,
        updated_at_ms: next.updated_at.millis(),
        updated_by: command.by.as_str().to_owned(),
    };
    let value = serde_json::to_vec(&record)
        .map_err(|e| EngineError::Internal(format!("settings not encodable: {e}")))?;
    Ok((
        SettingsOutcome {
            stored: next,
            changed: true,
        },
        Some(SideWrite {
            table: SideTable::Collections,
            key: command.collection.as_str().as_bytes().to_vec(),
            value: Some(value.into()),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> CollectionName {
        CollectionName::parse("notes").unwrap()
    }

    fn command(settings: CollectionSettings) -> SettingsCommand {
        SettingsCommand {
            collection: name(),
            settings,
            preconditions: Preconditions::default(),
            by: Principal::anonymous(),
            idempotency: None,
        }
    }

    #[test]
    fn settings_round_trip_through_their_document() {
        let body = json!({
            "conflict_policy": "merge",
            "require_preconditions": true,
            "history": {"max_versions": 10, "max_age": "30days"},
            "limits": {"writes_per_resource": "600/min"}
        });
        let settings = CollectionSettings::parse(&body).unwrap();
        assert_eq!(settings.conflict_policy, ConflictPolicy::Merge);
        assert_eq!(
            settings.limits.writes_per_resource.map(|r| r.to_string()),
            Some("600/min".to_owned())
        );
        assert_eq!(
            settings.history.max_age,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            CollectionSettings::parse(&settings.to_value()).unwrap(),
            settings
        );
        assert_eq!(
            CollectionSettings::parse(&json!({})).unwrap(),
            CollectionSettings::default()
        );
    }

    #[test]
    fn later_and_unknown_keys_are_refused_by_name() {
        let body = json!({"schema": {}, "colour": "red", "conflict_policy": "maybe",
                          "history": {"max_versions": 0}});
        let Err(EngineError::Invalid { errors }) = CollectionSettings::parse(&body) else {
            panic!("accepted");
        };
        let pointers: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/schema",
                "/colour",
                "/conflict_policy",
                "/history/max_versions"
            ]
        );
        assert!(errors[0].1.contains("not supported"));
    }

    #[test]
    fn collection_history_replaces_the_servers_limits() {
        let server = Retention {
            max_versions: Some(100),
            max_age: Some(Duration::from_secs(60)),
            changes_max_age: None,
        };
        let mut settings = CollectionSettings::default();
        settings.history.max_versions = Some(3);
        let retention = settings.retention(&server);
        assert_eq!(retention.max_versions, Some(3));
        assert_eq!(retention.max_age, Some(Duration::from_secs(60)));
    }

    #[test]
    fn settings_are_versioned_and_guarded_by_their_etag() {
        let merge = CollectionSettings {
            conflict_policy: ConflictPolicy::Merge,
            ..CollectionSettings::default()
        };
        let now = Timestamp::from_millis(5_000);
        let (first, record) = plan_settings(None, &command(merge), now).unwrap();
        assert_eq!((first.stored.version, first.changed), (1, true));
        let stored = record.unwrap().value.unwrap();

        // The same settings again: no new version.
        let (same, none) = plan_settings(Some(&stored), &command(merge), now).unwrap();
        assert_eq!((same.stored.version, same.changed, none), (1, false, None));

        // A stale If-Match is refused with the current version.
        let stale = StoredSettings::read(&name(), None).unwrap().etag();
        let mut guarded = command(CollectionSettings::default());
        guarded.preconditions.if_match =
            Some(TagCondition::parse([stale.to_header().as_str()]).unwrap());
        assert!(matches!(
            plan_settings(Some(&stored), &guarded, now),
            Err(EngineError::SettingsPreconditionFailed { version: 1, .. })
        ));
        guarded.preconditions.if_match =
            Some(TagCondition::parse([first.stored.etag().to_header().as_str()]).unwrap());
        let (second, _) = plan_settings(Some(&stored), &guarded, now).unwrap();
        assert_eq!(second.stored.version, 2);

        // The ETag of version 0 guards the first change.
        let mut first_guarded = command(merge);
        first_guarded.preconditions.if_match =
            Some(TagCondition::parse([stale.to_header().as_str()]).unwrap());
        assert!(plan_settings(None, &first_guarded, now).is_ok());

        // If-None-Match: * means "never configured".
        let mut create_only = command(merge);
        create_only.preconditions.if_none_match = Some(TagCondition::Any);
        assert!(plan_settings(None, &create_only, now).is_ok());
        assert!(plan_settings(Some(&stored), &create_only, now).is_err());
    }
}
