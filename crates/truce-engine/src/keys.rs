//! API keys and roles (SPEC §9).
//!
//! A key is `truce_{id}_{secret}`: the id finds its record, the secret proves
//! the holder. The store keeps, per key, its name, roles, a random salt and
//! PBKDF2-HMAC-SHA256 of the secret under that salt; never the secret. A data
//! directory or database that leaks therefore yields no usable key: the secret
//! is 256 random bits, and even a guess must pay the slow hash per try, per key.
//! A salted slow hash was chosen over an HMAC with a server secret because it
//! needs no secret outside the store that every node (and `truce keys create`
//! with the server stopped) would have to share; its cost per request is paid
//! once per key and node, as the HTTP layer keeps the keys it verified.
//!
//! Roles: `read` (reads, feeds, streams), `write` (implies `read`: unsafe
//! document requests, locks, transactions), `resolve` (implies `read`: resolving
//! and dismissing conflict records), `admin` (everything, plus keys, collection
//! settings, subscriptions, breaking locks, `/metrics`).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::EngineError;
use crate::rules::{SideTable, SideWrite};
use crate::time::Timestamp;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `GET`/`HEAD`, feeds and streams.
    Read,
    /// Unsafe document requests (and `read`).
    Write,
    /// Resolving and dismissing conflict records (and `read`).
    Resolve,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 4] = [Role::Read, Role::Write, Role::Resolve, Role::Admin];

    /// The role's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Resolve => "resolve",
            Role::Admin => "admin",
        }
    }

    /// The role of a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// Whether holding `self` allows what `needed` allows.
    pub fn grants(self, needed: Role) -> bool {
        self == needed || self == Role::Admin || needed == Role::Read
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether any of `roles` allows what `needed` allows.
pub fn roles_grant(roles: &[Role], needed: Role) -> bool {
    roles.iter().any(|role| role.grants(needed))
}

/// A key as listed: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Finds the record; part of the key.
    pub id: String,
    /// Who the key's requests are (`by` in history and conflict records).
    pub name: String,
    /// What it may do.
    pub roles: Vec<Role>,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A key just made: its record to store, and the key, shown once.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The listed part.
    pub key: ApiKey,
    /// `truce_{id}_{secret}`: the only time it exists outside its holder.
    pub token: String,
    /// The record to commit.
    pub record: SideWrite,
}

/// PBKDF2 rounds for new keys.
pub const KEY_HASH_ROUNDS: u32 = 100_000;

/// The stored record of a key.
#[derive(Debug, Serialize, Deserialize)]
struct StoredKey {
    id: String,
    name: String,
    roles: Vec<Role>,
    created_at: u64,
    kdf: String,
    rounds: u32,
    salt: String,
    hash: String,
}

/// The limits of a key's name, for messages.
pub const KEY_NAME_RULE: &str = "1 to 64 characters of A-Z a-z 0-9 . _ - @";

/// Makes a key named `name` with `roles` at `now`.
pub fn new_key(name: &str, roles: &[Role], now: Timestamp) -> Result<NewKey, EngineError> {
    let name_ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !name_ok {
        return Err(EngineError::invalid(
            "/name",
            format!("a key's name is {KEY_NAME_RULE}"),
        ));
    }
    if roles.is_empty() {
        return Err(EngineError::invalid(
            "/roles",
            "a key needs at least one role: read, write, resolve or admin",
        ));
    }
    let mut random = [0u8; 8 + 32 + 16];
    getrandom::fill(&mut random)
        .map_err(|e| EngineError::Internal(format!("no random bytes for a key: {e}")))?;
    let (id_bytes, rest) = random.split_at(8);
    let (secret, salt) = rest.split_at(32);
    let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    let stored = StoredKey {
        id: id.clone(),
        name: name.to_owned(),
        roles: roles.clone(),
        created_at: now.millis(),
        kdf: "pbkdf2-sha256".into(),
        rounds: KEY_HASH_ROUNDS,
        salt: URL_SAFE_NO_PAD.encode(salt),
        hash: URL_SAFE_NO_PAD.encode(slow_hash(secret.as_bytes(), salt, KEY_HASH_ROUNDS)),
    };
    let value = serde_json::to_vec(&stored)
        .map_err(|e| EngineError::Internal(format!("a key record: {e}")))?;
    Ok(NewKey {
        key: ApiKey {
            id: id.clone(),
            name: name.to_owned(),
            roles,
            created_at: now,
        },
        token: format!("truce_{id}_{secret}"),
        record: SideWrite {
            table: SideTable::Keys,
            key: id.into_bytes(),
            value: Some(Bytes::from(value)),
        },
    })
}

/// What a write's API key must still be when the write commits: checked by the
/// batch, in the write's transaction, so a key revoked (or a first key made)
/// before the commit is honoured by it on every node, while the request itself
/// needs no read of the key's record (on PostgreSQL, a statement per request).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyCheck {
    /// Admitted without a key: no key may exist.
    NoKeys,
    /// Admitted with key `id`, verified against the record whose SHA-256 is
    /// `record`: that record must still be stored, unchanged.
    Key {
        /// The key's id.
        id: String,
        /// SHA-256 of the record it was verified against.
        record: [u8; 32],
    },
}

/// Why a [`KeyCheck`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    /// A key exists now; the request had none.
    #[error("this request needs an API key: send Authorization: Bearer <key>")]
    KeyNeeded,
    /// The request's key is gone (revoked) or its record changed.
    #[error("the API key is not valid (unknown, revoked or mistyped)")]
    KeyInvalid,
}

impl KeyCheck {
    /// Whether the check holds in a batch, against the key records `tables`
    /// sees (the batch's own earlier writes included).
    pub fn holds(
        &self,
        tables: &dyn crate::batch::BatchTables,
    ) -> Result<bool, crate::StorageError> {
        match self {
            Self::NoKeys => Ok(!tables.has_side_records(SideTable::Keys)?),
            Self::Key { id, record } => Ok(is_record(
                tables.side(SideTable::Keys, id.as_bytes())?.as_deref(),
                record,
            )),
        }
    }

    /// Whether the check holds now, against the store's newest state: for an
    /// answer given without a commit (a replay, a refusal before it).
    pub async fn holds_now(&self, store: &dyn crate::Store) -> Result<bool, EngineError> {
        match self {
            Self::NoKeys => Ok(store
                .side_records(SideTable::Keys, None, 1)
                .await?
                .is_empty()),
            Self::Key { id, record } => Ok(is_record(
                store
                    .side_record(SideTable::Keys, id.as_bytes())
                    .await?
                    .as_deref(),
                record,
            )),
        }
    }

    /// The refusal when the check fails.
    pub fn refusal(&self) -> KeyRefusal {
        match self {
            Self::NoKeys => KeyRefusal::KeyNeeded,
            Self::Key { .. } => KeyRefusal::KeyInvalid,
        }
    }
}

/// SHA-256 of a stored key record: what a node remembers a verified key by,
/// and what [`KeyCheck::Key`] finds again.
pub fn record_digest(stored: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(stored).into()
}

/// Whether `stored` (a key's record, if any) is the one whose digest is `record`.
fn is_record(stored: Option<&[u8]>, record: &[u8; 32]) -> bool {
    stored.is_some_and(|stored| record_digest(stored) == *record)
}

/// PBKDF2-HMAC-SHA256.
fn slow_hash(secret: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(secret, salt, rounds)
}

/// The id and secret of a presented key, if it has the key's shape.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("truce_")?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

/// The listed part of a stored key record.
pub fn read_key(stored: &[u8]) -> Option<ApiKey> {
    let stored: StoredKey = serde_json::from_slice(stored).ok()?;
    Some(ApiKey {
        id: stored.id,
        name: stored.name,
        roles: stored.roles,
        created_at: Timestamp::from_millis(stored.created_at),
    })
}

/// Checks `secret` against a stored record (the slow part: run it off the
/// request's thread); the key if it matches.
pub fn verify_key(stored: &[u8], secret: &str) -> Option<ApiKey> {
    let record: StoredKey = serde_json::from_slice(stored).ok()?;
    if record.kdf != "pbkdf2-sha256" {
        return None;
    }
    let salt = URL_SAFE_NO_PAD.decode(&record.salt).ok()?;
    let expected = URL_SAFE_NO_PAD.decode(&record.hash).ok()?;
    let actual = slow_hash(secret.as_bytes(), &salt, record.rounds);
    let differ = expected.len() != actual.len()
        || expected
            .iter()
            .zip(actual.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    if differ {
        return None;
    }
    read_key(stored)
}

/// The removal of key `id` (revocation).
pub fn key_removal(id: &str) -> SideWrite {
    SideWrite {
        table: SideTable::Keys,
        key: id.as_bytes().to_vec(),
        value: None,
    }
}

impl ApiKey {
    /// The key as `GET /v1/_keys` lists it.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "name": self.name,
            "roles": self.roles,
            "created_at": self.created_at.rfc3339(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_verifies_and_its_record_holds_no_secret() {
        let made = new_key(
            "ci-bot",
            &[Role::Write, Role::Read, Role::Write],
            Timestamp::from_millis(5),
        )
        .expect("key");
        let (id, secret) = split_token(&made.token).expect("shape");
        assert_eq!(id, made.key.id);
        let stored = made.record.value.clone().unwrap_or_default();
        let text = String::from_utf8_lossy(&stored);
        assert!(!text.contains(secret), "the record holds the secret");
        assert_eq!(made.key.roles, vec![Role::Read, Role::Write]);
        assert_eq!(verify_key(&stored, secret), Some(made.key.clone()));
        assert_eq!(verify_key(&stored, "not-the-secret"), None);
        assert_eq!(read_key(&stored), Some(made.key));
    }

    #[test]
    fn roles_imply_what_the_spec_says() {
        assert!(Role::Write.grants(Role::Read));
        assert!(Role::Resolve.grants(Role::Read));
        assert!(!Role::Write.grants(Role::Resolve));
        assert!(!Role::Resolve.grants(Role::Write));
        assert!(!Role::Read.grants(Role::Write));
        assert!(Role::ALL.iter().all(|r| Role::Admin.grants(*r)));
        assert!(!Role::Write.grants(Role::Admin));
    }

    #[test]
    fn bad_names_roles_and_tokens_are_refused() {
        let now = Timestamp::from_millis(0);
        assert!(new_key("", &[Role::Read], now).is_err());
        assert!(new_key("a b", &[Role::Read], now).is_err());
        assert!(new_key("ok", &[], now).is_err());
        assert_eq!(
            split_token("truce_0123456789abcdef_s3cret"),
            Some(("0123456789abcdef", "s3cret"))
        );
        assert_eq!(split_token("truce_0123_s"), None);
        assert_eq!(split_token("bearer"), None);
        assert_eq!(split_token("truce_0123456789abcdef_"), None);
    }
}
