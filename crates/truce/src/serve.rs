//! `truce serve`: bind, open the store, serve, and drain on SIGTERM or Ctrl-C. The
//! address is logged only once the server can answer on it, so the first line
//! never names an address that a failed start leaves dead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use truce_engine::{SideTable, Store};
use truce_postgres::{PostgresConfig, PostgresStore};
use truce_store::{EmbeddedConfig, EmbeddedStore};

use crate::config::ServeArgs;
use crate::logging;

/// Runs the server until a shutdown signal, then drains and exits.
pub async fn run(args: ServeArgs) -> ExitCode {
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("truce: {error}");
            return ExitCode::from(2);
        }
    };
    let _log_writer = logging::init(settings.log_format);
    let listen = settings.server.listen;
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(error) => {
            tracing::error!(%error, "cannot read the listening address");
            return ExitCode::FAILURE;
        }
    };
    truce_server::install_metrics();
    let data = settings.store.data_dir.clone();
    let on_database = settings.database.is_some();
    let Some((store, opened)) = open_store(settings.store, settings.database).await else {
        return ExitCode::FAILURE;
    };
    if !listen.ip().is_loopback() {
        match store.side_records(SideTable::Keys, None, 1).await {
            Ok(keys) if !keys.is_empty() => {}
            Ok(_) => {
                let place = if on_database {
                    "--database-url URL".to_owned()
                } else {
                    format!("--data {}", data.display())
                };
                tracing::error!(
                    %listen,
                    "no API keys exist, so truce only binds a loopback address; make the first key with the server stopped (truce keys create --name admin --role admin {place}), then start it again, or use --listen 127.0.0.1:PORT"
                );
                store.close().await;
                return ExitCode::from(2);
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the API keys");
                store.close().await;
                return ExitCode::FAILURE;
            }
        }
    }
    let server = match truce_server::serve(listener, store, settings.server) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot serve");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(address = %address, "truce listening on http://{address}");
    opened.log();
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        token.cancel();
    });
    server.stopped().await;
    ExitCode::SUCCESS
}

/// What opening the store found, logged once the address is announced (the
/// first line names the address).
enum OpenedStore {
    Embedded(PathBuf, truce_store::OpenReport),
    Postgres(truce_postgres::Opened),
}

impl OpenedStore {
    fn log(&self) {
        match self {
            Self::Postgres(opened) => tracing::info!(
                revision = opened.revision,
                schema_before = opened.schema_before,
                schema = truce_postgres::SCHEMA_VERSION,
                "PostgreSQL store open"
            ),
            Self::Embedded(data, opened) => {
                tracing::info!(data = %data.display(), revision = opened.revision, "embedded store open");
                if let Some(problem) = &opened.reserve_problem {
                    tracing::warn!(%problem, "cannot keep the recovery reserve (truce.reserve); on a full disk some reads may fail until space is freed");
                }
                if opened.recovered_versions > 0 {
                    tracing::info!(
                        versions = opened.recovered_versions,
                        "recovered from the write-ahead log"
                    );
                }
            }
        }
    }
}

/// Opens the store the settings name: PostgreSQL when a database URL is set,
/// else the embedded store in the data directory. Logs why when it cannot.
async fn open_store(
    embedded: EmbeddedConfig,
    database: Option<PostgresConfig>,
) -> Option<(Arc<dyn Store>, OpenedStore)> {
    if let Some(database) = database {
        return match PostgresStore::open(database).await {
            Ok(store) => {
                let opened = OpenedStore::Postgres(store.opened());
                Some((Arc::new(store), opened))
            }
            Err(error) => {
                tracing::error!(%error, "cannot open the PostgreSQL store");
                None
            }
        };
    }
    let data = embedded.data_dir.clone();
    let store = match tokio::task::spawn_blocking(move || EmbeddedStore::open(embedded)).await {
        Ok(Ok(store)) => store,
        Ok(Err(error)) => {
            tracing::error!(%error, data = %data.display(), "cannot open the store");
            return None;
        }
        Err(error) => {
            tracing::error!(%error, "store opening task failed");
            return None;
        }
    };
    let opened = OpenedStore::Embedded(data, store.open_report());
    Some((Arc::new(store), opened))
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
