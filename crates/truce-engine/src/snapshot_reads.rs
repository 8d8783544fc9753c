//! Reads in an interactive transaction's snapshot (SPEC §5): a resource as it
//! was at the snapshot's revision, and a listing page as it was then with the
//! transaction's own buffered writes on top. Both run over any [`Store`]; the
//! HTTP layer only keeps the session and renders the answer.

use std::collections::BTreeSet;

use crate::change::ChangeQuery;
use crate::error::EngineError;
use crate::name::{CollectionName, DocId, ResourceKey};
use crate::read::VersionLookup;
use crate::record::{ListPage, ListQuery, Version};
use crate::store::Store;

/// Changes read per page while gathering the ids a listing may have had.
const CHANGES_PAGE: usize = 1000;

/// A snapshot read's answer as a live version, or the 404/410 it is.
pub fn snapshot_version(
    key: &ResourceKey,
    lookup: VersionLookup,
    snapshot: u64,
) -> Result<Option<Version>, EngineError> {
    match lookup {
        VersionLookup::Found(version) => Ok((!version.is_tombstone()).then_some(version)),
        VersionLookup::Missing => Ok(None),
        VersionLookup::Compacted { oldest } => Err(EngineError::HistoryCompacted {
            what: format!("{key} as of the transaction's snapshot (revision {snapshot})"),
            oldest,
        }),
    }
}

/// `key`'s live version at revision `snapshot` (`None`: absent then).
pub async fn version_at_snapshot(
    store: &dyn Store,
    key: &ResourceKey,
    snapshot: u64,
) -> Result<Option<Version>, EngineError> {
    let lookup = store.version_at(key, snapshot).await?;
    snapshot_version(key, lookup, snapshot)
}

/// The page of `collection` that `query` asks for, as it was at revision
/// `snapshot`, with `buffered` (the transaction's own writes in that collection:
/// `None` deletes) on top.
///
/// The store lists only the present, so the page is rebuilt: today's page
/// bounds the ids it may hold (every id live at the snapshot is either live now
/// or changed since), the change feed after the snapshot adds the ids that
/// changed, and each id is then read as of the snapshot.
pub async fn list_at_snapshot(
    store: &dyn Store,
    collection: &CollectionName,
    query: &ListQuery,
    snapshot: u64,
    buffered: &[(ResourceKey, Option<Version>)],
) -> Result<ListPage, EngineError> {
    let prefix = query.prefix.clone().unwrap_or_default();
    let current = store.list(collection, query).await?;
    let bound = current
        .next
        .as_ref()
        .and(current.items.last().map(|(id, _)| id.clone()));
    let in_page = |id: &DocId| {
        id.as_str().starts_with(&prefix)
            && query.after.as_ref().is_none_or(|a| id > a)
            && bound.as_ref().is_none_or(|b| id <= b)
    };
    let mut ids: BTreeSet<DocId> = current.items.iter().map(|(id, _)| id.clone()).collect();
    let mut since = snapshot;
    loop {
        let page = store
            .changes(&ChangeQuery {
                since,
                collection: Some(collection.clone()),
                key: None,
                limit: CHANGES_PAGE,
                include_docs: false,
            })
            .await?;
        ids.extend(
            page.changes
                .iter()
                .map(|c| c.key.id.clone())
                .filter(|id| in_page(id)),
        );
        if page.changes.is_empty() || page.last_revision <= since {
            break;
        }
        since = page.last_revision;
    }
    ids.extend(
        buffered
            .iter()
            .filter(|(key, _)| key.collection == *collection)
            .map(|(key, _)| key.id.clone())
            .filter(|id| in_page(id)),
    );
    let mut items = Vec::new();
    let mut next = bound;
    for id in ids {
        if items.len() >= query.limit {
            // A full page: the next one starts after its last item.
            next = items.last().map(|item: &(DocId, Version)| item.0.clone());
            break;
        }
        let key = ResourceKey {
            collection: collection.clone(),
            id: id.clone(),
        };
        let version = match buffered.iter().find(|(k, _)| *k == key) {
            Some((_, content)) => content.clone(),
            None => version_at_snapshot(store, &key, snapshot).await?,
        };
        if let Some(version) = version {
            items.push((id, version));
        }
    }
    Ok(ListPage { items, next })
}
