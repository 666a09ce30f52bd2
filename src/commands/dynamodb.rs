//! `dynamodb create-table`: creates the table the DynamoDB destination writes to, with the key
//! schema, the `byAction` index and the TTL setting the forwarder expects, on-demand capacity.
//! For users who let the tool do it; `dynamodb.create_table = false` says the table is managed
//! elsewhere (Terraform, CloudFormation) and the command refuses.

use std::path::Path;

use super::{Error, Report, load_config};
use crate::config::ConfigError;
use crate::dynamodb::table::TableReport;
use crate::exit::{self, Code};
use crate::pipeline::AppError;

/// What `create-table` did.
#[derive(Debug)]
pub struct Created {
    /// The table as DynamoDB describes it now.
    pub table: TableReport,
}

/// `dynamodb create-table` with the config at `path`.
pub async fn create_table_command(path: &Path) -> Result<Created, Error> {
    let config = load_config(path)?;
    let not_here = |problem: &str| {
        Error::Config(ConfigError::Invalid {
            key: "dynamodb".into(),
            origin: path.display().to_string(),
            problem: problem.into(),
        })
    };
    let Some(cfg) = &config.dynamodb else {
        return Err(not_here(
            "not configured: add a [dynamodb] section with table and region (see README, \"DynamoDB\")",
        ));
    };
    if !cfg.create_table {
        return Err(not_here(
            "create_table = false: the table is managed elsewhere, so this command does not create it; remove the setting to let it",
        ));
    }
    let dynamo = crate::dynamodb::client::connect(cfg)
        .await
        .map_err(AppError::from)?;
    let table = crate::dynamodb::table::create_table(&dynamo, cfg)
        .await
        .map_err(AppError::from)?;
    Ok(Created { table })
}

impl Code for Created {
    fn exit_code(&self) -> u8 {
        exit::OK
    }
}

impl Report for Created {
    fn print(&self) -> Result<(), Error> {
        println!("{}", self.table);
        Ok(())
    }
}
