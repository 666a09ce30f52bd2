//! placeholder until the simulators land (temporary, for compiling)
#![allow(missing_docs, dead_code, unused)]
pub mod ringcentral {
    use std::time::Duration;
    #[derive(Clone)]
    pub struct SimAccount {
        pub account_id: String,
        pub account_name: String,
        pub client_id: String,
        pub client_secret: String,
        pub jwt: String,
    }
    impl SimAccount {
        pub fn new(_: &str, _: &str) -> Self {
            todo!()
        }
    }
    pub struct RcSimConfig {
        pub accounts: Vec<SimAccount>,
        pub token_ttl: Duration,
        pub heavy_limit: u32,
        pub heavy_window: Duration,
        pub auth_limit: u32,
        pub auth_window: Duration,
        pub penalty: Duration,
        pub rate_limits: bool,
    }
    pub struct RcSim;
    impl RcSim {
        pub async fn start(_: RcSimConfig) -> std::io::Result<RcSim> {
            todo!()
        }
        pub fn url(&self) -> String {
            todo!()
        }
        pub fn generate(
            &self,
            _: &str,
            _: usize,
            _: chrono::DateTime<chrono::Utc>,
            _: chrono::DateTime<chrono::Utc>,
            _: u64,
        ) -> usize {
            todo!()
        }
        pub fn add_records(&self, _: &str, _: Vec<serde_json::Value>) {}
        pub fn records(&self, _: &str) -> Vec<serde_json::Value> {
            todo!()
        }
        pub fn expire_tokens(&self) {}
    }
}
pub mod hec {
    pub struct HecSimConfig {
        pub output: Option<std::path::PathBuf>,
    }
    impl HecSimConfig {
        pub fn new(_: &str) -> Self {
            todo!()
        }
    }
    pub struct HecSim;
    impl HecSim {
        pub async fn start(_: HecSimConfig) -> std::io::Result<HecSim> {
            todo!()
        }
        pub fn url(&self) -> String {
            todo!()
        }
        pub fn accepted(&self) -> usize {
            0
        }
        pub async fn set_down(&self, _: bool) {}
        pub fn events(&self) -> Vec<serde_json::Value> {
            vec![]
        }
    }
}
pub mod records {
    pub fn generate_records(
        _: u64,
        _: &str,
        _: &str,
        _: usize,
        _: chrono::DateTime<chrono::Utc>,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Vec<serde_json::Value> {
        vec![]
    }
}
