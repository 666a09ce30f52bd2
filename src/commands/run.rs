//! `run`: the service, until SIGTERM/SIGINT; SIGHUP reloads the config from the same file and
//! environment.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{Done, Error, load_config};
use crate::config::{Config, LoadEnv};
use crate::pipeline::{Options, Pipeline};
use crate::service::{Reload, ServiceOptions};
use crate::signals::{cancel_on_signals, sighup_requests};

/// Runs the service with the config at `path`.
pub async fn command(path: &Path) -> Result<Done, Error> {
    let config = load_config(path)?;
    let pipeline = Pipeline::open(config, Options::default())?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let path = path.to_path_buf();
    let reload = Reload {
        requests: sighup_requests(),
        load: Box::new(move || Config::load(&path, &LoadEnv::from_process())),
    };
    crate::service::run(pipeline, ServiceOptions::default(), shutdown, Some(reload)).await?;
    Ok(Done)
}
