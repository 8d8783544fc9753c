//! A whole store in a map, for testing the write rules without a backend.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::collection::CollectionSettings;
use crate::command::{Principal, WriteAction, WriteCommand, WriteOutcome};
use crate::document::{Document, DocumentLimits};
use crate::error::{EngineError, StorageError};
use crate::etag::TagCondition;
use crate::name::ResourceKey;
use crate::precondition::Preconditions;
use crate::record::Version;
use crate::retention::Retention;
use crate::rules::{WriteContext, plan_write};
use crate::store::StateView;
use crate::time::Timestamp;

/// Versions by resource and number; the revision counts applied writes.
#[derive(Default)]
pub(crate) struct MemoryView {
    versions: RefCell<BTreeMap<(ResourceKey, u64), Version>>,
    revision: RefCell<u64>,
}

impl StateView for MemoryView {
    fn head(&self, key: &ResourceKey) -> Result<Option<Version>, StorageError> {
        Ok(self
            .versions
            .borrow()
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .next_back()
            .map(|(_, v)| v.clone()))
    }
    fn walk_back(
        &self,
        key: &ResourceKey,
        below: u64,
        visit: &mut dyn FnMut(Version) -> bool,
    ) -> Result<(), StorageError> {
        let versions = self.versions.borrow();
        for (_, version) in versions.range((key.clone(), 0)..(key.clone(), below)).rev() {
            if !visit(version.clone()) {
                break;
            }
        }
        Ok(())
    }
}

impl MemoryView {
    pub(crate) fn run(&self, command: WriteCommand) -> Result<WriteOutcome, EngineError> {
        self.run_with(command, CollectionSettings::default())
    }

    pub(crate) fn run_with(
        &self,
        command: WriteCommand,
        settings: CollectionSettings,
    ) -> Result<WriteOutcome, EngineError> {
        let retention = Retention::default();
        let ctx = WriteContext {
            revision: *self.revision.borrow() + 1,
            now: Timestamp::from_millis(1_000_000),
            limits: DocumentLimits::default(),
            retention: &retention,
            settings,
            locked: None,
        };
        let planned = plan_write(self, &command, &ctx)?;
        if let Some(effect) = planned.effect {
            *self.revision.borrow_mut() += 1;
            for write in effect.writes {
                self.versions
                    .borrow_mut()
                    .insert((write.key, write.version.number), write.version);
            }
        }
        Ok(planned.outcome)
    }
}

pub(crate) fn key() -> ResourceKey {
    ResourceKey::parse("things", "a").unwrap()
}

pub(crate) fn command(action: WriteAction) -> WriteCommand {
    WriteCommand {
        key: key(),
        action,
        preconditions: Preconditions::default(),
        if_version: None,
        by: Principal::anonymous(),
        request_id: None,
        resolves: None,
        idempotency: None,
        lock_token: None,
        key_check: None,
    }
}

pub(crate) fn put(doc: Value) -> WriteCommand {
    let doc = Document::parse(doc.to_string().as_bytes(), DocumentLimits::default()).unwrap();
    command(WriteAction::Put(doc))
}

pub(crate) fn if_match(mut command: WriteCommand, etag: &crate::ETag) -> WriteCommand {
    command.preconditions.if_match =
        Some(TagCondition::parse([etag.to_header().as_str()]).unwrap());
    command
}

impl MemoryView {
    /// The head document of [`key`].
    pub(crate) fn head_body(&self) -> Value {
        let head = self.head(&key()).unwrap().unwrap();
        serde_json::from_slice(head.body.as_ref().unwrap()).unwrap()
    }
}
